"""The NumPy backend: the reference. NumPy 2's main namespace implements the Array API, so `xp = numpy`.

Everything runs on the host; `to_numpy` is free and `synchronize` does nothing. This is the backend the tests treat
as truth for the other two.
"""
from __future__ import annotations

import numpy as np

from backends.base import Backend


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self):
        super().__init__(np)

    def describe(self) -> str:
        return f"numpy: NumPy {np.__version__} (host)"


def load() -> NumpyBackend:
    return NumpyBackend()
