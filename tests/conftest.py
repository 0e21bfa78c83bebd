"""Shared test fixtures: the per-backend fixture, the `gpu` marker, hypothesis profiles and the shared data folder.

Write a test once, run it on every backend: a test that takes the `backend` fixture runs once per backend that can
run here -- numpy and strict always, cupy when a GPU is usable (those runs carry the `gpu` marker, so
`pytest -m gpu` selects exactly the device checks).
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


def _backend_params():
    params = []
    for name in backends.NAMES:
        marks = [pytest.mark.gpu] if name == "cupy" else []
        reason = backends.unavailable_reason(name)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=f"{name} backend unavailable here: {reason}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=_backend_params())
def backend(request) -> backends.Backend:
    """The backend under test; the test runs once for each backend usable here."""
    return backends.get(request.param)


@pytest.fixture
def xp(backend):
    """The Array API namespace of the backend under test."""
    return backend.xp


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
        message = f"shared test data not found: ../shared/data/{'/'.join(relative)} (only CI and dev sessions have it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def shared_data() -> Path:
    return require_shared()
