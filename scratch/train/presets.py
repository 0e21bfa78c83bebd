"""Named training recipes for `scratch train --preset NAME`, and the held-out measurements that describe their result.

A preset fixes everything a run depends on except the machine: the corpus (chosen by a rule, in a fixed order), the
model config, the tokenizer's vocabulary size, the validation split and the loop's settings. `stdlib-small` is the
model that ships in scratch/bundled: the top-level modules of the running interpreter's Python standard library,
sorted by file name, the last 5% of every file's tokens held out for validation. After training, `export_bundle`
measures the held-out slice token by token (loss, bits per byte, next to zlib -9 and lzma on the same bytes) and
writes the files scratch/bundled ships. Not here: downloading corpora, hyperparameter search.
"""
from __future__ import annotations

import json
import lzma
import math
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from scratch.atomic import atomic_write

__all__ = ["Preset", "PRESETS", "get_preset", "stdlib_corpus", "window_losses", "compressed_bits_per_byte",
           "export_bundle", "HELDOUT_NAME", "METRICS_NAME"]

HELDOUT_NAME = "heldout.u16.xz"   # the validation token stream: little-endian uint16 ids, lzma-compressed
METRICS_NAME = "metrics.json"     # recipe, loss history and held-out figures of the shipped model
# A completion model has no chat markup to learn: its "chat template" writes each turn as a line of the file (a system
# message as a comment), so `scratch chat` continues whatever code the conversation holds.
CHAT_TEMPLATE = ("{%- for message in messages -%}\n"
                 "{%- if message['role'] == 'system' -%}{{ '# ' + message['content'] + '\\n' }}\n"
                 "{%- else -%}{{ message['content'] + '\\n' }}{%- endif -%}\n"
                 "{%- endfor -%}\n")


def stdlib_corpus(stdlib: str | Path | None = None) -> list[Path]:
    """The top-level `*.py` modules of a standard library folder (default: the running interpreter's), sorted by
    file name. Packages (json/, email/, test/ ...) and site-packages are left out: the top level alone is ~4.7 MB
    of Python on 3.11, more text than a CPU trains a few-million-parameter model on in an hour."""
    folder = Path(stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"])
    files = sorted(folder.glob("*.py"), key=lambda path: path.name)
    if not files:
        raise FileNotFoundError(f"no *.py modules in {folder}: not a Python standard library folder")
    return files


@dataclass(frozen=True)
class Preset:
    """One named recipe: scratch/train/cli.py turns it into a Recipe (the corpus is listed when the run starts, so
    it is the running interpreter's). `config` names an entry of cli.SMALL_CONFIGS."""

    corpus: Callable[[], list[Path]]
    config: str
    vocab_size: int
    val_fraction: float
    settings: dict = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    # ~1.2 M training tokens of Python at V = 4096 (3.6 bytes a token). The model (cli.SMALL_CONFIGS["llama-stdlib"],
    # 2.4M parameters) and the steps are sized for ~20 minutes on 2 CPU cores (~2,200 tokens/s): 1,200 steps of
    # 8 x 256 tokens see 2.5 M tokens, two epochs -- enough for the held-out bytes to compress better than lzma -9e
    # (280 steps, half an epoch, did not). A short run of a small model takes a high peak learning rate.
    "stdlib-small": Preset(
        corpus=stdlib_corpus, config="llama-stdlib", vocab_size=4096, val_fraction=0.05,
        settings=dict(steps=1200, batch_size=8, seq_len=256, lr=3e-3, min_lr=3e-4, warmup_steps=40,
                      weight_decay=0.1, eval_every=20, eval_batches=4, log_every=10, checkpoint_every=20, seed=0),
        description="a small Llama on the top-level modules of this Python's standard library (scratch/bundled)"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


# --- measuring the held-out slice ----------------------------------------------------------------------------------

def window_losses(model, ids, seq_len: int, batch_size: int = 16, windows=None) -> tuple[np.ndarray, np.ndarray]:
    """How well `model` predicts a token stream: (summed cross-entropy in nats, number of ids predicted) per window.

    The stream is cut into consecutive windows of seq_len + 1 ids that overlap by one, so every id but the first is
    predicted exactly once, from the ids before it in its window (the cheap, standard evaluation; a sliding window
    would give every id a full context at seq_len times the cost). `windows` (indices) evaluates only those; the
    whole stream's loss is sums.sum() / counts.sum(). Returns two (W,) arrays: float64 sums, int64 counts.
    """
    from scratch.nn.functional import log_softmax

    xp = model.backend.xp
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size < 2:
        raise ValueError(f"window_losses needs a 1-D stream of at least 2 ids, got shape {ids.shape}")
    starts = np.arange(0, ids.size - 1, seq_len)
    chosen = np.arange(starts.size) if windows is None else np.asarray(windows, dtype=np.int64)
    if chosen.size and not (0 <= chosen.min() and chosen.max() < starts.size):
        raise ValueError(f"window indices must lie in [0, {starts.size}), got {chosen.min()}..{chosen.max()}")
    sums, counts = np.zeros(chosen.size), np.zeros(chosen.size, dtype=np.int64)
    # windows of one length go through the model together; only the stream's last window can be shorter
    lengths = np.minimum(starts[chosen] + seq_len + 1, ids.size) - starts[chosen]
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        for first in range(0, rows.size, batch_size):
            batch_rows = rows[first:first + batch_size]
            batch = np.stack([ids[starts[chosen[r]]:starts[chosen[r]] + length] for r in batch_rows])  # (B, T + 1)
            log_probs = log_softmax(model(batch[:, :-1]))                                   # (B, T, V)
            targets = xp.expand_dims(model.backend.asarray(batch[:, 1:]), axis=-1)          # (B, T, 1)
            picked = xp.take_along_axis(log_probs, targets, axis=-1)[..., 0]                # (B, T)
            sums[batch_rows] = -np.asarray(model.backend.to_numpy(xp.sum(picked, axis=-1)), dtype=np.float64)
            counts[batch_rows] = length - 1
    return sums, counts


def compressed_bits_per_byte(data: bytes) -> dict[str, float]:
    """What the standard compressors achieve on `data`: zlib at level 9 and lzma (xz) at preset 9 extreme, in bits
    per byte (compressed size, headers included, * 8 / len(data))."""
    if not data:
        raise ValueError("compressed_bits_per_byte: no data")
    sizes = {"zlib -9": len(zlib.compress(data, 9)),
             "lzma -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))}
    return {name: 8 * size / len(data) for name, size in sizes.items()}


def compressed_given_bits_per_byte(data: bytes, context: bytes) -> dict[str, float]:
    """The compressors' cost of `data` when they have seen `context` first -- the side information the model had from
    training: (size of compress(context + data) - size of compress(context)) * 8 / len(data). lzma's window (64 MiB
    at preset 9) holds all of a few-MB context; zlib's holds its last 32 KiB."""
    alone = compressed_bits_per_byte(context)
    both = compressed_bits_per_byte(context + data)
    return {name: (both[name] * len(context + data) - alone[name] * len(context)) / len(data) for name in alone}


def heldout_text_bytes(tokenizer, ids, separator: int | None) -> bytes:
    """The held-out bytes the ids stand for: the documents' text, separators left out (no compressor sees them)."""
    return b"".join(tokenizer.decode_bytes([i]) for i in np.asarray(ids).tolist() if i != separator)


def export_bundle(run_dir, dest, log=print, seconds: float | None = None) -> dict:
    """Turn a finished stdlib-small run into the files scratch/bundled ships, in `dest`:
    config.json, model.safetensors (float16), tokenizer.json, HELDOUT_NAME (the validation token stream, separator
    first) and METRICS_NAME (the recipe, the loss history, the held-out loss and bits per byte of the float16
    weights, zlib and lzma on the same bytes). Returns the metrics."""
    import backends
    import scratch.models
    from scratch.models.config import save_config
    from scratch.models.safetensors import load_folder, save_file
    from scratch.tokenizer import load_tokenizer
    from scratch.train.data import END_OF_TEXT, read_tokens
    from scratch.train.loop import latest_checkpoint, read_trainer_state

    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    weights = {name: np.asarray(array, dtype=np.float16) for name, array in load_folder(run_dir).items()}
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    save_config(scratch.models.load_config(run_dir), dest)
    (dest / "tokenizer.json").write_bytes((run_dir / "tokenizer.json").read_bytes())
    (dest / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    tokenizer = load_tokenizer(dest / "tokenizer.json")
    separator = (getattr(tokenizer, "special_tokens", {}) or {}).get(END_OF_TEXT)
    val = np.asarray(read_tokens(run_dir / "data" / "val").ids, dtype=np.uint16)
    stream = np.concatenate([np.asarray([separator], dtype=np.uint16), val])    # every document's first id predicted
    with atomic_write(dest / HELDOUT_NAME, "wb") as handle:
        handle.write(lzma.compress(stream.astype("<u2").tobytes(), preset=9 | lzma.PRESET_EXTREME))

    model = scratch.models.load(dest, backend=backends.get("numpy"), dtype="float32")   # the shipped weights
    state = read_trainer_state(latest_checkpoint(run_dir))
    seq_len = state["settings"]["seq_len"]
    sums, counts = window_losses(model, stream, seq_len)
    total, count = float(sums.sum()), int(counts.sum())
    text = heldout_text_bytes(tokenizer, stream, separator)
    train_ids = read_tokens(run_dir / "data" / "train").ids
    train_text = heldout_text_bytes(tokenizer, train_ids, separator)
    metrics = {
        "recipe": "scratch train --preset stdlib-small",
        "python": sysconfig.get_python_version(),
        "parameters": model.parameter_count(),
        "settings": state["settings"],
        "train_tokens": len(read_tokens(run_dir / "data" / "train")),
        "heldout_tokens": int(count), "heldout_bytes": len(text),
        "heldout_seq_len": seq_len,
        "heldout_loss": total / count,
        "heldout_window_losses": [round(float(value), 4) for value in sums / counts],   # each window's mean
        "heldout_bits_per_byte": total / math.log(2) / len(text),
        "compressors_bits_per_byte": compressed_bits_per_byte(text),
        "compressors_given_training_text_bits_per_byte": compressed_given_bits_per_byte(text, train_text),
        "train_bytes": len(train_text),
        "train_loss_history": [[step, loss] for step, loss in state["losses"]],
        "val_loss_history": [[step, loss] for step, loss in state["val_losses"]],
        "training_seconds": seconds,
    }
    with atomic_write(dest / METRICS_NAME) as handle:
        json.dump(metrics, handle, indent=1)
        handle.write("\n")
    log(f"held-out: {count:,} tokens, {len(text):,} bytes, loss {metrics['heldout_loss']:.4f}, "
        f"{metrics['heldout_bits_per_byte']:.3f} bits/byte (" +
        ", ".join(f"{name} {bpb:.3f}" for name, bpb in metrics["compressors_bits_per_byte"].items()) + ")")
    return metrics
