"""scratch.atomic.atomic_write: the destination changes only on a complete write, with the mode a plain open()
would give it, fsynced, leaving no temporary behind a failed write (and none of a killed one after the next)."""
import os
import stat
import subprocess
import sys

import pytest

from scratch.atomic import atomic_write, is_temporary, remove_stale_temporaries


def test_a_complete_write_replaces_the_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with atomic_write(path) as handle:
        handle.write("new ü")
    assert path.read_text(encoding="utf-8") == "new ü"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_error_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path, "wb") as handle:
            handle.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass


# --- the file's mode, durability, leftovers of killed writes, symlinks (issue 13, item 4 and 11) --------------------

@pytest.fixture
def umask():
    """Set the process umask for a test, restoring it after."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_a_new_file_gets_0666_minus_the_umask(tmp_path, umask, mask):
    umask(mask)
    with atomic_write(tmp_path / "new.json") as handle:
        handle.write("{}")
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~mask


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "shared.json"
    path.write_text("old")
    path.chmod(0o644)
    with atomic_write(path) as handle:
        handle.write("new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == "new"


def test_bytes_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    with atomic_write(tmp_path / "x.bin", "wb") as handle:
        handle.write(b"data")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    dead = f".out.json.{_dead_pid()}.0badc0de.tmp"           # a writer killed mid-write
    alive = f".out.json.{os.getpid()}.0123abcd.tmp"          # a write in progress (this process)
    other = f".other.json.{_dead_pid()}.feedbeef.tmp"        # another file's: its own next write removes it
    for name in (dead, alive, other):
        (tmp_path / name).write_text("half")
    with atomic_write(tmp_path / "out.json") as handle:
        handle.write("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive, other, "out.json"])
    assert remove_stale_temporaries(tmp_path) == [other]
    assert is_temporary(alive) and not is_temporary("out.json")


def test_saving_over_a_symlink_writes_its_target(tmp_path):
    """As editors do: the link stays a link (a Hugging Face cache snapshot keeps pointing into blobs/)."""
    (tmp_path / "blobs").mkdir()
    target = tmp_path / "blobs" / "abc"
    target.write_text("old")
    target.chmod(0o644)
    link = tmp_path / "config.json"
    link.symlink_to("blobs/abc")
    with atomic_write(link) as handle:
        handle.write("new")
    assert link.is_symlink() and os.readlink(link) == "blobs/abc"
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == ["abc"]


def test_a_missing_folder_or_a_folder_target_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"cannot write {tmp_path / 'no' / 'x.json'}: the folder "
                                                f"{tmp_path / 'no'} does not exist"):
        with atomic_write(tmp_path / "no" / "x.json"):
            pass
    with pytest.raises(IsADirectoryError, match=f"cannot write {tmp_path}: it is a folder"):
        with atomic_write(tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []
