"""Checkpoint tensors into model arrays, for every model: a dtype check, a lookup that names the wrong tensor, and one
copy into memory the model owns on its backend.

Host side only (NumPy and file-backed arrays in, backend arrays out); what the tensors mean and how they are fused
or transposed is each model's business. Not here: reading files (`safetensors`, `gguf`), random initialisation.
"""
from __future__ import annotations

import numpy as np

import backends

__all__ = ["FLOAT_DTYPES", "check_dtype", "WeightReader", "put"]

FLOAT_DTYPES = ("float16", "float32", "float64")


def check_dtype(backend: backends.Backend, dtype) -> str:
    """A floating dtype name the backend has (strict has no float16); None means float32."""
    dtype = "float32" if dtype is None else dtype
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"a model runs in a floating dtype ({', '.join(FLOAT_DTYPES)}), got {dtype!r}")
    backend.dtype(dtype)
    return dtype


class WeightReader:
    """Looks up Hugging Face tensors by name, checks shape and dtype, and says which tensor is wrong.

    Each of `prefixes` is tried in order (e.g. "transformer." for GPT2LMHeadModel, then "" for GPT2Model).
    """

    def __init__(self, weights: dict[str, np.ndarray], prefixes: tuple[str, ...], what: str):
        self.weights, self.prefixes, self.what = weights, prefixes, what

    def __contains__(self, name: str) -> bool:
        return any(prefix + name in self.weights for prefix in self.prefixes)

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        for prefix in self.prefixes:
            if prefix + name in self.weights:
                array = self.weights[prefix + name]
                break
        else:
            tried = " or ".join(repr(prefix + name) for prefix in self.prefixes)
            raise ValueError(f"missing tensor {tried} in the {self.what} checkpoint "
                             f"({len(self.weights)} tensors present)")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"tensor {prefix + name!r} has shape {tuple(array.shape)}, expected {tuple(shape)} "
                             f"for the {self.what} config")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"tensor {prefix + name!r} has dtype {array.dtype}, expected a float")
        return array


def put(backend: backends.Backend, host: np.ndarray, dtype: str):
    """A host array moved to the backend as a C-contiguous array of `dtype`, in memory the model owns.

    subtle: the safetensors reader returns memory-mapped views; np.ascontiguousarray would hand those through
    unchanged, leaving the model's weights backed by the file (first use pays the page faults, and a rewritten
    file would change the model). Any view is copied once, here; an array made at load (a concatenation, a fresh
    random draw) is already owned and is kept as it is.
    """
    owned = host.flags.owndata and host.flags.c_contiguous and not isinstance(host, np.memmap)
    return backend.asarray(host if owned else np.array(host, order="C"), dtype=dtype)
