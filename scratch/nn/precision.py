"""The one precision rule of the layers: half-precision inputs are computed in float32 and the result is cast back.

float16 has a 10-bit mantissa and overflows at 65504, so sums of squares, exponentials and long reductions lose
most of their digits or overflow in it; softmax, the norms, the activations and erf therefore upcast, compute, and
round once at the end (as PyTorch's CPU kernels do). float32 and float64 inputs are computed as they are.
The Array API standard has no float16, so on array-api-strict this rule never applies.
"""
from __future__ import annotations

__all__ = ["upcast_half", "cast_to"]


def upcast_half(xp, x):
    """(x in float32 if it is float16, else x itself; x's own dtype, for cast_to at the end)."""
    half = getattr(xp, "float16", None)                 # None on array-api-strict
    if half is not None and x.dtype == half:
        return xp.astype(x, xp.float32), x.dtype
    return x, x.dtype


def cast_to(xp, x, dtype):
    """x as `dtype`, without a copy when it already is."""
    return x if x.dtype == dtype else xp.astype(x, dtype)
