"""Reading files that may come from strangers: regular files only, a size cap per format, errors that name the file.

Every loader here reads a file someone downloaded (config.json, a safetensors index, a tokenizer). Before a byte is
read, the path must be a regular file (not /dev/zero, whose reads never end, nor a FIFO, whose open blocks) no larger
than the cap of its format -- far above any real file of that kind, far below what would exhaust memory. Text must
be UTF-8 and JSON parseable without blowing Python's stack; each failure is one ValueError naming the file. Host-side
file I/O only; writing is scratch.atomic's job, binary formats check their own fields (safetensors.py, gguf.py).
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

__all__ = ["LIMITS", "check_regular_file", "read_bytes", "read_text", "read_json", "parse_json"]

MiB = 1 << 20
# The largest file each format may be. The published files are far smaller: a config.json is a few KB, the index of
# a 400B-parameter checkpoint well under 1 MB, tokenizer.json files up to ~35 MB (Gemma 3's), vocab.json/merges.txt a
# few MB, cl100k/o200k rank files 1.7/3.6 MB, SentencePiece models a few MB.
LIMITS: dict[str, int] = {
    "config.json": 16 * MiB,
    "safetensors index": 256 * MiB,
    "tokenizer.json": 1024 * MiB,
    "vocab.json": 256 * MiB,
    "merges.txt": 256 * MiB,
    "tiktoken": 256 * MiB,
    "sentencepiece": 256 * MiB,
    "tokenizer": 1024 * MiB,          # any tokenizer file, before its format is known (the largest cap above)
    "json": 256 * MiB,                # the small JSON files around a tokenizer (tokenizer_config.json, meta.json)
}

_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket"}


def check_regular_file(path: str | os.PathLike, kind: str) -> int:
    """The size of `path` after checking that it is a regular file (symlinks followed) within LIMITS[kind]."""
    info = os.stat(path)                              # FileNotFoundError names the path
    _check(Path(path), info, kind)
    return info.st_size


def _check(path: Path, info: os.stat_result, kind: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        what = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ValueError(f"{path}: is {what}, not a regular {kind} file")
    if info.st_size > LIMITS[kind]:
        raise ValueError(f"{path}: {info.st_size:,} bytes is more than any {kind} file should be "
                         f"(the limit is {LIMITS[kind]:,})")


def read_bytes(path: str | os.PathLike, kind: str) -> bytes:
    """The whole of `path`, a regular file of at most LIMITS[kind] bytes."""
    path = Path(path)
    check_regular_file(path, kind)
    # O_NONBLOCK: if the path was swapped for a FIFO since the check, open returns instead of waiting for a writer
    # (the fstat below then refuses it); it changes nothing for a regular file.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        _check(path, os.fstat(fd), kind)
        data = handle.read(LIMITS[kind] + 1)          # a file that grew past the cap since is still refused
    if len(data) > LIMITS[kind]:
        raise ValueError(f"{path}: more than {LIMITS[kind]:,} bytes, the limit for a {kind} file")
    return data


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None


def read_text(path: str | os.PathLike, kind: str) -> str:
    """`path` as UTF-8 text (read_bytes' checks, then a decoding error that names the file and the offset)."""
    return _decode(read_bytes(path, kind), Path(path))


def parse_json(text: str | bytes, source: str | os.PathLike) -> Any:
    """JSON text -> Python values; ValueError naming `source` for bad JSON, bad UTF-8 or nesting too deep."""
    if isinstance(text, bytes):
        text = _decode(text, Path(source))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON (truncated or corrupt: {error})") from None
    except RecursionError:  # json's decoder recurses once per [ or {: "[[[[..." 100k deep exhausts the stack
        raise ValueError(f"{source}: JSON nested too deeply to read (arrays or objects nested more than about "
                         f"{sys.getrecursionlimit()} levels)") from None


def read_json(path: str | os.PathLike, kind: str) -> Any:
    """The JSON value in `path` (read_bytes' checks, then parse_json's)."""
    return parse_json(read_bytes(path, kind), path)
