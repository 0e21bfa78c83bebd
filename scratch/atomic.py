"""Atomic file writes: a crash or an error mid-write never leaves a half-written file where a good one was.

Everything the project saves (tokenizers, tokenizer.json, config.json, safetensors files and their index) is written
to a temporary file in the destination's folder and then moved over the destination with `os.replace`, which is
atomic on POSIX and Windows when both paths are on one file system -- hence the same folder. The rules, as careful
editors and version-control tools follow them:
- the new file gets the mode a plain open() would give it (0o666 minus the umask), or the mode of the file it
  replaces; its bytes are fsynced before the rename and the folder after it, so a power cut leaves old or new;
- a failed write deletes its temporary file; a killed one cannot, so temporaries are named .NAME.PID.RANDOM.tmp and
  the next write of NAME deletes those of processes that no longer run;
- saving over a symlink writes the file the link points to (the link stays; vim and emacs do the same), so a file
  in a Hugging Face cache -- a link into blobs/ -- is updated where it lives.
Host-side file I/O only. A folder of several files is one transaction in scratch.models.safetensors.save_folder.
"""
from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_write", "fsync_folder", "remove_stale_temporaries", "is_temporary"]

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def _temporary_name(name: str) -> str:
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file that atomic_write makes."""
    return _TEMPORARY.fullmatch(name) is not None


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume it runs (the file stays)
        return True
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Delete the temporaries in `folder` (of file `name`, or of any file) whose writer no longer runs: what a
    killed save left. Returns the names removed."""
    removed = []
    for entry in os.scandir(folder):
        match = _TEMPORARY.fullmatch(entry.name)
        if match and (name is None or match["name"] == name) and not _running(int(match["pid"])):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a folder's entries durable (a rename or unlink in it survives a power cut). A no-op where folders
    cannot be opened or synced (Windows; some network file systems)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing ("w" text as UTF-8, or "wb"); on a clean exit it replaces
    `path` (or, when `path` is a symlink, the file it points to), on an exception it is deleted and `path` is left as
    it was. See the module docstring for the file's mode, fsync and the cleanup of killed writes."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    remove_stale_temporaries(target.parent, target.name)
    try:
        keep_mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        keep_mode = None
    tmp = target.parent / _temporary_name(target.name)
    # 0o666 here and the kernel applies the umask, as for any new file (tempfile.mkstemp would make it 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else "utf-8") as handle:
            if keep_mode is not None and hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), keep_mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)
