"""The array-backend interface every array computation in `scratch/` goes through.

Pick a backend by name and use its namespace `xp` (the Python Array API: https://data-apis.org/array-api/):

    >>> import backends
    >>> be = backends.get("numpy")          # or "strict", "cupy", "auto"
    >>> x = be.asarray([[1.0, 2.0]], dtype="float32")
    >>> be.to_numpy(be.xp.sum(x * x))
    array(5., dtype=float32)

Backends, by name:
- "numpy"  -- the reference, on the host (NumPy 2 implements the Array API in its main namespace).
- "strict" -- array-api-strict: only the standard's operations, and arrays never mix with NumPy's. Runs on a CPU, so
              CI proves the code is portable without a GPU.
- "cupy"   -- CuPy >= 14 on an NVIDIA GPU; the same code path, arrays in device memory.
- "auto"   -- cupy when a GPU is usable, else numpy.
The default for `get()` with no name is the environment variable SCRATCH_BACKEND, else "numpy". It is read only here,
when a backend is chosen -- never inside a forward pass.

This package imports nothing from `scratch`: the dependency runs one way.
"""
from __future__ import annotations

import os

import numpy as np

from backends.base import (
    Backend,
    BackendError,
    BackendUnavailableError,
    MixedBackendError,
    UnknownBackendError,
    array_kind,
)

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "MixedBackendError",
    "UnknownBackendError",
    "NAMES",
    "available",
    "get",
    "namespace_of",
    "of",
    "rng",
    "unavailable_reason",
]

NAMES = ("numpy", "strict", "cupy")  # the concrete backends; "auto" picks one of them
ENV_VAR = "SCRATCH_BACKEND"

_loaded: dict[str, Backend] = {}


def get(name: str | Backend | None = None) -> Backend:
    """The backend called `name` ("numpy", "strict", "cupy" or "auto"); a Backend passes through unchanged.

    Raises UnknownBackendError for a name that is not a backend, BackendUnavailableError (saying what is missing)
    for one that cannot run here.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get(ENV_VAR) or "numpy"
    if not isinstance(name, str):
        raise UnknownBackendError(f"a backend is chosen by name (str), got {type(name).__name__}: {name!r}")
    key = name.strip().lower()
    if key == "auto":
        try:
            return _load("cupy")
        except BackendUnavailableError:
            return _load("numpy")
    if key not in NAMES:
        source = f" (from ${ENV_VAR})" if os.environ.get(ENV_VAR) == name else ""
        raise UnknownBackendError(f"unknown backend {name!r}{source}; expected one of {', '.join(NAMES)} or 'auto'")
    return _load(key)


def namespace_of(*arrays):
    """The Array API namespace `xp` shared by `arrays`; MixedBackendError if they come from two backends.

    This is how code that receives arrays (layers, samplers) finds its namespace without being told. Python
    scalars and None (an absent optional argument) are ignored; with no array at all, the namespace is NumPy's.
    """
    return of(*arrays).xp


def of(*arrays) -> Backend:
    """The one backend that owns all of `arrays` (Python scalars and None are ignored); MixedBackendError if they
    disagree, the numpy backend if there is no array at all."""
    kinds = {}                                   # backend name -> position of its first array
    for position, array in enumerate(arrays):
        kind = array_kind(array)
        if kind is not None:
            kinds.setdefault(kind, position)
    if len(kinds) > 1:
        detail = ", ".join(f"argument {position} is {kind}" for kind, position in kinds.items())
        raise MixedBackendError(f"mixed backends in one computation: {detail}; move arrays with backend.asarray()")
    kind = next(iter(kinds), "numpy")
    return _loaded.get(kind) or get(kind)        # every layer call asks: skip get()'s name parsing once loaded


def _load(name: str) -> Backend:
    if name not in _loaded:
        if name == "numpy":
            from backends import numpy_backend as module
        elif name == "strict":
            from backends import strict_backend as module
        else:
            from backends import cupy_backend as module
        _loaded[name] = module.load()
    return _loaded[name]


def available() -> list[str]:
    """Names of the backends that can run on this machine, in preference order for tests."""
    names = []
    for name in NAMES:
        try:
            _load(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run here, or None when it can."""
    try:
        get(name)
    except BackendUnavailableError as error:
        return str(error)
    return None


def rng(seed: int | None) -> np.random.Generator:
    """The host-side random generator that makes every draw (weights, sampling uniforms) for a given seed."""
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return np.random.default_rng(seed)
