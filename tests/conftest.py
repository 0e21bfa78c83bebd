"""Shared test fixtures: the per-backend fixture, the `gpu` marker, hypothesis profiles, the shared data folder and
the opt-in real checkpoint.

Write a test once, run it on every backend: a test that takes the `backend` fixture runs once per backend -- numpy
and strict always, cupy when a GPU is usable (those runs carry the `gpu` marker, so `pytest -m gpu` selects exactly
the device checks). Skips say what is missing in a user's terms, and every skip of one kind is raised from one line
here with one reason, so `pytest -ra` folds them into a single summary line (it groups by location and reason).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import backends

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Hypothesis: CI is deterministic (derandomize) so a failure reproduces from the log, and bounded in time.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


def sigint_interrupts() -> None:
    """`preexec_fn` for a child process that a test Ctrl-C's: a shell starts background jobs (`cmd &`, nohup) with
    SIGINT ignored, children inherit that, and Python leaves an ignored SIGINT ignored -- no KeyboardInterrupt, so
    the test would fail for its environment. The child gets the default disposition back, as a terminal's job has."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Popen's preexec_fn for such a child: POSIX only (Windows has no preexec_fn, and no SIGINT disposition to restore).
RESTORE_SIGINT = sigint_interrupts if os.name == "posix" else None


# Why a backend's cases skip, in a user's words (the backend's own message says how to install it).
BACKEND_SKIPS = {
    "cupy": "GPU cases: no usable NVIDIA GPU with CuPy >= 14 here (pip install 'cupy-cuda12x>=14' on a GPU machine)",
    "strict": "array-api-strict cases: the array-api-strict package is not installed (pip install array-api-strict)",
}


def backend_params(names=backends.NAMES):
    """pytest params for the named backends, cupy's marked `gpu`."""
    return [pytest.param(name, marks=[pytest.mark.gpu] if name == "cupy" else [], id=name) for name in names]


def backend_or_skip(name: str) -> backends.Backend:
    """The backend `name`, or a skip (one reason per backend) where it cannot run."""
    if backends.unavailable_reason(name) is not None:
        pytest.skip(BACKEND_SKIPS.get(name, f"the {name} backend cannot run here"))
    return backends.get(name)


@pytest.fixture(params=backend_params())
def backend(request) -> backends.Backend:
    """The backend under test; the test runs once for each backend, and skips where that backend cannot run."""
    return backend_or_skip(request.param)


@pytest.fixture
def xp(backend):
    """The Array API namespace of the backend under test."""
    return backend.xp


# One reason for every missing piece of shared data, and one for the opt-in checkpoint, so their skips fold into one
# summary line each.
SHARED_DATA_SKIP = ("real vocabularies and the benchmark corpus are not in a clone (CI has them): set "
                    "SCRATCH_SHARED_DATA to a folder holding tokenizers/ and corpora/ to run these")
REAL_GGUF_SKIP = ("opt-in check against a real checkpoint: set SCRATCH_REAL_GGUF to the path of a "
                  "SmolLM2-135M-Instruct Q4_1 .gguf file to run it")


def shared_data_dir() -> Path | None:
    """The `../shared/data` folder beside the checkout (SCRATCH_SHARED_DATA overrides), or None if absent."""
    override = os.environ.get("SCRATCH_SHARED_DATA")
    path = Path(override) if override else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def require_shared(*relative: str) -> Path:
    """A path under the shared data folder. Outside CI a missing folder skips with the reason; in CI it fails,
    because CI always has the data and a skip there would hide a failure."""
    root = shared_data_dir()
    path = root.joinpath(*relative) if root else None
    if path is None or not path.exists():
        if IN_CI:
            where = root or REPO_ROOT.parent / "shared" / "data"
            pytest.fail(f"shared test data not found: {'/'.join(relative)} under {where}")
        pytest.skip(SHARED_DATA_SKIP)
    return path


def require_real_gguf() -> Path:
    """The real checkpoint named by SCRATCH_REAL_GGUF, or a skip saying how to provide it (the `realmodel` tests)."""
    path = os.environ.get("SCRATCH_REAL_GGUF")
    if not path:
        pytest.skip(REAL_GGUF_SKIP)
    if not Path(path).is_file():
        pytest.skip(f"SCRATCH_REAL_GGUF={path} is not a file")
    return Path(path)


@pytest.fixture
def shared_data() -> Path:
    return require_shared()


# Under CI=true no skip may hide anything but a missing GPU (tests/test_hygiene.py checks the skips in tests/): CI
# installs the test extra, so pytest.importorskip there imports or fails; and the opt-in `realmodel` tests, whose
# checkpoint CI never has, are deselected rather than skipped.
if IN_CI:
    def _import_or_fail(modname: str, minversion=None, reason=None, **kwargs):
        import importlib
        return importlib.import_module(modname)

    pytest.importorskip = _import_or_fail


def pytest_collection_modifyitems(config, items):
    if not IN_CI or os.environ.get("SCRATCH_REAL_GGUF"):
        return
    opt_in = [item for item in items if item.get_closest_marker("realmodel")]
    if opt_in:
        config.hook.pytest_deselected(items=opt_in)
        items[:] = [item for item in items if not item.get_closest_marker("realmodel")]


# -ra groups skips by (file, line, reason), and a skip raised in a fixture is reported at the test's own line: one
# summary line per test. Reported here instead, the skips of one reason fold into one line (e.g. "SKIPPED [117]
# tests/conftest.py: GPU cases: ...").
FOLDED_SKIPS = {*BACKEND_SKIPS.values(), SHARED_DATA_SKIP, REAL_GGUF_SKIP}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        reason = report.longrepr[2].removeprefix("Skipped: ")
        if reason in FOLDED_SKIPS:
            report.longrepr = (__file__, None, reason)
