"""The `Backend` object: one array namespace plus the few things the Array API leaves out.

Why an Array API namespace: model code written as `xp.matmul(x, w)` against the Python Array API standard
(https://data-apis.org/array-api/) runs unchanged on any library that implements the standard. NumPy 2 implements
it in its main namespace, and CuPy 14 mirrors NumPy 2, so `xp = numpy` and `xp = cupy` share one code path.

What the standard does not cover lives here: moving arrays between host and device (`asarray` / `to_numpy`),
waiting for asynchronous work (`synchronize`), checking that arrays live on this backend (`check_owned`; finding
the namespace of some arrays is the package's `backends.namespace_of`), and randomness. Randomness is host-side on
purpose: one seeded NumPy generator makes every draw and the backend only transfers it, so the same seed gives the
same numbers on every backend (the GPU's own generators would not).
This is not a tensor library: no autograd, no devices beyond "the one the backend uses".
"""
from __future__ import annotations

import numpy as np


class BackendError(Exception):
    """Base class of every error raised by the backend interface."""


class UnknownBackendError(BackendError, ValueError):
    """A backend name that is not one of the known names."""


class BackendUnavailableError(BackendError, RuntimeError):
    """A known backend that cannot run here (library missing, too old, or no device)."""


class MixedBackendError(BackendError, TypeError):
    """Arrays from two backends met in one computation (for example a host NumPy array and a GPU array)."""


# The dtypes the project uses, by name. Strings keep configs and command lines free of library objects.
DTYPE_NAMES = ("float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool")


_KIND_OF_TYPE: dict[type, str | None] = {}  # every forward pass asks this many times: remember each type's answer


def array_kind(array) -> str | None:
    """Which backend an array belongs to ("numpy", "strict", "cupy"), or None for Python scalars and None (an absent
    optional argument, such as a linear layer's missing bias).

    Decided by the array's type, without importing optional libraries that were never loaded.
    """
    kind_of_type = type(array)
    if kind_of_type in _KIND_OF_TYPE:
        return _KIND_OF_TYPE[kind_of_type]
    if array is None or isinstance(array, (bool, int, float, complex)):
        kind = None
    elif isinstance(array, (np.ndarray, np.generic)):
        kind = "numpy"
    elif kind_of_type.__module__.startswith("array_api_strict"):
        kind = "strict"
    elif kind_of_type.__module__.startswith("cupy"):
        kind = "cupy"
    else:
        raise MixedBackendError(
            f"expected an array from a known backend, got {kind_of_type.__module__}.{kind_of_type.__name__}")
    _KIND_OF_TYPE[kind_of_type] = kind
    return kind


class Backend:
    """One array library seen through the Array API, plus host transfer, synchronisation and randomness.

    Subclasses set `name` and `xp` and override the transfer methods where their library differs.
    """

    name: str = "abstract"

    def __init__(self, xp):
        self.xp = xp  # the Array API namespace: every array computation in scratch/ goes through it

    def __repr__(self) -> str:
        return f"<backend {self.name!r}>"

    # --- dtypes -----------------------------------------------------------------------------------------------
    def dtype(self, dtype):
        """The namespace's dtype object for a name such as "float32" (a dtype object passes through)."""
        if dtype is None or not isinstance(dtype, str):
            return dtype
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_NAMES)}")
        return getattr(self.xp, dtype)

    # --- host <-> backend -------------------------------------------------------------------------------------
    def asarray(self, host_array, dtype=None):
        """Copy a host array (NumPy array, list or scalar) onto this backend, optionally casting to `dtype`."""
        if isinstance(host_array, (list, tuple, int, float, bool)):
            host_array = np.asarray(host_array)
        kind = array_kind(host_array)
        if kind not in (None, "numpy", self.name):
            raise MixedBackendError(
                f"{self.name} backend: asarray() takes host (NumPy) data, got a {kind} array; "
                f"bring it to the host first with backends.get({kind!r}).to_numpy(array)"
            )
        return self.xp.asarray(host_array, dtype=self.dtype(dtype))

    def to_numpy(self, array) -> np.ndarray:
        """Copy an array of this backend back to a host NumPy array."""
        self.check_owned(array)
        return np.asarray(array)

    def synchronize(self) -> None:
        """Wait until all queued work has finished (a no-op on the host; needed before timing GPU work)."""

    # --- ownership --------------------------------------------------------------------------------------------
    def check_owned(self, *arrays) -> None:
        """MixedBackendError, naming the argument, unless every one of `arrays` is an array of this backend."""
        for position, array in enumerate(arrays):
            kind = array_kind(array)
            if kind != self.name:
                what = f"a {kind} array" if kind is not None else f"a {type(array).__name__}"
                raise MixedBackendError(
                    f"argument {position} is {what}, but this computation runs on the {self.name} backend; "
                    f"move host data with backends.get({self.name!r}).asarray(...) first"
                )

    # --- randomness (host-side, then transferred) ------------------------------------------------------------
    def random_uniform(self, rng: np.random.Generator, shape, dtype="float32"):
        """Uniform draws in [0, 1) made by the host generator `rng` (float64 on the host, cast on transfer)."""
        return self.asarray(rng.random(shape), dtype=dtype)

    def describe(self) -> str:
        """A one-line description for `scratch info`."""
        return f"{self.name}: {self.xp.__name__}"
