"""The CuPy backend: the same code on an NVIDIA GPU.

CuPy 14 follows NumPy 2's API (and so the Array API) in its main namespace, so `xp = cupy` runs the model code
unchanged. Arrays live in GPU memory: `asarray` copies host data to the device, `to_numpy` copies it back, and
`synchronize` waits for the queued kernels (GPU work is asynchronous, so timings need it). Loading checks, in
order, that CuPy is installed, that it is 14 or newer, and that a CUDA device is usable, and says which failed.
"""
from __future__ import annotations

import numpy as np

from backends.base import Backend, BackendUnavailableError

MIN_CUPY_MAJOR = 14


class CupyBackend(Backend):
    name = "cupy"

    def to_numpy(self, array) -> np.ndarray:
        self.check_owned(array)
        return self.xp.asnumpy(array)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"cupy: CuPy {self.xp.__version__} on {name}"


def load() -> CupyBackend:
    try:
        import cupy
    except ImportError:
        raise BackendUnavailableError(
            "the cupy backend needs CuPy >= 14, which is not installed "
            "(pip install 'cupy-cuda12x>=14', or the gpu extra: pip install '.[gpu]' in a checkout)"
        ) from None
    except Exception as error:  # a broken install (missing CUDA libraries) fails inside CuPy's import
        raise BackendUnavailableError(f"the cupy backend could not import CuPy: {error}") from None
    major = int(cupy.__version__.split(".")[0])
    if major < MIN_CUPY_MAJOR:
        raise BackendUnavailableError(
            f"the cupy backend needs CuPy >= {MIN_CUPY_MAJOR} (NumPy 2 semantics); found CuPy {cupy.__version__}"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError when there is no driver, no device, or no runtime library
        raise BackendUnavailableError(f"the cupy backend found no usable CUDA device: {error}") from None
    if count == 0:
        raise BackendUnavailableError("the cupy backend found no CUDA device (CuPy is installed, but no GPU is visible)")
    return CupyBackend(cupy)
