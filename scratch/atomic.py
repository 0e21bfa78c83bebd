"""Atomic file writes: a crash or an error mid-write never leaves a half-written file where a good one was.

Everything the project saves (tokenizers, tokenizer.json, config.json, safetensors files and their index) is written
to a temporary file in the destination's folder and then moved over the destination with `os.replace`, which is
atomic on POSIX and Windows when both paths are on one file system -- hence the same folder. Host-side file I/O only.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing ("w" text as UTF-8, or "wb"); on a clean exit it replaces
    `path`, on an exception it is deleted and `path` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else "utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
