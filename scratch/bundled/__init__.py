"""The model that ships with scratch: a small Llama trained by this project's own code on Python's standard library.

`load()` returns (model, tokenizer) from the files in scratch/bundled/stdlib_small/ -- config.json, model.safetensors
(float16), tokenizer.json (our byte-level BPE, 4,096 ids) and chat_template.jinja -- with no download; it is what
`scratch demo`, `scratch generate`, `scratch compare-decoding` and `scratch chat` use when no --model is given.
`scratch train --preset stdlib-small` made it (scratch.train.presets); `heldout_ids()` is the validation token stream
it was measured on and `metrics()` what was measured (docs/bundled_model.md). It completes Python; it is not an
instruct model, and at 2.4M parameters it writes code that looks right more often than code that is right.
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np

__all__ = ["FOLDER", "load", "load_model", "load_tokenizer", "heldout_ids", "metrics"]

FOLDER = Path(__file__).resolve().parent / "stdlib_small"    # a Hugging Face-style model folder
HELDOUT_FILE = FOLDER / "heldout.u16.xz"                      # the validation ids, little-endian uint16, xz
METRICS_FILE = FOLDER / "metrics.json"


def _checked(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"the bundled model's file {path} is missing: the package was installed without its "
                                f"data (reinstall scratch-llm; setuptools package-data ships scratch/bundled/*)")
    return path


def load_model(backend=None, dtype: str = "float32"):
    """The bundled Llama on `backend` (a name, a Backend, or None: $SCRATCH_BACKEND, else numpy), float16 weights
    widened to `dtype`."""
    import backends
    import scratch.models

    _checked(FOLDER / "model.safetensors")
    return scratch.models.load(FOLDER, backend=backends.get(backend), dtype=dtype)


def load_tokenizer():
    """The bundled tokenizer (with its chat template, which only joins the turns: see chat_template.jinja)."""
    from scratch.tokenizer import load_tokenizer as load

    _checked(FOLDER / "tokenizer.json")
    return load(FOLDER)


def load(backend=None, dtype: str = "float32"):
    """(model, tokenizer) of the bundled model."""
    return load_model(backend, dtype), load_tokenizer()


def heldout_ids() -> np.ndarray:
    """The held-out token stream the stated validation loss is measured on: (N,) int64 ids, an <|endoftext|> first
    and after every document (the last 5% of each standard-library file's tokens, never trained on)."""
    raw = lzma.decompress(_checked(HELDOUT_FILE).read_bytes())
    return np.frombuffer(raw, dtype="<u2").astype(np.int64)


def metrics() -> dict:
    """What `scratch train --preset stdlib-small` measured: settings, loss history, held-out loss, bits per byte
    and the compressors' bits per byte on the same bytes (the figures of docs/bundled_model.md)."""
    return json.loads(_checked(METRICS_FILE).read_text(encoding="utf-8"))
