"""Model inputs at the edge: integer id arrays checked once and moved onto the model's backend.

Every model (GPT-2, Llama, BERT) takes ids as host NumPy arrays, lists, or arrays already on its backend. Host input
is checked here -- shape, integer dtype, range -- because a bad id would otherwise surface as an index error deep
inside `take`. A backend array is trusted for its range: checking it would cost a device sync on every decoding step.
"""
from __future__ import annotations

import numpy as np

import backends


def is_integer_dtype(xp, dtype) -> bool:
    isdtype = getattr(xp, "isdtype", None)          # the standard's test (Array API 2023.12); older CuPy lacks it
    if isdtype is not None:
        return isdtype(dtype, "integral")
    return np.issubdtype(np.dtype(dtype), np.integer)


def token_ids(backend: backends.Backend, values, upper: int, name: str = "input_ids"):
    """(B, T) int64 ids on the backend, each in [0, upper) (checked for host input); errors name `name`."""
    if isinstance(values, (list, tuple)) or backends.array_kind(values) in (None, "numpy"):
        host = np.asarray(values)
        if host.ndim != 2:
            raise ValueError(f"{name} must be (B, T), got shape {host.shape}")
        if host.size and not np.issubdtype(host.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {host.dtype}")
        if host.size and (host.min() < 0 or host.max() >= upper):
            bad = host[(host < 0) | (host >= upper)][0]
            raise ValueError(f"{name} holds {int(bad)}, outside [0, {upper})")
        return backend.asarray(host, dtype="int64")
    xp = backend.namespace_of(values)
    if values.ndim != 2:
        raise ValueError(f"{name} must be (B, T), got shape {tuple(values.shape)}")
    if not is_integer_dtype(xp, values.dtype):
        raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    return values if values.dtype == xp.int64 else xp.astype(values, xp.int64)
