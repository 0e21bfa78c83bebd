"""scratch.nn.error_function: erf and erfc against math.erf/erfc (body, tails, relative accuracy near 0 and in erfc's
tail), on every backend; the in-place Chebyshev evaluation equals the plain one bit for bit."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import backends
from scratch.nn import error_function
from scratch.nn.error_function import erf, erfc


def test_erf_matches_math_erf_including_tails(backend):
    # dense over the body, geometric near zero (relative accuracy there), and deep tails where erf == +-1
    grid = np.concatenate([np.linspace(-9.0, 9.0, 20001), np.geomspace(1e-30, 1.0, 400),
                           -np.geomspace(1e-30, 1.0, 400), [0.0, -0.0, 20.0, -50.0, 1e30, -1e30]])
    x = grid.astype(np.float32)
    expected = np.array([math.erf(float(v)) for v in x])
    out = erf(backend.asarray(x))
    assert out.dtype == backend.xp.float32 and tuple(out.shape) == x.shape
    got = backend.to_numpy(out).astype(np.float64)
    # a few float32 ulps: 4e-7 relative everywhere (the two-piece approximation is ~1 ulp, rounding adds the rest)
    np.testing.assert_allclose(got, expected, rtol=4e-7, atol=1e-37)
    assert np.all(np.abs(got) <= 1.0)


def test_erf_propagates_nan_and_saturates_inf():
    out = erf(np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    assert np.isnan(out[0]) and out[1] == 1.0 and out[2] == -1.0
    out = erfc(np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    # erfc(+inf) is erfc(10) ~ 2e-45 (the argument is clipped at 10), zero to float32's last subnormal
    assert np.isnan(out[0]) and 0.0 <= out[1] < 1e-44 and out[2] == 2.0


def test_erfc_keeps_relative_accuracy_in_its_tail(backend):
    """erfc is what exact GELU is built on: its error must be FRACTIONAL, also where erfc(x) is tiny (x >> 0)."""
    grid = np.concatenate([np.linspace(-9.0, 9.0, 20001), np.geomspace(1e-30, 1.0, 400), [0.0, 50.0, -50.0]])
    x = grid.astype(np.float32)
    expected = np.array([math.erfc(float(v)) for v in x])
    out = erfc(backend.asarray(x))
    assert out.dtype == backend.xp.float32 and tuple(out.shape) == x.shape
    got = backend.to_numpy(out).astype(np.float64)
    # relative, down to erfc(9) ~ 4e-37: the fit's 1.2e-7 plus float32's rounding of the exponent -x^2 + P(t), which
    # grows as x^2 (1e-5 at x = 9); the clipped tail (x = 50 -> erfc(10) ~ 2e-45) is zero to the last subnormal
    bound = 5e-7 * (1.0 + x.astype(np.float64) ** 2) * expected + 1e-44
    assert np.all(np.abs(got - expected) <= bound), np.max(np.abs(got - expected) / bound)





@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.floats(0.0, 30.0, width=32)),
       st.sampled_from(["numpy", "strict"]))
def test_in_place_chebyshev_equals_the_plain_one(z, name):
    """The fast path erf/erfc use is the plain Horner loop with its buffers reused: the same bits, input untouched."""
    be = backends.get(name)
    z_backend = be.asarray(z)
    plain = be.to_numpy(error_function._erfc_nonnegative(be.xp, z_backend))
    fast = be.to_numpy(error_function._erfc_nonnegative_in_place(be.xp, z_backend))
    np.testing.assert_array_equal(fast, plain)
    np.testing.assert_array_equal(be.to_numpy(z_backend), z)       # the caller's array is not written
