"""Token-id datasets on disk: a corpus tokenized once into a flat file of ids, read back memory-mapped, and random
(B, T) training windows drawn from it by a seeded host generator.

The format (nanoGPT's and llm.c's idea: a flat array of token ids, no padding, documents one after another):
    NAME.bin   the ids, little-endian, C order: uint16 when the vocabulary fits (V <= 65,536), else uint32
    NAME.json  {"format": "scratch-tokens", "version": 1, "dtype": "uint16" | "uint32", "vocab_size": V,
                "tokens": N, "documents": D, "separator": id or null}
A document is followed by the separator id (the tokenizer's <|endoftext|>) when it has one, so a window that spans two
documents sees where one ends. Both files are written atomically (the .bin first, then the .json that names it), so
a reader that finds the .json finds a complete .bin. Host-side NumPy only: batches are host int64 arrays, moved to
the device by whoever consumes them. Not here: shuffling documents, packing with attention masks, streaming.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from scratch.atomic import atomic_write
from scratch.safe_read import read_json

__all__ = ["FORMAT", "VERSION", "TokenFile", "token_dtype", "write_tokens", "read_tokens", "tokenize_files",
           "random_batch", "END_OF_TEXT"]

FORMAT, VERSION = "scratch-tokens", 1
END_OF_TEXT = "<|endoftext|>"   # the separator between documents, when the tokenizer has it as a special token


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 for a vocabulary of at most 65,536 ids (0..65,535), else uint32: 2 or 4 bytes a token on disk."""
    if not (isinstance(vocab_size, (int, np.integer)) and 0 < vocab_size <= 2**32):
        raise ValueError(f"vocab_size must be an int in [1, 2**32], got {vocab_size!r}")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(NAME.bin, NAME.json) for NAME, NAME.bin or NAME.json."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".bin", ".json") else path
    return stem.with_name(stem.name + ".bin"), stem.with_name(stem.name + ".json")


@dataclass(frozen=True)
class TokenFile:
    """A token file opened for reading: `ids` is a read-only memory map of the N ids (no copy is made)."""

    path: Path                 # the .bin file
    ids: np.ndarray            # (N,) uint16 or uint32, memory-mapped
    vocab_size: int
    documents: int
    separator: int | None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """random_batch over this file's ids."""
        return random_batch(self.ids, rng, batch_size, seq_len)


def write_tokens(documents: Iterable[Iterable[int]], path: str | os.PathLike, vocab_size: int,
                 separator: int | None = None) -> TokenFile:
    """Write token-id documents (each an iterable of ints; the separator, if given, after each) to NAME.bin and
    NAME.json atomically, and return the file opened for reading. An id outside [0, vocab_size) raises ValueError
    naming the document and the id."""
    bin_path, json_path = _paths(path)
    dtype = token_dtype(vocab_size)
    if separator is not None and not 0 <= separator < vocab_size:
        raise ValueError(f"separator id {separator} is outside the vocabulary [0, {vocab_size})")
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    total = count = 0
    with atomic_write(bin_path, "wb") as handle:
        for count, document in enumerate(documents, 1):
            ids = np.fromiter(document, dtype=np.int64)
            bad = (ids < 0) | (ids >= vocab_size)
            if bad.any():
                raise ValueError(f"document {count - 1} has token id {int(ids[bad][0])} outside the vocabulary "
                                 f"[0, {vocab_size})")
            if separator is not None:
                ids = np.append(ids, separator)
            handle.write(ids.astype(dtype).tobytes())
            total += ids.size
    meta = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "vocab_size": int(vocab_size),
            "tokens": total, "documents": count, "separator": separator}
    with atomic_write(json_path) as handle:
        json.dump(meta, handle, indent=2)
        handle.write("\n")
    return read_tokens(bin_path)


def read_tokens(path: str | os.PathLike) -> TokenFile:
    """Open NAME.bin / NAME.json for reading (memory-mapped). A missing, foreign or truncated file raises an error
    naming it."""
    bin_path, json_path = _paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"no token file description {json_path} (write one with write_tokens)")
    meta = read_json(json_path, "json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{json_path}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise ValueError(f"{json_path}: {FORMAT} version {meta.get('version')!r} is not supported (this code reads "
                         f"{VERSION})")
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise ValueError(f"{json_path}: dtype must be uint16 or uint32, got {meta.get('dtype')!r}")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    if not bin_path.is_file():
        raise FileNotFoundError(f"{json_path} describes {bin_path}, which does not exist")
    size = bin_path.stat().st_size
    if size != meta["tokens"] * dtype.itemsize:
        raise ValueError(f"{bin_path} holds {size} bytes, but {json_path} says {meta['tokens']} {dtype.name} ids "
                         f"({meta['tokens'] * dtype.itemsize} bytes): truncated or from another write")
    ids = (np.memmap(bin_path, dtype=dtype, mode="r", shape=(meta["tokens"],)) if meta["tokens"]
           else np.zeros(0, dtype=dtype))             # (a zero-length file cannot be mapped)
    return TokenFile(bin_path, ids, int(meta["vocab_size"]), int(meta["documents"]), meta.get("separator"))


def tokenize_files(tokenizer, files: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                   val_fraction: float = 0.1) -> tuple[TokenFile, TokenFile]:
    """Tokenize UTF-8 text files (one document each) into out_dir/train.{bin,json} and out_dir/val.{bin,json}.

    The validation split is the last `val_fraction` of each document's tokens (at least one token when the
    fraction is > 0), so both splits see every file. The separator is the tokenizer's <|endoftext|> if it has one.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    separator = specials.get(END_OF_TEXT)
    train_docs, val_docs = [], []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        text = path.read_text(encoding="utf-8", errors="replace")
        # special-token text in a corpus is ordinary text (encode_ordinary), never a control token
        ids = tokenizer.encode_ordinary(text) if hasattr(tokenizer, "encode_ordinary") else tokenizer.encode(text)
        n_val = 0 if val_fraction == 0.0 else max(1, round(len(ids) * val_fraction))
        train_docs.append(ids[:len(ids) - n_val])
        val_docs.append(ids[len(ids) - n_val:])
    out_dir = Path(out_dir)
    vocab_size = tokenizer.n_vocab
    return (write_tokens(train_docs, out_dir / "train", vocab_size, separator),
            write_tokens(val_docs, out_dir / "val", vocab_size, separator))


def random_batch(ids: np.ndarray, rng: np.random.Generator, batch_size: int, seq_len: int):
    """B windows of T + 1 consecutive ids at random starts (uniform over every start that fits, with
    replacement) -> (input_ids, targets), each (B, T) int64: targets are the inputs shifted by one token.

    Draws exactly one rng.integers call, so a generator in a given state always gives the same batch."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    n = int(ids.shape[0])
    if n < seq_len + 1:
        raise ValueError(f"the token file holds {n} ids, fewer than seq_len + 1 = {seq_len + 1}: use a shorter "
                         f"sequence or more text")
    starts = rng.integers(0, n - seq_len, size=batch_size)                 # (B,) in [0, n - T - 1]
    windows = np.stack([np.asarray(ids[s:s + seq_len + 1], dtype=np.int64) for s in starts])   # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]                                 # (B, T) inputs, (B, T) targets
