"""Tests of the backend interface itself, written once and run on every backend (the pattern every test follows)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import backends


def test_available_always_has_the_cpu_backends():
    names = backends.available()
    assert "numpy" in names and "strict" in names
    assert set(names) <= set(backends.NAMES)


def test_get_returns_the_same_backend_object():
    assert backends.get("numpy") is backends.get("numpy")
    be = backends.get("strict")
    assert backends.get(be) is be
    assert backends.get(" NumPy ").name == "numpy"


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "float16", "uint8"])
def test_round_trip_preserves_values_and_dtype(backend, dtype):
    if backend.name == "strict" and dtype == "float16":
        with pytest.raises(TypeError, match="no float16"):
            backend.dtype(dtype)
        return  # the standard has no float16: the clear error above is the whole behaviour
    host = (np.arange(12).reshape(3, 4) % 7).astype(dtype)
    arr = backend.asarray(host)
    assert backends.of(arr) is backend
    assert arr.dtype == backend.dtype(dtype)
    back = backend.to_numpy(arr)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host)


@given(hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
def test_round_trip_property(host):
    for name in backends.available():
        be = backends.get(name)
        back = be.to_numpy(be.asarray(host))
        assert back.dtype == host.dtype and back.shape == host.shape
        np.testing.assert_array_equal(back, host)


def test_asarray_casts_to_a_named_dtype(backend):
    arr = backend.asarray([1, 2, 3], dtype="float32")
    assert arr.dtype == backend.xp.float32
    np.testing.assert_array_equal(backend.to_numpy(arr), np.array([1, 2, 3], np.float32))


def test_unknown_dtype_name_is_a_clear_error(backend):
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        backend.asarray([1.0], dtype="float33")


def test_the_same_code_path_computes_the_same_values(backend):
    xp = backend.xp
    host = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    x = backend.asarray(host)
    # a max-subtracted softmax written only with Array API operations
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    p = e / xp.sum(e, axis=-1, keepdims=True)
    assert p.dtype == xp.float32 and p.shape == (2, 3, 4)
    ref = np.exp(host - host.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(backend.to_numpy(p), ref, rtol=1e-6)


def test_same_seed_gives_the_same_random_draws_on_every_backend():
    draws = {}
    for name in backends.available():
        be = backends.get(name)
        uniform = be.to_numpy(be.random_uniform(backends.rng(1234), (7,)))
        assert uniform.dtype == np.float32 and np.all((0.0 <= uniform) & (uniform < 1.0))
        draws[name] = uniform
    reference = draws.pop("numpy")
    for name, uniform in draws.items():
        np.testing.assert_array_equal(uniform, reference, err_msg=name)


def test_different_seeds_give_different_draws():
    be = backends.get("numpy")
    a = be.random_uniform(backends.rng(1), (4,))
    b = be.random_uniform(backends.rng(2), (4,))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("bad_seed", [-1, 1.5, "7", True])
def test_bad_seed_is_rejected(bad_seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        backends.rng(bad_seed)


# --- errors -----------------------------------------------------------------------------------------------------

def test_unknown_backend_name_is_a_clear_error():
    with pytest.raises(backends.UnknownBackendError, match=r"unknown backend 'tensorflow'.*numpy, strict, cupy"):
        backends.get("tensorflow")
    assert issubclass(backends.UnknownBackendError, ValueError)


def test_backend_name_must_be_a_string():
    with pytest.raises(backends.UnknownBackendError, match="by name"):
        backends.get(3)


def test_env_var_chooses_the_default(monkeypatch):
    monkeypatch.setenv("SCRATCH_BACKEND", "strict")
    assert backends.get().name == "strict"
    monkeypatch.setenv("SCRATCH_BACKEND", "jax")
    with pytest.raises(backends.UnknownBackendError, match=r"'jax' \(from \$SCRATCH_BACKEND\)"):
        backends.get()
    monkeypatch.delenv("SCRATCH_BACKEND")
    assert backends.get().name == "numpy"


def test_unavailable_backend_says_what_is_missing():
    if "cupy" in backends.available():
        pytest.skip("a GPU is usable here, so the cupy backend is available")
    with pytest.raises(backends.BackendUnavailableError, match="cupy backend") as info:
        backends.get("cupy")
    assert any(word in str(info.value) for word in ("not installed", "CuPy >=", "no usable CUDA", "no CUDA device"))
    assert backends.unavailable_reason("cupy") == str(info.value)


def test_auto_falls_back_to_numpy_without_a_gpu():
    expected = "cupy" if "cupy" in backends.available() else "numpy"
    assert backends.get("auto").name == expected


def test_missing_cupy_and_old_cupy_are_reported(monkeypatch):
    import sys
    import types

    from backends import cupy_backend

    monkeypatch.setitem(sys.modules, "cupy", None)  # None in sys.modules makes `import cupy` raise ImportError
    with pytest.raises(backends.BackendUnavailableError, match="not installed"):
        cupy_backend.load()
    fake = types.ModuleType("cupy")
    fake.__version__ = "13.3.0"
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(backends.BackendUnavailableError, match=r"CuPy >= 14.*found CuPy 13.3.0"):
        cupy_backend.load()

    class NoDevice:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake.__version__ = "14.0.0"
    fake.cuda = types.SimpleNamespace(runtime=NoDevice)
    with pytest.raises(backends.BackendUnavailableError, match="no usable CUDA device: cudaErrorNoDevice"):
        cupy_backend.load()


def test_mixing_backends_is_a_clear_error():
    numpy_be, strict_be = backends.get("numpy"), backends.get("strict")
    a = numpy_be.asarray([1.0, 2.0])
    b = strict_be.asarray([1.0, 2.0])
    with pytest.raises(backends.MixedBackendError, match="argument 0 is numpy, argument 1 is strict"):
        backends.namespace_of(a, b)
    with pytest.raises(backends.MixedBackendError, match="argument 1 is a numpy array, but this computation runs on "
                                                         "the strict backend"):
        strict_be.check_owned(b, a)
    with pytest.raises(backends.MixedBackendError, match="argument 0 is a numpy array, but .* strict backend"):
        strict_be.to_numpy(a)
    with pytest.raises(backends.MixedBackendError, match="argument 0 is a float, but .* strict backend"):
        strict_be.to_numpy(1.0)
    with pytest.raises(backends.MixedBackendError, match="takes host"):
        numpy_be.asarray(b)
    # and array-api-strict itself refuses a NumPy array inside an operation: no silent host/device mixing
    with pytest.raises(TypeError):
        b + a


def test_namespace_of_finds_the_namespace_from_inputs(backend):
    x = backend.asarray([1.0])
    assert backends.namespace_of(x, 2.0) is backend.xp
    assert backends.namespace_of(None, x, None) is backend.xp     # None: an absent optional argument (a bias)
    assert backends.of(x) is backend
    backend.check_owned(x, x)                                     # raises only for a foreign argument
    assert backends.namespace_of(1.0).__name__ == "numpy"  # scalars alone: the host reference
    assert backends.namespace_of().__name__ == "numpy"


def test_synchronize_is_safe_to_call_and_the_work_is_done(backend):
    x = backend.xp.ones((64, 64), dtype=backend.xp.float32)
    y = x @ x                                                     # queued work on a GPU
    assert backend.synchronize() is None
    assert backend.to_numpy(y).tolist() == np.full((64, 64), 64.0, np.float32).tolist()


def test_foreign_objects_are_rejected():
    with pytest.raises(backends.MixedBackendError, match="expected an array from a known backend"):
        backends.namespace_of(object())
