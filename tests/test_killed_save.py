"""A model folder's save is one transaction (scratch.models.safetensors.save_folder; issue 13, items 2 and 3).

Whenever the saving process dies -- SIGKILL at a random moment of a save of tens of MB, or at each file-system step
of a small save in turn -- the folder loads as the whole old set or the whole new one, never a mix; and the next
save leaves exactly its own files: no temporary, no stale index, no orphan shard.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scratch.models.safetensors import INDEX_NAME, SINGLE_NAME, load_folder, save_folder

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and fork")

REPO = Path(__file__).resolve().parent.parent
NAMES = [f"layers.{i}.weight" for i in range(8)]


def tensors(value: float, size: int) -> dict[str, np.ndarray]:
    return {name: np.full(size, value, dtype=np.float32) for name in NAMES}


def expected_files(shard_bytes: int | None, size: int) -> list[str]:
    """The files a completed save leaves: model.safetensors, or the index and its N shards."""
    total = len(NAMES) * size * 4
    if shard_bytes is None or total <= shard_bytes:
        return [SINGLE_NAME]
    per_shard = max(1, shard_bytes // (size * 4))
    count = -(-len(NAMES) // per_shard)
    return sorted([INDEX_NAME] + [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)])


def loaded_value(folder: Path) -> float:
    """The one value every tensor of the folder holds; fails on a mix of saves or a missing tensor."""
    loaded = load_folder(folder)
    assert sorted(loaded) == sorted(NAMES)
    values = {float(v) for array in loaded.values() for v in np.unique(array)}
    assert len(values) == 1, f"a mix of saves: {sorted(values)}"
    return values.pop()


def check_next_save_cleans(folder: Path, shard_bytes, size: int) -> None:
    save_folder(tensors(3.0, size), folder, shard_bytes)
    assert sorted(p.name for p in folder.iterdir()) == expected_files(shard_bytes, size)
    assert loaded_value(folder) == 3.0


# (old layout, new layout): shard limits in tensors per shard, None = one model.safetensors
TRANSITIONS = {
    "single to 3 shards": (None, 3),
    "3 shards to 3 shards": (3, 3),      # the plain names are in use: tagged names first, then a second switch
    "3 shards to single": (3, None),
    "4 shards to 2 shards": (2, 4),
}


def _limit(per_shard, size):
    return None if per_shard is None else per_shard * size * 4


# --- plain transactions --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transition", TRANSITIONS)
def test_a_completed_save_leaves_only_its_own_files(tmp_path, transition):
    """Saving unsharded after a sharded save used to leave the index, which won: the old weights loaded.
    Re-sharding into fewer shards left orphans."""
    old, new = (_limit(per, 16) for per in TRANSITIONS[transition])
    save_folder(tensors(1.0, 16), tmp_path, old)
    save_folder(tensors(2.0, 16), tmp_path, new)
    assert sorted(p.name for p in tmp_path.iterdir()) == expected_files(new, 16)
    assert loaded_value(tmp_path) == 2.0


def test_other_files_in_the_folder_are_left_alone(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-notes.txt").write_text("mine")
    save_folder(tensors(1.0, 16), tmp_path, _limit(3, 16))
    save_folder(tensors(2.0, 16), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model-notes.txt", SINGLE_NAME]


def test_model_safetensors_wins_over_an_index_as_in_transformers(tmp_path):
    save_folder(tensors(1.0, 16), tmp_path, _limit(3, 16))
    save_folder(tensors(2.0, 16), tmp_path / "single")
    os.replace(tmp_path / "single" / SINGLE_NAME, tmp_path / SINGLE_NAME)
    assert loaded_value(tmp_path) == 2.0


# --- killed at every step of a small save (fork: deterministic) ---------------------------------------------------

STEPS = ("open", "fsync", "replace", "unlink", "link")   # the file-system calls a save makes


def _save_killed_at(step: int, folder: Path, value: float, shard_bytes, size: int) -> bool:
    """Save in a forked child that SIGKILLs itself at its step-th file-system call; True if it died."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            counter = itertools.count(1)

            def dying(call):
                def wrapped(*args, **kwargs):
                    if next(counter) == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return call(*args, **kwargs)
                return wrapped

            for name in STEPS:
                setattr(os, name, dying(getattr(os, name)))
            save_folder(tensors(value, size), folder, shard_bytes)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_killed_at_every_step_loads_old_or_new(tmp_path, transition, monkeypatch):
    # fsync still counts as a step to die at, but does nothing: what a power cut keeps is not tested here, and
    # the ~40 saves of each sweep then take milliseconds
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    old, new = (_limit(per, 16) for per in TRANSITIONS[transition])
    outcomes = []
    for step in range(1, 200):
        folder = tmp_path / f"step{step}"
        save_folder(tensors(1.0, 16), folder, old)
        died = _save_killed_at(step, folder, 2.0, new, 16)
        outcomes.append(loaded_value(folder))
        check_next_save_cleans(folder, new, 16)
        if not died:  # the save got through every step
            break
    else:
        pytest.fail("the save never completed")
    assert set(outcomes) == {1.0, 2.0} and outcomes[-1] == 2.0 and len(outcomes) > 5


# --- killed at random moments of a large save (a real process, SIGKILL) -------------------------------------------

SIZE = 1 << 20           # 8 tensors of 4 MB: a 32 MB folder
CHILD = """
import sys
import numpy as np
from scratch.models.safetensors import save_folder
names = [f"layers.{i}.weight" for i in range(8)]
tensors = {name: np.full(%(size)d, 2.0, dtype=np.float32) for name in names}
print("go", flush=True)
save_folder(tensors, sys.argv[1], %(limit)r)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def save_seconds(tmp_path_factory):
    """How long a 32 MB save takes here (what the random kill moments spread over)."""
    folder = tmp_path_factory.mktemp("timing")
    start = time.perf_counter()
    save_folder(tensors(2.0, SIZE), folder, _limit(3, SIZE))
    return time.perf_counter() - start


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("transition", TRANSITIONS)
def test_sigkill_at_a_random_moment_loads_old_or_new(tmp_path, transition, seed, save_seconds):
    old, new = (_limit(per, SIZE) for per in TRANSITIONS[transition])
    save_folder(tensors(1.0, SIZE), tmp_path, old)
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", CHILD % {"size": SIZE, "limit": new}, str(tmp_path)], cwd=REPO,
                             env=env, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"go\n"
        # seeds 0, 1, 2 kill in the first, second and last third of the save's usual time
        time.sleep(save_seconds * (seed + random.Random(f"{transition}-{seed}").random()) / 3)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)                   # reaped: its temporaries now belong to a dead process
        child.stdout.close()
    assert loaded_value(tmp_path) in (1.0, 2.0)
    check_next_save_cleans(tmp_path, new, SIZE)
