"""Model inputs at the edge: the one home of "ids in range" and "context length exceeded" for every model.

Every model (GPT-2, Llama, BERT) takes ids as host NumPy arrays, lists, or arrays already on its backend. Host input
is checked here -- shape, integer dtype, range -- because a bad id would otherwise surface as an index error deep
inside `take`. A backend array is trusted for its range: checking it would cost a device sync on every decoding step.
Callers outside the models (generation) use the same two checks: `check_ids_in_range` and `check_length`.
"""
from __future__ import annotations

import numpy as np

import backends

__all__ = ["token_ids", "check_ids_in_range", "check_length"]


def check_ids_in_range(ids: np.ndarray, upper: int, name: str = "input_ids", where: np.ndarray | None = None) -> None:
    """ValueError naming the first id of host array `ids` outside [0, upper); `where` (same shape, bool) limits the
    check to those positions (e.g. the real tokens of a left-padded batch)."""
    bad = (ids < 0) | (ids >= upper)
    if where is not None:
        bad &= where
    if bad.any():
        raise ValueError(f"{name} holds {int(ids[bad][0])}, outside [0, {upper})")


def check_length(past: int, T: int, limit: int, what: str) -> None:
    """ValueError when `past` cached positions plus T new ones exceed a context of `limit` positions."""
    if past + T > limit:
        told = f"{T} positions" if past == 0 else f"{past} cached + {T} new positions"
        raise ValueError(f"{what}: {told} exceed the model's context of {limit}")


def token_ids(backend: backends.Backend, values, upper: int, name: str = "input_ids"):
    """(B, T) int64 ids on the backend, each in [0, upper) (checked for host input); errors name `name`."""
    if isinstance(values, (list, tuple)) or backends.array_kind(values) in (None, "numpy"):
        host = np.asarray(values)
        if host.ndim != 2:
            raise ValueError(f"{name} must be (B, T), got shape {host.shape}")
        if host.size and not np.issubdtype(host.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {host.dtype}")
        check_ids_in_range(host, upper, name)
        return backend.asarray(host, dtype="int64")
    backend.check_owned(values)
    xp = backend.xp
    if values.ndim != 2:
        raise ValueError(f"{name} must be (B, T), got shape {tuple(values.shape)}")
    if not xp.isdtype(values.dtype, "integral"):
        raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    return values if values.dtype == xp.int64 else xp.astype(values, xp.int64)
