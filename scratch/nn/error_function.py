"""The error function erf and its complement erfc, elementwise, to float32 accuracy: exact GELU needs them, and
NumPy and the Array API have neither.

Two pieces, each accurate to about one float32 ulp:
- |x| < 0.5: the Maclaurin series erf(x) = 2/sqrt(pi) sum_n (-1)^n x^(2n+1) / (n! (2n+1)) (Abramowitz & Stegun
  7.1.5), 8 terms; it keeps full RELATIVE accuracy near 0, where erf is tiny and 1 - erfc(x) would lose it.
- z >= 0: erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), P the degree-9 Chebyshev fit of Numerical Recipes'
  `erfcc`, whose fractional error is below 1.2e-7 for every z >= 0; negative arguments by erfc(-z) = 2 - erfc(z).
Not here: float64 accuracy (float64 inputs get the same float32-accurate approximation), complex arguments.
"""
from __future__ import annotations

import math

import backends
from scratch.nn.precision import cast_to, upcast_half

__all__ = ["erf", "erfc"]


def erf(x):
    """The error function, elementwise, to about 1e-7 relative: the series near 0, 1 - erfc(|x|) (with x's sign)
    beyond. Half inputs are computed in float32 and cast back."""
    xp = backends.namespace_of(x)
    x, dtype = upcast_half(xp, x)
    erfc_abs = _erfc_nonnegative_in_place(xp, xp.abs(x))
    tail = xp.where(x < 0.0, erfc_abs - 1.0, 1.0 - erfc_abs)
    return cast_to(xp, xp.where(xp.abs(x) < 0.5, _erf_series(xp, x), tail), dtype)


def erfc(x):
    """1 - erf(x), elementwise, with a RELATIVE error everywhere -- below 5e-7 (1 + x^2): the fit's 1.2e-7 plus
    float32's rounding of the exponent -x^2 + P(t). No cancellation in the tail where erfc is tiny (x >> 0), which
    is what GELU's negative side, 0.5 x erfc(-x / sqrt(2)), needs."""
    xp = backends.namespace_of(x)
    x, dtype = upcast_half(xp, x)
    erfc_abs = _erfc_nonnegative_in_place(xp, xp.abs(x))
    return cast_to(xp, xp.where(x < 0.0, 2.0 - erfc_abs, erfc_abs), dtype)


_ERF_SERIES = tuple(2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(8))
_ERFC_CHEBYSHEV = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                   0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _erf_series(xp, x):
    """erf(x) by the Maclaurin series, for |x| < 0.5 (x is clipped there, so any input is safe)."""
    small = xp.clip(x, -0.5, 0.5)
    small_squared = small * small
    series = _ERF_SERIES[-1]
    for coefficient in reversed(_ERF_SERIES[:-1]):     # Horner's rule in x^2
        series = series * small_squared + coefficient
    return series * small


def _erfc_nonnegative(xp, z):
    """erfc(z) for z >= 0 by the Chebyshev fit, t exp(P(t) - z^2) (z is clipped to [0, 10]: erf(10) == 1 in float32
    and float64, and the clip keeps exp from underflowing). The plain version: the oracle of the fast path below."""
    z = xp.clip(z, 0.0, 10.0)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = _ERFC_CHEBYSHEV[-1]
    for coefficient in reversed(_ERFC_CHEBYSHEV[:-1]):  # Horner's rule in t
        poly = poly * t + coefficient
    return t * xp.exp(poly - z * z)


# --- fast path -------------------------------------------------------------------------------------------------

def _erfc_nonnegative_in_place(xp, z):
    """`_erfc_nonnegative` with the same operations in the same order (bit-identical, property-tested), each written
    into one of two buffers instead of a fresh array: on a (B*T, 4C) GELU activation the plain loop allocates ~20
    temporaries of that size. What it buys end to end is measured by bench/bench_nn.py (about 5% of a BERT-base
    forward); erf and erfc use it."""
    z = xp.clip(z, 0.0, 10.0)                           # a fresh buffer: squared in place below
    t = 1.0 / (1.0 + 0.5 * z)
    poly = t * _ERFC_CHEBYSHEV[-1]                      # C9 t, then (C9 t + C8) t, ... as the plain loop
    for coefficient in reversed(_ERFC_CHEBYSHEV[1:-1]):
        poly += coefficient
        poly *= t
    poly += _ERFC_CHEBYSHEV[0]
    z *= z
    poly -= z                                           # P(t) - z^2
    erfc = xp.exp(poly)
    erfc *= t
    return erfc

