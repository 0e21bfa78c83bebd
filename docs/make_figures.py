"""Draw every figure the docs pages open with, from the library itself, so a figure cannot drift from the code.

    python docs/make_figures.py [--out DIR] [--only NAME ...]      (default: docs/figures; --list names them)

Each figure is computed by the code it shows: BPE merges trained here, masks from scratch.nn, RoPE frequencies from
rope_inv_freq, the KV cache timed on a tiny model, warpers and beam search from scratch.generate, memory from the
functions behind `scratch info` (and `--training`), precision from `scratch parity`, quantized blocks from
scratch.formats, the cross-turn cache from a ChatSession. Where a figure needs real text it reads the shared
benchmark corpus when present (../shared/data, or $SCRATCH_SHARED_DATA) and this repository's README and docs
otherwise; the figure names its source. Needs matplotlib (pip install ".[docs]"); runs in seconds on a CPU; CI runs it
(tests/test_figures.py). Not here: the loss curve of docs/finetuning.md (make_loss_curve.py: it trains for minutes).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # timings comparable from run to run (before NumPy loads BLAS)
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))                    # run from a checkout without installing

FIGURES: dict[str, Callable[[Path], None]] = {}  # name -> draw(out_dir), in the order they are listed
DPI = 100
BLUE, ORANGE, GREEN, RED, GREY, LIGHT = "#2f6db5", "#e08a2c", "#3a9a55", "#c8453b", "#9a9a9a", "#e4e4e4"


def figure(name: str):
    """Register a function that draws docs/figures/NAME.png."""
    def register(draw):
        FIGURES[name] = draw
        return draw
    return register


def save(fig, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    fig.savefig(path, dpi=DPI, metadata={"Software": None})   # no version string: same figure, same bytes
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


# --- real text, and a tokenizer trained on it (shared by several figures) ------------------------------------------

def shared_corpus() -> Path | None:
    """The benchmark corpus beside the checkout (as tests/conftest.py finds it), or None."""
    override = os.environ.get("SCRATCH_SHARED_DATA")
    root = Path(override) if override else ROOT.parent / "shared" / "data"
    path = root / "corpora" / "corpus_mixed.txt"
    return path if path.is_file() else None


@functools.cache
def real_text() -> tuple[str, str, str]:
    """(training text, held-out text, where they come from): 256 + 64 KB of the benchmark corpus (English prose,
    Python, Korean, in 16 KiB slices), or, without it, this repository's README and docs pages (80% / 20%)."""
    corpus = shared_corpus()
    if corpus is not None:
        with open(corpus, "rb") as handle:
            data = handle.read(320 * 1024).decode("utf-8", errors="ignore")   # a cut character is dropped
        cut = len(data) * 4 // 5
        return data[:cut], data[cut:], "the benchmark corpus (English, Python, Korean), first 320 KB"
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    text = "\n".join(path.read_text(encoding="utf-8") for path in files)
    cut = len(text) * 4 // 5
    return text[:cut], text[cut:], "this repository's README and docs pages"


@functools.cache
def trained_merges(num_merges: int = 3000):
    """(merges, the count of each merge, chunk counts) of byte-level BPE on real_text's training part."""
    from scratch.tokenizer.train import count_chunks
    from scratch.tokenizer.train_fast import train_merges

    counts = count_chunks(real_text()[0], "gpt4")
    merge_counts = []
    merges = train_merges(counts, num_merges, progress=lambda done, total, pair, count: merge_counts.append(count))
    return merges, merge_counts, counts


@functools.cache
def tokenizer_with(num_merges: int):
    """A BPETokenizer holding the first `num_merges` merges of trained_merges (training stops anywhere)."""
    from scratch.tokenizer import BPETokenizer

    merges = trained_merges()[0][:num_merges]
    vocab = {value: bytes([value]) for value in range(256)}
    for index, (left, right) in enumerate(merges):
        vocab[256 + index] = vocab[left] + vocab[right]
    return BPETokenizer(vocab, merges, "gpt4")


def token_label(tokenizer, token_id: int) -> str:
    """A token as readable text: its characters (repr-quoted), or its raw bytes when it is part of a character."""
    data = tokenizer.token_bytes(token_id)
    try:
        return repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(data)


class CountModel:
    """A bigram language model counted on real text, shaped like the library's models so that `generate` decodes
    with it: backend, n_vocab, max_length, new_cache(B, S) (a cache with reorder and bytes_per_token) and
    model(ids, cache=, attention_mask=, logits_to_keep=) -> (B, T, V) scores. Scores are
    log((count + 0.01) / (row total + 0.01 V)): add-0.01 smoothing, no -inf."""

    class _NoCache:               # a bigram reads only the last token: nothing to keep between steps
        length = 0

        def reorder(self, indices):
            pass

        def bytes_per_token(self) -> int:
            return 0

    def __init__(self, tokenizer, text: str):
        import backends

        self.backend = backends.get("numpy")
        self.n_vocab = tokenizer.n_vocab
        self.max_length = 1 << 20
        ids = tokenizer.encode(text)
        self.following: dict[int, Counter] = {}
        for previous, following in zip(ids, ids[1:]):
            self.following.setdefault(previous, Counter())[following] += 1
        self._rows: dict[int, np.ndarray] = {}

    def log_probs(self, token: int) -> np.ndarray:
        """(V,) float32 log-probabilities of the token after `token`."""
        if token not in self._rows:
            counts = np.zeros(self.n_vocab, dtype=np.float64)
            for following, count in self.following.get(token, {}).items():
                counts[following] = count
            self._rows[token] = np.log((counts + 0.01) / (counts.sum() + 0.01 * self.n_vocab)).astype(np.float32)
        return self._rows[token]

    def new_cache(self, batch_size: int, max_length: int | None = None):
        return self._NoCache()

    def __call__(self, input_ids, cache=None, attention_mask=None, logits_to_keep: int = 0):
        ids = np.asarray(input_ids)                                           # (B, T)
        scores = np.stack([[self.log_probs(int(t)) for t in row] for row in ids])   # (B, T, V)
        return scores[:, -logits_to_keep:] if logits_to_keep else scores


@functools.cache
def count_model() -> tuple[CountModel, object]:
    tokenizer = tokenizer_with(2000)
    return CountModel(tokenizer, real_text()[0]), tokenizer


# --- the figures ---------------------------------------------------------------------------------------------------

@figure("bpe_merges")
def bpe_merges(out: Path) -> None:
    """Tokens per byte as merges are added (training text from the merge counts, held-out text by encoding), and
    the first merges with their counts."""
    import matplotlib.pyplot as plt

    train, held_out, source = real_text()
    merges, merge_counts, counts = trained_merges()
    total_bytes = sum(len(chunk.encode("utf-8")) * n for chunk, n in counts.items())
    # Each merge replaces `count` adjacent pairs by one token: the corpus shrinks by exactly its count.
    tokens = total_bytes - np.concatenate([[0], np.cumsum(merge_counts)])
    steps = [0, 50, 100, 200, 400, 700, 1000, 1500, 2000, 3000]
    held_bytes = len(held_out.encode("utf-8"))
    held = [len(tokenizer_with(m).encode(held_out)) / held_bytes for m in steps]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.1), gridspec_kw={"width_ratios": [1.35, 1]})
    left.plot(np.arange(len(tokens)), tokens / total_bytes, color=BLUE, label="training text (from the merge counts)")
    left.plot(steps, held, "o-", color=ORANGE, ms=4, label="held-out text (encoded)")
    left.set(xlabel="merges learned (vocabulary = 256 + merges)", ylabel="tokens per byte", ylim=(0, 1.02),
             title="Each merge shortens the text by exactly its count")
    for m in (100, 1000, 3000):
        if m < len(tokens):
            left.annotate(f"{tokens[m] / total_bytes:.2f}", (m, tokens[m] / total_bytes), textcoords="offset points",
                          xytext=(4, 6), fontsize=8, color=BLUE)
    left.legend(fontsize=8, loc="upper right")
    left.grid(alpha=0.3)

    tokenizer = tokenizer_with(len(merges))
    first = 16
    labels = [f"{token_label(tokenizer, a)} + {token_label(tokenizer, b)}" for a, b in merges[:first]]
    right.barh(np.arange(first), merge_counts[:first], color=BLUE)
    right.set_yticks(np.arange(first), labels, fontsize=7.5, family="monospace")
    right.invert_yaxis()
    right.set(xlabel="pairs merged (count in the training text)", title=f"The first {first} merges")
    right.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"Byte-level BPE (GPT-4 pre-tokenizer) trained on {source}", fontsize=9, y=0.995)
    fig.tight_layout()
    save(fig, out, "bpe_merges")


def _mask_panel(ax, mask: np.ndarray, title: str, xlabel="key position j", ylabel="query position i",
                cmap=None, labels=None):
    ax.imshow(mask, cmap=cmap, vmin=0, vmax=1, aspect="equal")
    ax.set_title(title, fontsize=9)
    rows, cols = mask.shape
    ax.set_xticks(np.arange(cols), labels if labels is not None else np.arange(cols), fontsize=7)
    ax.set_yticks(np.arange(rows), np.arange(rows), fontsize=7)
    ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)


@figure("attention_masks")
def attention_masks(out: Path) -> None:
    """causal_mask, padding_mask, causal_padding_mask and causal_mask with a cache offset, as the library builds
    them (True = may attend)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from scratch import nn

    cmap = ListedColormap([LIGHT, BLUE])
    T = 6
    attention_mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=np.int64)   # (B, S): row 1 left-padded
    causal = nn.causal_mask(T, T, np)                                 # (T, S)
    padding = nn.padding_mask(attention_mask)                         # (B, 1, 1, S)
    both = nn.causal_padding_mask(attention_mask, T)                  # (B, 1, T, S)
    offset = nn.causal_mask(2, T, np)                                 # T = 2 new queries after 4 cached keys

    fig, axes = plt.subplots(1, 4, figsize=(11, 3.3))
    _mask_panel(axes[0], causal, f"causal_mask(T, S)\n{tuple(causal.shape)}: i sees j <= i", cmap=cmap)
    _mask_panel(axes[1], padding[:, 0, 0, :], f"padding_mask(mask)\n{tuple(padding.shape)}, shown (B, S)",
                ylabel="row b of the batch", cmap=cmap)
    _mask_panel(axes[2], both[1, 0], f"causal_padding_mask(mask, T)\n{tuple(both.shape)}, row 1 (2 pads)",
                cmap=cmap)
    _mask_panel(axes[3], offset, f"causal_mask(2, 6): a cache offset\n{tuple(offset.shape)}, 4 keys cached",
                cmap=cmap)
    axes[3].set_yticks([0, 1], ["4", "5"], fontsize=7)
    fig.suptitle("Attention masks (blue: may attend). A padded key is never seen; a cached step sees every key "
                 "up to its own position", fontsize=9)
    fig.tight_layout()
    save(fig, out, "attention_masks")


@figure("rope_frequencies")
def rope_frequencies(out: Path) -> None:
    """Wavelength of each RoPE pair for Llama 3.1 8B (head_dim 128, theta 500,000), before and after the llama3
    scaling, against the context lengths that matter."""
    import matplotlib.pyplot as plt

    from scratch.models.presets import get_preset
    from scratch.nn import rope_inv_freq

    config = get_preset("llama-3.1-8b")
    scaling = config.rope_scaling
    before = rope_inv_freq(config.head_dim, config.rope_theta, None, dtype=np.float64)
    after = rope_inv_freq(config.head_dim, config.rope_theta, scaling, dtype=np.float64)
    pairs = np.arange(before.shape[0])
    original = scaling.original_max_position_embeddings
    high, low = original / scaling.high_freq_factor, original / scaling.low_freq_factor   # 2,048 and 8,192 tokens

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4), gridspec_kw={"width_ratios": [1.5, 1]})
    left.semilogy(pairs, 2 * np.pi / before, "o", ms=3, color=GREY, label="before: theta^(-2i/D)")
    left.semilogy(pairs, 2 * np.pi / after, "o", ms=3, color=BLUE,
                  label=f"after llama3 scaling (factor {scaling.factor:g})")
    for tokens, text, colour, shift in ((4096, "4,096: Llama 2's context", GREEN, 0.55),
                                        (original, "8,192: Llama 3 pre-training", ORANGE, 1.25),
                                        (131072, "131,072: Llama 3.1's context", RED, 1.25)):
        left.axhline(tokens, color=colour, lw=1, ls="--")
        left.text(1, tokens * shift, text, color=colour, fontsize=8, va="top" if shift < 1 else "baseline")
    wavelength = 2 * np.pi / before
    kept, stretched = pairs[wavelength < high], pairs[wavelength > low]
    left.axvspan(kept[-1] + 0.5, stretched[0] - 0.5, color=LIGHT, zorder=0)
    left.text((kept[-1] + stretched[0]) / 2, 2.5e5, "interpolated", ha="center", va="bottom", fontsize=8,
              rotation=90)
    left.set(xlabel="pair i (frequency index)", ylabel="wavelength 2 pi / f_i (tokens)",
             title="A pair's wavelength: how many tokens one full turn takes")
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3, which="major")

    right.plot(pairs, after / before, color=BLUE)
    right.set(xlabel="pair i", ylabel="f after / f before", ylim=(0, 1.08),
              title="Fast pairs kept, slow pairs turned 8x slower")
    right.text(kept[len(kept) // 2], 1.02, f"wavelength < {high:,.0f}: kept", ha="center", fontsize=8)
    right.text(stretched[len(stretched) // 2], 1 / scaling.factor + 0.04, f"> {low:,.0f}: divided by "
               f"{scaling.factor:g}", ha="center", fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle("RoPE frequencies of Llama 3.1 8B (head_dim 128, theta 500,000), from rope_inv_freq", fontsize=9)
    fig.tight_layout()
    save(fig, out, "rope_frequencies")


@figure("kv_cache_time")
def kv_cache_time(out: Path) -> None:
    """Measured time to get the next token's logits at a context of n tokens: one cached step vs a full forward."""
    import matplotlib.pyplot as plt

    import scratch.models
    from scratch.models import GPT2Config

    config = GPT2Config(vocab_size=512, n_positions=1024, n_embd=192, n_layer=4, n_head=4)
    model = scratch.models.from_config(config, seed=0)
    contexts = [16, 32, 64, 128, 256, 512]
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, contexts[-1] + 4))
    cached, uncached = [], []
    for n in contexts:
        cache = model.new_cache(1, n + 4)
        model(ids[:, :n], cache=cache, logits_to_keep=1)          # the prefill: n tokens in the cache
        steps = []
        for t in range(n, n + 3):                                   # then one token per step, through the cache
            start = time.perf_counter()
            model(ids[:, t:t + 1], cache=cache)
            steps.append(time.perf_counter() - start)
        cached.append(min(steps))
        fulls = []
        for _ in range(2):                                          # no cache: the whole context again
            start = time.perf_counter()
            model(ids[:, :n + 1], logits_to_keep=1)
            fulls.append(time.perf_counter() - start)
        uncached.append(min(fulls))
    cached_ms, uncached_ms = 1e3 * np.array(cached), 1e3 * np.array(uncached)

    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.loglog(contexts, uncached_ms, "o-", color=RED, label="without cache: a forward over all n + 1 tokens")
    ax.loglog(contexts, cached_ms, "o-", color=BLUE, label="with cache: one token, attending to n cached keys")
    for n, a, b in zip(contexts, cached_ms, uncached_ms):
        ax.annotate(f"{b / a:.0f}x", (n, b), textcoords="offset points", xytext=(-6, 7), fontsize=8, color=RED)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(contexts, [str(n) for n in contexts])
    ax.set_ylim(top=uncached_ms.max() * 1.8)
    ax.set(xlabel="tokens already in the context (n)", ylabel="ms to the next token's logits",
           title=f"Measured here: a GPT-2 of {config.n_layer} layers, width {config.n_embd} (random weights, "
                 "NumPy)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save(fig, out, "kv_cache_time")


@figure("sampling_warpers")
def sampling_warpers(out: Path) -> None:
    """One real next-token distribution and what temperature, top-k, top-p and min-p keep of it."""
    import matplotlib.pyplot as plt

    from scratch.generate import MinP, Temperature, TopK, TopP
    from scratch.nn import softmax

    model, tokenizer = count_model()
    context = tokenizer.encode(" of")                                      # " of" is one token of the vocabulary
    scores = model(np.array([context[-1:]]), logits_to_keep=1)[:, -1]      # (B=1, V) log-probabilities
    probs = softmax(scores)[0]
    order = np.argsort(-probs, kind="stable")
    shown = order[:40]
    labels = [token_label(tokenizer, int(t)) for t in shown]
    no_context = np.zeros((1, 0), dtype=np.int64)

    fig = plt.figure(figsize=(11, 6.2))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.15, 1])
    top = fig.add_subplot(grid[0, :])
    x = np.arange(len(shown))
    top.bar(x, probs[shown], color=GREY, label="the distribution (temperature 1)")
    for temperature, colour in ((0.5, BLUE), (2.0, ORANGE)):
        warped = softmax(Temperature(temperature)(no_context, scores))[0]
        top.plot(x, warped[shown], "o-", ms=3, color=colour, label=f"temperature {temperature:g}")
    top.set_xticks(x, labels, rotation=60, fontsize=7.5, family="monospace")
    top.set(ylabel="probability",
            title=f"Next token after {token_label(tokenizer, context[-1])} (a bigram model counted on "
                  f"{real_text()[2]}; the 40 likeliest of {tokenizer.n_vocab:,})")
    top.title.set_fontsize(9)
    top.legend(fontsize=8)

    for column, (warper, name) in enumerate(((TopK(10), "top-k 10"), (TopP(0.9), "top-p 0.9"),
                                             (MinP(0.1), "min-p 0.1"))):
        ax = fig.add_subplot(grid[1, column])
        kept = np.isfinite(warper(no_context, scores)[0])
        renormalised = softmax(warper(no_context, scores))[0]
        colours = [BLUE if kept[t] else LIGHT for t in shown]
        ax.bar(x, probs[shown], color=colours)
        ax.plot(x[kept[shown]], renormalised[shown][kept[shown]], "_", color=RED, ms=7, mew=2,
                label="renormalised")
        ax.set_title(f"{name}: keeps {int(kept.sum())} of {tokenizer.n_vocab:,} tokens", fontsize=9)
        ax.set_xticks([])
        ax.set_xlabel("the 40 likeliest tokens, in order", fontsize=8)
        if column == 0:
            ax.set_ylabel("probability")
            ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out, "sampling_warpers")


@figure("beam_tree")
def beam_tree(out: Path) -> None:
    """A 3-beam search, step by step: each running beam's best continuations, the kept ones and the pruned ones,
    with their summed log-probabilities. Checked against the library's beam search on the same model."""
    import matplotlib.pyplot as plt

    from scratch.generate import generate
    from scratch.nn import log_softmax

    model, tokenizer = count_model()
    prompt = tokenizer.encode(" the")
    num_beams, steps = 3, 4
    K = 2 * num_beams                         # candidates per step, as beam.py takes them (no EOS here)
    beams = [(list(prompt), 0.0, 0)]          # (ids, summed log-probability, node index)
    nodes = [(0, "the prompt: " + token_label(tokenizer, prompt[-1]), None, True)]   # (step, text, parent, kept)
    for step in range(1, steps + 1):
        candidates = []
        for ids, score, node in beams:
            logp = log_softmax(model(np.array([ids]), logits_to_keep=1)[0, -1].astype(np.float64))
            for token in np.argsort(-logp, kind="stable")[:K]:
                candidates.append((score + float(logp[token]), ids + [int(token)], node))
        candidates = sorted(candidates, key=lambda c: -c[0])[:K]        # the best K of num_beams x V
        beams = []
        for rank, (score, ids, parent) in enumerate(candidates):
            nodes.append((step, f"{token_label(tokenizer, ids[-1])}  {score:.2f}", parent, rank < num_beams))
            if rank < num_beams:                                        # the best num_beams run on
                beams.append((ids, score, len(nodes) - 1))
    # The same search by the library: the same beams, best first, scored sum / length.
    result = generate(model, [prompt], num_beams=num_beams, num_return_sequences=num_beams, max_new_tokens=steps)
    ours = [ids for ids, _, _ in beams]
    assert [list(map(int, row)) for row in result.sequences] == ours, (result.sequences, ours)
    np.testing.assert_allclose(result.sequences_scores, [score / steps for _, score, _ in beams], rtol=1e-4)

    # Lay the nodes out: each step's nodes in a column, ordered under their parents (top parent first).
    by_step: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        by_step.setdefault(node[0], []).append(index)
    y = {0: 0.0}
    for step in range(1, steps + 1):
        ordered = sorted(by_step[step], key=lambda i: (-y[nodes[i][2]], i))
        for position, index in enumerate(ordered):
            y[index] = (len(ordered) - 1) / 2 - position
    fig, ax = plt.subplots(figsize=(11, 4.8))
    for index, (step, text, parent, is_kept) in enumerate(nodes):
        colour = BLUE if is_kept else GREY
        if parent is not None:
            ax.plot([nodes[parent][0] + 0.3, step - 0.02], [y[parent], y[index]], color=colour,
                    lw=1.6 if is_kept else 0.9, ls="-" if is_kept else ":")
        ax.text(step, y[index], text, fontsize=8, va="center", family="monospace", color="black" if is_kept else GREY,
                bbox=dict(boxstyle="round,pad=0.25", fc="#dce8f7" if is_kept else "white",
                          ec=colour, lw=1 if is_kept else 0.6))
    best = result.sequences[0][len(prompt):]
    ax.set_title(f"Beam search, {num_beams} beams, {steps} steps (a bigram model counted on {real_text()[2]}).\n"
                 f"Each step: the best {K} of all beams x V continuations by summed log-probability; blue: the "
                 f"{num_beams} kept, grey: pruned. "
                 f"Best: {tokenizer.decode(list(map(int, best)))!r}", fontsize=9)
    ax.set_xlim(-0.1, steps + 0.75)
    ax.set_xticks(range(steps + 1), ["prompt"] + [f"step {s}" for s in range(1, steps + 1)])
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    save(fig, out, "beam_tree")


@figure("memory")
def memory(out: Path) -> None:
    """Weights, KV cache, gradients, optimizer states and activations of four Llamas, in bytes per parameter, with
    the totals: what `scratch info NAME` and `scratch info NAME --training` compute."""
    import matplotlib.pyplot as plt

    from scratch.models.presets import (context_length, format_bytes, get_preset, kv_cache_bytes, parameter_count,
                                        weight_bytes)
    from scratch.train.memory import activation_bytes_per_token, model_states

    names = ["llama-2-7b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"]
    seq_len = 2048
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    x = np.arange(len(names))
    inference_parts = {"weights (bf16)": [], "KV cache, one sequence at full context (bf16)": []}
    training_parts = {"weights (bf16)": [], "gradients (bf16)": [], "optimizer: fp32 master + AdamW moments": [],
                      f"activations, one {seq_len:,}-token sequence": []}
    totals_inference, totals_training = [], []
    for name in names:
        config = get_preset(name)
        params = parameter_count(config)
        weights, cache = weight_bytes(config, "bfloat16"), kv_cache_bytes(config, dtype="bfloat16")
        inference_parts["weights (bf16)"].append(weights / params)
        inference_parts["KV cache, one sequence at full context (bf16)"].append(cache / params)
        totals_inference.append(weights + cache)
        states = model_states(config, "mixed")
        activations = activation_bytes_per_token(config, seq_len)["total"] * seq_len
        for part, value in zip(training_parts, (states.weights, states.gradients, states.optimizer, activations)):
            training_parts[part].append(value / params)
        totals_training.append(states.total + activations)
    for ax, parts, totals, colours, title in (
            (left, inference_parts, totals_inference, [BLUE, "#8a5fb0"], "Inference (`scratch info NAME`)"),
            (right, training_parts, totals_training, [BLUE, ORANGE, GREEN, RED],
             "Full fine-tuning, mixed precision (`scratch info NAME --training`)")):
        bottom = np.zeros(len(names))
        for (label, values), colour in zip(parts.items(), colours):
            ax.bar(x, values, bottom=bottom, color=colour, label=label, width=0.6)
            bottom += np.array(values)
        for xi, total, height in zip(x, totals, bottom):
            ax.text(xi, height * 1.02, format_bytes(total), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{n}\n{context_length(get_preset(n)):,} ctx" for n in names], fontsize=8)
        ax.set(ylabel="bytes per parameter", ylim=(0, bottom.max() * 1.12), title=title)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.suptitle("Memory of Llama 2 7B and Llama 3.1 8B / 70B / 405B, computed from their config.json values "
                 "(totals above the bars)", fontsize=9)
    fig.tight_layout()
    save(fig, out, "memory")


@figure("backends_precision")
def backends_precision(out: Path) -> None:
    """`scratch parity`'s precision rows: each component in float32 and float16 against float64 on NumPy."""
    import matplotlib.pyplot as plt

    from scratch.models.parity import run_parity

    rows = run_parity(["numpy", "strict"])
    portable = [row for row in rows if row.section == "portability"]
    precision = [row for row in rows if row.section == "precision"]
    contrast = {row.component for row in precision if row.tolerance is None}
    components = list(dict.fromkeys(row.component for row in precision))
    error = {(row.component, row.backend): row.max_rel for row in precision}
    names = [f"{name.strip()}, no upcast" if name in contrast else name for name in components]
    y = np.arange(len(components))
    fig, ax = plt.subplots(figsize=(9, 6.3))
    floor = 1e-9                                          # exact rows drawn at the floor of the log axis
    for offset, dtype, colour in ((-0.2, "float32", BLUE), (0.2, "float16", ORANGE)):
        values = [max(error.get((name, dtype), np.nan), floor) for name in components]
        ax.barh(y + offset, values, height=0.38, color=colour, label=f"{dtype} vs float64")
    for dtype, eps, colour in (("float32", float(np.finfo(np.float32).eps), BLUE),
                               ("float16", float(np.finfo(np.float16).eps), ORANGE)):
        ax.axvline(eps, color=colour, ls="--", lw=1)
        ax.text(eps * 1.15, len(components) - 0.4, f"{dtype} eps", color=colour, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor, 3)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    exact = all(row.max_abs == 0 for row in portable)
    ax.set(xlabel="max |error| / max |reference output|")
    fig.suptitle("What each component loses in float32 and float16 against float64 (`scratch parity` on NumPy).\n"
                 "RMSNorm with no float32 inside: its squares overflow float16, which is why the norms upcast."
                 + ("\nnumpy vs array-api-strict (the portability rows): every row exactly 0." if exact else ""),
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save(fig, out, "backends_precision")


@figure("bert_attention")
def bert_attention(out: Path) -> None:
    """Who sees whom in BERT (bidirectional, padding masked) vs a decoder (causal), and exact vs tanh GELU."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from scratch import nn

    tokens = ["[CLS]", "a", "b", "[SEP]", "c", "d", "[SEP]", "[PAD]"]
    segments = [0, 0, 0, 0, 1, 1, 1, 0]
    attention_mask = np.array([[1] * 7 + [0]], dtype=np.int64)
    encoder = np.broadcast_to(nn.padding_mask(attention_mask)[0, 0], (8, 8))     # (T, S): every real key
    decoder = nn.causal_padding_mask(attention_mask, 8)[0, 0]                      # (T, S)
    cmap = ListedColormap([LIGHT, BLUE])
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    for ax, mask, title in ((axes[0], encoder, "BERT: bidirectional, padding masked"),
                            (axes[1], decoder, "GPT-2 / Llama: causal")):
        _mask_panel(ax, mask, title, xlabel="key", ylabel="query", cmap=cmap, labels=tokens)
        ax.set_yticks(np.arange(8), tokens, fontsize=7)
        ax.tick_params(axis="x", rotation=90)
        for tick, segment in zip(ax.get_xticklabels(), segments):
            tick.set_color(ORANGE if segment else "black")
    axes[0].set_xlabel("key (orange: segment B, token_type_ids = 1)", fontsize=8)
    x = np.linspace(-6, 6, 1201)
    difference = nn.gelu(x) - nn.gelu_tanh(x)                    # float64 in, float64 out
    worst = int(np.argmax(np.abs(difference)))
    axes[2].plot(x, difference, color=BLUE)
    axes[2].plot(x[worst], difference[worst], "o", color=RED)
    axes[2].annotate(f"max |difference| {abs(difference[worst]):.1e} at x = {x[worst]:.2f}", (x[worst],
                     difference[worst]), textcoords="offset points", xytext=(-8, -3), ha="right", fontsize=8, color=RED)
    axes[2].set(xlabel="x", title="BERT's exact GELU minus GPT-2's tanh GELU")
    axes[2].title.set_fontsize(9)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out, "bert_attention")


@figure("backprop_graph")
def backprop_graph(out: Path) -> None:
    """The toy block of docs/backprop.md as a graph: forward left to right, gradients right to left, the sums where
    a value had several uses. Shapes come from running scratch.train's forward functions."""
    import matplotlib.pyplot as plt

    from scratch import nn, train

    rng = np.random.default_rng(0)
    B, T, C, V, H, Hkv = 2, 6, 8, 11, 4, 2
    D = C // H
    ids = rng.integers(0, V, (B, T))
    table = rng.standard_normal((C, V)) * 0.5
    x, _ = train.embedding_forward(ids, table, token_axis=1)
    h, _ = train.rms_norm_forward(x, 1.0 + 0.1 * rng.standard_normal(C))
    q = nn.split_heads(train.linear_forward(h, rng.standard_normal((C, H * D)))[0], H)
    k = nn.split_heads(train.linear_forward(h, rng.standard_normal((C, Hkv * D)))[0], Hkv)
    a, _ = train.attention_forward(q, k, k, mask=nn.causal_mask(T, T, np))
    logits, _ = train.linear_forward(x, table)
    shape = {"ids": ids.shape, "x": x.shape, "h": h.shape, "q": q.shape, "k, v": k.shape, "a": a.shape,
             "y": x.shape, "logits": logits.shape}

    def fmt(s):
        return "(" + ", ".join(map(str, s)) + ")"

    # (name, x position, y position, label)
    nodes = [("ids", 0, 0, f"ids\n{fmt(shape['ids'])}"), ("embed", 1.1, 0, "embedding\nlookup"),
             ("norm", 2.3, 0, "RMSNorm"), ("qkv", 3.5, 0, "q, k, v\nprojections"),
             ("rope", 4.7, 0, "RoPE\non q, k"), ("attn", 5.9, 0, "attention\n(GQA, causal)"),
             ("o", 7.1, 0, "o_proj"), ("add", 8.2, 0, "+"), ("head", 9.3, 0, "head\n(tied)"),
             ("loss", 10.5, 0, "cross-\nentropy"), ("W", 5.2, -1.0, "embed_tokens (C, V): used twice")]
    where = {name: (px, py) for name, px, py, _ in nodes}
    fig, ax = plt.subplots(figsize=(12, 3.9))
    for name, px, py, label in nodes:
        style = dict(boxstyle="circle,pad=0.2" if name == "add" else "round,pad=0.35",
                     fc="#fdf1e2" if name == "W" else "#dce8f7", ec=ORANGE if name == "W" else BLUE)
        ax.text(px, py, label, ha="center", va="center", fontsize=8, bbox=style)

    def arrow(a, b, text="", colour=BLUE, dy=0.0, rad=0.0, below=False):
        (xa, ya), (xb, yb) = where[a], where[b]
        ax.annotate("", xy=(xb - 0.42 * np.sign(xb - xa) if ya == yb else xb, yb + dy),
                    xytext=(xa + 0.42 * np.sign(xb - xa) if ya == yb else xa, ya + dy),
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.2, connectionstyle=f"arc3,rad={rad}"))
        if text:
            ax.text((xa + xb) / 2, (ya + yb) / 2 + dy + (-0.17 if below else 0.12), text, ha="center",
                    fontsize=7, color=colour)

    forward = [("ids", "embed", ""), ("embed", "norm", f"x {fmt(shape['x'])}"), ("norm", "qkv", f"h {fmt(shape['h'])}"),
               ("qkv", "rope", f"q {fmt(shape['q'])}"), ("rope", "attn", f"k, v {fmt(shape['k, v'])}"),
               ("attn", "o", f"a {fmt(shape['a'])}"), ("o", "add", "o"), ("add", "head", "y"),
               ("head", "loss", f"logits {fmt(shape['logits'])}")]
    for a, b, text in forward:
        arrow(a, b, text, dy=0.1)
    backward = [("loss", "head", "dlogits"), ("head", "add", "dy"), ("add", "o", "do = dy"), ("o", "attn", "da"),
                ("attn", "rope", "dq, dk, dv"), ("rope", "qkv", "dq, dk"), ("qkv", "norm", "dh = sum of 3"),
                ("norm", "embed", "dx = dnorm + dy")]
    for a, b, text in backward:
        arrow(a, b, text, colour=RED, dy=-0.32, below=True)
    ax.annotate("", xy=(8.05, 0.2), xytext=(1.5, 0.2), arrowprops=dict(arrowstyle="-|>", color=BLUE, lw=1,
                connectionstyle="arc3,rad=-0.12", ls="--"))
    ax.text(4.8, 0.68, "residual: x feeds RMSNorm and the sum y = x + o (so dx adds dy)", ha="center", fontsize=7.5,
            color=BLUE)
    for user in ("embed", "head"):
        (xa, ya), (xb, yb) = where["W"], where[user]
        ax.annotate("", xy=(xb, yb - 0.25), xytext=(xa + (0.9 if xb > xa else -0.9), ya + 0.1),
                    arrowprops=dict(arrowstyle="-|>", color=ORANGE, lw=1))
    ax.text(where["W"][0], -1.33, "dW = the lookup's scatter-add of dx + the head's y^T dlogits", ha="center",
            fontsize=8, color=ORANGE)
    ax.text(-0.5, -1.72, "forward (blue): each layer's x_forward returns its output and a cache.   backward (red): "
                         "x_backward(dout, cache), in reverse; where a value had several uses, its gradients add up.",
            fontsize=8)
    ax.set_xlim(-0.6, 11.1)
    ax.set_ylim(-1.85, 0.85)
    ax.axis("off")
    ax.set_title(f"One decoder block, forward and backward (B={B}, T={T}, C={C}, V={V}, H={H}, Hkv={Hkv})",
                 fontsize=9)
    fig.tight_layout()
    save(fig, out, "backprop_graph")


@figure("quant_blocks")
def quant_blocks(out: Path) -> None:
    """The byte layout of a Q4_0 block and a Q4_K super-block, and one block of real-looking weights quantized."""
    import matplotlib.pyplot as plt

    from scratch.formats import dequantize, quantize
    from scratch.formats.quants import TYPES

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.3), gridspec_kw={"height_ratios": [1, 1.6]})
    # (field, bytes, colour): orange the float16 scale, red the float16 min, green the 6-bit sub-block scales and
    # mins, blue the 4-bit weights.
    layouts = {"Q4_0": [("d", 2, ORANGE), ("qs", 16, BLUE)],
               "Q4_1": [("d", 2, ORANGE), ("m", 2, RED), ("qs", 16, BLUE)],
               "Q4_K": [("d", 2, ORANGE), ("dmin", 2, RED), ("scales", 12, GREEN), ("qs", 128, BLUE)]}
    for row, (name, fields) in enumerate(layouts.items()):
        qtype = TYPES[name]
        assert sum(size for _, size, _ in fields) == qtype.block_bytes
        start = 0.0
        for label, size, colour in fields:
            share = 100 * size / qtype.block_bytes
            top.barh(row, share, left=start, color=colour, edgecolor="white", height=0.62)
            if share > 6:                          # the narrow fields are named by colour, below
                top.text(start + share / 2, row, f"{label} {size} B", ha="center", va="center", fontsize=7.5,
                         color="white")
            start += share
        top.text(101, row, f"{qtype.block_bytes} bytes / {qtype.block_size} weights = {qtype.bits_per_weight:g} "
                           "bits per weight", va="center", fontsize=8)
    top.set_yticks(range(len(layouts)), list(layouts), fontsize=8)
    top.invert_yaxis()
    top.set_xlim(0, 150)
    top.set_xticks([0, 25, 50, 75, 100], ["0", "25%", "50%", "75%", "100%"], fontsize=7)
    top.set_xlabel("share of the block's bytes (orange: float16 scale d, red: float16 min, green: 6-bit sub-block "
                   "scales and mins, blue: 4-bit weights)", fontsize=8)
    top.set_title("Block layouts: small integers plus float16 scales (Q4_K: 8 sub-block scales of its own, "
                  "quantized to 6 bits against d and dmin)", fontsize=9)
    for side in ("top", "right"):
        top.spines[side].set_visible(False)

    weights = (np.random.default_rng(3).standard_normal(32) * 0.02).astype(np.float32)   # one block of a layer
    j = np.arange(32)
    bottom.plot(j, weights, "o", color="black", ms=5, zorder=5, label="float32 weights")
    for name, colour, marker in (("Q8_0", GREEN, "+"), ("Q4_1", ORANGE, "_"), ("Q4_0", BLUE, "_")):
        restored = dequantize(quantize(weights, name), name, (32,))
        error = np.sqrt(np.mean((restored - weights) ** 2)) / np.sqrt(np.mean(weights ** 2))
        bottom.plot(j, restored, marker, color=colour, ms=11, mew=2, zorder=4 if name == "Q8_0" else 3,
                    label=f"{name} ({TYPES[name].bits_per_weight:g} bits): relative RMS error {error:.3f}")
    d = float(quantize(weights, "Q4_0")[:2].view(np.float16)[0])
    for level in range(-8, 8):
        bottom.axhline(d * level, color=LIGHT, lw=0.8, zorder=0)
    bottom.set(xlabel="weight j of the block", ylabel="value",
               title=f"One 32-weight block: Q4_0 can only land on the 16 grey levels d * (q - 8), d = {d:.2e}")
    bottom.title.set_fontsize(9)
    bottom.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    save(fig, out, "quant_blocks")


@figure("chat_cache")
def chat_cache(out: Path) -> None:
    """Per turn of a ChatSession: prompt tokens taken from the cross-turn cache, prefilled, and generated; with the
    cache reused and without."""
    import matplotlib.pyplot as plt

    import scratch.models
    from scratch.chat import ChatSession
    from scratch.models import LlamaConfig
    from scratch.tokenizer import BPETokenizer

    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
              "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
              "{% endif %}")
    text = "the quick brown fox jumps over the lazy dog. hello there, how are you today? " * 8
    tokenizer = BPETokenizer.train(text, vocab_size=320, pattern="gpt2", special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.set_chat_template(chatml, {"eos_token": "<|im_end|>"})
    config = LlamaConfig(vocab_size=tokenizer.n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=tokenizer.special_tokens["<|im_end|>"])
    model = scratch.models.from_config(config, seed=0)
    # A random model's replies are byte soup that re-tokenizes to other ids, which stops the shared prefix at the
    # reply. Biased to whole-word tokens (the sequence_bias processor), they re-tokenize to the same ids, as a
    # trained model's replies mostly do.
    words = [" quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog"]
    bias = {tuple(tokenizer.encode(word)): 30.0 for word in words}
    questions = ["hello there", "how are you today?", "and the lazy dog?", "the quick brown fox?",
                 "jumps over the dog?", "how are you?"]
    runs = {}
    for reuse in (True, False):
        chat = ChatSession(model, tokenizer, system="Be brief.", max_new_tokens=12, reuse_cache=reuse,
                           sequence_bias=bias)
        for question in questions:
            chat.ask(question)
        runs[reuse] = chat.history

    fig, ax = plt.subplots(figsize=(10, 4.4))
    turns = np.arange(1, len(questions) + 1)
    for offset, reuse in ((-0.2, True), (0.2, False)):
        history = runs[reuse]
        reused = np.array([t.reused_tokens for t in history])
        prefilled = np.array([t.prefilled_tokens for t in history])
        new = np.array([t.new_tokens for t in history])
        label = "" if reuse else " (no reuse)"
        ax.bar(turns + offset, reused, width=0.38, color=LIGHT, edgecolor=GREY,
               label="prompt tokens found in the cache" if reuse else None)
        ax.bar(turns + offset, prefilled, width=0.38, bottom=reused, color=BLUE if reuse else RED,
               label="prompt tokens prefilled" + label)
        ax.bar(turns + offset, new, width=0.38, bottom=reused + prefilled, color=GREEN,
               label="reply tokens generated" if reuse else None)
    ax.set_xticks(turns, [f"turn {t}\n(cache | none)" for t in turns], fontsize=8)
    ax.set(ylabel="tokens")
    ax.set_title("A conversation through ChatSession: with the cross-turn cache a turn prefills only the new message "
                 "(and the\nlast reply token); without it, the whole conversation again. Tiny random Llama, ChatML, "
                 "replies biased to whole words", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save(fig, out, "chat_cache")


@figure("transformer_block")
def transformer_block(out: Path) -> None:
    """GPT-2 and Llama side by side, bottom to top, each box with its shape from the preset's config."""
    import matplotlib.pyplot as plt

    from scratch.models.presets import format_count, get_preset, parameter_count

    gpt2, llama = get_preset("gpt2"), get_preset("llama-3.1-8b")
    C, F, H, V = gpt2.n_embd, gpt2.n_inner, gpt2.n_head, gpt2.vocab_size
    D = C // H
    c2, f2, h2, kv2, d2, v2 = (llama.hidden_size, llama.intermediate_size, llama.num_attention_heads,
                               llama.num_key_value_heads, llama.head_dim, llama.vocab_size)
    columns = {
        f"GPT-2 ({format_count(parameter_count(gpt2))})": [
            ("token embedding wte + learned positions wpe", f"(B, T) -> (B, T, {C})", None),
            ("LayerNorm (mean, variance, weight, bias)", f"(B, T, {C})", "block"),
            (f"attention: {H} heads, q k v each {H} x {D}", f"(B, {H}, T, {D}); scores (B, {H}, T, S)", "block"),
            ("+ residual", f"(B, T, {C})", "block"),
            ("LayerNorm", f"(B, T, {C})", "block"),
            ("MLP: c_proj(gelu_tanh(c_fc x))", f"(B, T, {C}) -> (B, T, {F}) -> (B, T, {C})", "block"),
            ("+ residual", f"x {gpt2.n_layer} blocks", "block"),
            ("final LayerNorm, head tied to wte", f"(B, T, {C}) @ ({C}, {V:,}) -> (B, T, {V:,})", None),
        ],
        f"Llama 3.1 8B ({format_count(parameter_count(llama))})": [
            ("token embedding (no position table)", f"(B, T) -> (B, T, {c2:,})", None),
            ("RMSNorm (no mean, no bias)", f"(B, T, {c2:,})", "block"),
            (f"attention: {h2} query / {kv2} kv heads + RoPE on q, k", f"q (B, {h2}, T, {d2}); k, v (B, {kv2}, S, "
                                                                      f"{d2})", "block"),
            ("+ residual", f"(B, T, {c2:,})", "block"),
            ("RMSNorm", f"(B, T, {c2:,})", "block"),
            ("SwiGLU: down(silu(gate x) * up x)", f"(B, T, {c2:,}) -> 2 x (B, T, {f2:,}) -> (B, T, {c2:,})",
             "block"),
            ("+ residual", f"x {llama.num_hidden_layers} blocks", "block"),
            ("final RMSNorm, untied lm_head", f"(B, T, {c2:,}) @ ({c2:,}, {v2:,}) -> (B, T, {v2:,})", None),
        ],
    }
    fig, ax = plt.subplots(figsize=(11.5, 6.4))
    for column, (title, boxes) in enumerate(columns.items()):
        x0 = column * 5.8
        centre = x0 + 2.4
        ax.text(centre, len(boxes) + 0.25, title, ha="center", fontsize=10, weight="bold")
        for row, (label, shape, part) in enumerate(boxes):
            residual = label.startswith("+")
            colour = "#fdf1e2" if residual else "#dce8f7" if part == "block" else "#e9f4ea"
            ax.text(centre, row + 0.2, label, ha="center", va="center", fontsize=8.5,
                    bbox=dict(boxstyle="round,pad=0.3", fc=colour, ec=GREY, lw=0.8))
            ax.text(centre, row + 0.56, shape, ha="center", va="center", fontsize=7.5, color=BLUE,
                    family="monospace")                                   # the box's output
            if row + 1 < len(boxes):
                ax.annotate("", xy=(centre, row + 1.03), xytext=(centre, row + 0.68),
                            arrowprops=dict(arrowstyle="-|>", color=GREY, lw=0.8))
        for source, target in ((0, 3), (3, 6)):                           # the residual stream skips each sublayer
            ax.annotate("", xy=(centre + 0.75, target + 0.2), xytext=(centre + 1.9, source + 0.56),
                        arrowprops=dict(arrowstyle="-|>", color=ORANGE, lw=1, ls="--",
                                        connectionstyle="angle,angleA=90,angleB=0,rad=8"))
        ax.text(centre + 1.97, 1.6, "residual", rotation=90, fontsize=7.5, color=ORANGE, va="center")
        ax.add_patch(plt.Rectangle((x0 - 0.4, 0.82), 5.65, 6.0, fill=False, ec=ORANGE, lw=1.2, ls=":"))
        ax.text(x0 - 0.3, 6.62, "one block (pre-norm), repeated", fontsize=8, color=ORANGE)
    ax.set_xlim(-0.6, 11.3)
    ax.set_ylim(-0.2, len(next(iter(columns.values()))) + 0.5)
    ax.axis("off")
    ax.set_title("A decoder-only transformer, bottom to top, with the shapes of the real models' configs "
                 "(B batch, T new tokens, S cached + new)", fontsize=9)
    fig.tight_layout()
    save(fig, out, "transformer_block")


# --- running -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the docs figures from the library (docs/figures/*.png).")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures"), metavar="DIR",
                        help="folder to write the PNGs to (default docs/figures)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(FIGURES), help="draw only these figures")
    parser.add_argument("--list", action="store_true", help="print the figure names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(FIGURES))
        return 0
    try:
        import matplotlib
    except ModuleNotFoundError:
        print("make_figures: needs matplotlib: pip install '.[docs]'", file=sys.stderr)
        return 2
    matplotlib.use("Agg")                                    # files only, no window
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    for name in args.only or FIGURES:
        start = time.perf_counter()
        FIGURES[name](out)
        size = (out / f"{name}.png").stat().st_size
        print(f"{name + '.png':<24} {time.perf_counter() - start:5.1f} s  {size / 1024:5.0f} KB", flush=True)
    print(f"{len(args.only or FIGURES)} figures in {time.perf_counter() - total:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
