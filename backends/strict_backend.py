"""The array-api-strict backend: proves on a CPU that the code is portable.

array-api-strict implements the Array API standard and nothing more: no NumPy-only functions or methods, no
implicit conversion from NumPy arrays or Python lists inside operations, no value-based casting. A model that runs
here uses only operations CuPy (or any other standard library) also has, and never mixes host arrays into device
computations -- mixing a NumPy array into an operation raises TypeError. CI has no GPU, so this backend is how CI
checks the promise that the GPU path works.
"""
from __future__ import annotations

import numpy as np

from backends.base import Backend, BackendUnavailableError


class StrictBackend(Backend):
    name = "strict"

    def dtype(self, dtype):
        # subtle: the standard has no float16, so half-precision code paths are checked on numpy and cupy only.
        if dtype == "float16":
            raise TypeError("the strict backend has no float16: the Array API standard defines float32 and float64 only")
        return super().dtype(dtype)

    def to_numpy(self, array) -> np.ndarray:
        self.check_owned(array)
        # subtle: the strict Array refuses the NumPy array protocol; DLPack is the portable exchange.
        return np.from_dlpack(array)

    def describe(self) -> str:
        return f"strict: array-api-strict {self.xp.__version__} (standard {self.xp.__array_api_version__}, host)"


def load() -> StrictBackend:
    try:
        import array_api_strict
    except ImportError:
        raise BackendUnavailableError(
            "the strict backend needs the array-api-strict package, which is not installed "
            "(pip install array-api-strict, or the project's test extra)"
        ) from None
    return StrictBackend(array_api_strict)
