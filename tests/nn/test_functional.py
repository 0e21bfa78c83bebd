"""scratch.nn.functional against PyTorch (CPU) on random inputs, on every backend: values, shapes and dtypes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st

import backends
from scratch.nn import functional as F
from scratch.nn.error_function import erf, erfc

# float32 tolerance for a few dozen accumulated roundings (matmuls over C <= 64, reductions, exp/tanh).
RTOL, ATOL = 1e-5, 1e-5


def host(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def check(backend, out, expected, shape, rtol=RTOL, atol=ATOL, dtype="float32"):
    assert backends.of(out) is backend, "output must stay on the input's backend"
    assert out.dtype == backend.dtype(dtype)
    assert tuple(out.shape) == tuple(shape)
    np.testing.assert_allclose(backend.to_numpy(out), np.asarray(expected), rtol=rtol, atol=atol)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def test_linear_matches_torch(backend):
    rng = backends.rng(0)
    x, w, b = host(rng, 2, 5, 8), host(rng, 8, 6), host(rng, 6)
    expected = TF.linear(t(x), t(w.T), t(b)).numpy()              # torch stores (out, in); ours is (in, out)
    X, W, Bv = (backend.asarray(a) for a in (x, w, b))
    check(backend, F.linear(X, W, Bv), expected, (2, 5, 6))
    check(backend, F.linear(X, W), TF.linear(t(x), t(w.T)).numpy(), (2, 5, 6))


def test_linear_rejects_torch_layout(backend):
    x = backend.asarray(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match=r"C_in, C_out"):
        F.linear(x, backend.asarray(np.zeros((6, 8), np.float32)))


def test_embedding_matches_torch(backend):
    rng = backends.rng(1)
    table = host(rng, 11, 4)
    ids = rng.integers(0, 11, size=(3, 7)).astype(np.int64)
    out = F.embedding(backend.asarray(ids), backend.asarray(table))
    check(backend, out, TF.embedding(t(ids), t(table)).numpy(), (3, 7, 4))
    # the same lookup from the (C, V) layout a tied output head is stored in: columns instead of rows
    columns = F.embedding(backend.asarray(ids), backend.asarray(np.ascontiguousarray(table.T)), token_axis=1)
    check(backend, columns, TF.embedding(t(ids), t(table)).numpy(), (3, 7, 4), rtol=0, atol=0)


def test_embedding_rejects_an_unknown_token_axis():
    for bad in (2, True):
        with pytest.raises(ValueError, match=f"token_axis must be 0 .* got {bad!r}"):
            F.embedding(np.zeros((1, 2), np.int64), np.zeros((4, 3), np.float32), token_axis=bad)


def test_column_lookup_is_row_major():
    """The (C, V) lookup hands on a row-major array: a strided one would be summed in another order downstream."""
    table = np.arange(12, dtype=np.float32).reshape(3, 4)             # (C, V) = (3, 4)
    out = F.embedding(np.array([[2, 0]]), table, token_axis=1)
    assert out.flags.c_contiguous and out.tolist() == [[[2.0, 6.0, 10.0], [0.0, 4.0, 8.0]]]


def test_linear_bias_of_another_dtype_or_shape_still_promotes_and_broadcasts():
    x, w = np.ones((2, 3), np.float16), np.ones((3, 4), np.float16)
    assert F.linear(x, w, np.ones(4, np.float32)).dtype == np.float32           # as x @ w + b would
    assert F.linear(x[0], w, np.ones((2, 4), np.float16)).shape == (2, 4)       # a wider bias broadcasts
    y = F.linear(x, w, np.ones(4, np.float16))
    assert y.dtype == np.float16 and (y == 4.0).all()


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 3), st.integers(1, 5), st.integers(1, 9), st.booleans())
def test_linear_equals_the_plain_formula(seed, batch_dims, rows, c_out, with_bias):
    """linear's speed-up (one (B*T, C) BLAS product instead of B batched ones) computes x @ w + b: the plain formula,
    to float32 rounding (the BLAS may block the sums apart)."""
    rng = np.random.default_rng(seed)
    x = host(rng, *([2] * (batch_dims - 1)), rows, 7)
    w, b = host(rng, 7, c_out), host(rng, c_out) if with_bias else None
    plain = np.matmul(x, w) + (b if with_bias else 0.0)
    out = F.linear(x, w, b)
    assert out.dtype == np.float32 and out.shape == plain.shape
    np.testing.assert_allclose(out, plain, rtol=1e-6, atol=1e-6)


def test_layer_norm_names_a_wrong_parameter_shape():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"layer_norm: bias must be \(C,\) = \(4,\), got \(1, 4\)"):
        F.layer_norm(x, np.ones(4, np.float32), np.zeros((1, 4), np.float32))


# Input scales for the norms: ordinary activations (variance ~9, offset 5), and rows whose variance is comparable to
# eps (~1e-5 and ~1e-6): only there does where eps goes (inside the square root, or added after it) show.
NORM_SCALES = [(3.0, 5.0), (3e-3, 0.0), (1e-3, 1e-2)]


@pytest.mark.parametrize("scale, offset", NORM_SCALES)
def test_layer_norm_matches_torch(backend, scale, offset):
    rng = backends.rng(2)
    x, w, b = host(rng, 2, 3, 16, scale=scale) + np.float32(offset), host(rng, 16), host(rng, 16)
    for eps in (1e-5, 1e-12):                                      # GPT-2's and BERT's eps
        expected = TF.layer_norm(t(x), (16,), t(w), t(b), eps).numpy()
        out = F.layer_norm(backend.asarray(x), backend.asarray(w), backend.asarray(b), eps)
        check(backend, out, expected, x.shape)


@pytest.mark.parametrize("scale", [2.0, 1e-3, 3e-4])
def test_rms_norm_matches_transformers(backend, scale):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    rng = backends.rng(3)
    x, w = host(rng, 2, 5, 32, scale=scale), host(rng, 32)
    ref = LlamaRMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(t(w))
        expected = ref(t(x)).numpy()
    check(backend, F.rms_norm(backend.asarray(x), backend.asarray(w), 1e-6), expected, x.shape)


def test_rms_norm_float16_casts_before_weight():
    """HF casts the normalised x back to float16 before multiplying by the weight: we must round at the same spot."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    rng = backends.rng(4)
    x, w = host(rng, 3, 64, scale=4.0).astype(np.float16), host(rng, 64).astype(np.float16)
    ref = LlamaRMSNorm(64, eps=1e-5).half()
    with torch.no_grad():
        ref.weight.copy_(t(w))
        expected = ref(t(x)).numpy()
    out = F.rms_norm(x, w, 1e-5)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_half_inputs_keep_dtype_and_match_float32():
    rng = backends.rng(5)
    x = host(rng, 4, 33, scale=4.0).astype(np.float16)
    w, b = host(rng, 33).astype(np.float16), host(rng, 33).astype(np.float16)
    x32, w32, b32 = x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
    pairs = [
        (F.softmax(x), F.softmax(x32)),
        (F.layer_norm(x, w, b, 1e-5), F.layer_norm(x32, w32, b32, 1e-5)),
        (F.gelu(x), F.gelu(x32)), (F.gelu_tanh(x), F.gelu_tanh(x32)), (F.silu(x), F.silu(x32)),
        (erf(x), erf(x32)), (erfc(x), erfc(x32)), (F.log_softmax(x), F.log_softmax(x32)),
    ]
    for half, single in pairs:
        assert half.dtype == np.float16
        # computed in float32 and rounded once: within half an fp16 ulp (2^-11 relative) of the float32 result
        np.testing.assert_allclose(half.astype(np.float32), single, rtol=2 ** -10, atol=1e-4)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu"])
def test_activations_match_torch(backend, name):
    x = np.concatenate([np.linspace(-20, 20, 4001), [-100.0, 100.0, -1e4, 1e4]]).astype(np.float32)
    reference = {"gelu": lambda a: TF.gelu(a), "gelu_tanh": lambda a: TF.gelu(a, approximate="tanh"),
                 "silu": TF.silu}[name]
    expected = reference(t(x)).numpy()
    out = getattr(F, name)(backend.asarray(x))
    # atol 2e-6: torch's own exact GELU cancels 1 + erf(x) in the negative tail (our tail is more accurate)
    check(backend, out, expected, x.shape, rtol=2e-6, atol=2e-6)
    assert not np.any(np.isnan(backend.to_numpy(out)))


def test_gelu_negative_tail_keeps_relative_accuracy():
    x = np.array([-3.0, -5.0, -8.0], dtype=np.float32)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in x.astype(np.float64)])
    np.testing.assert_allclose(F.gelu(x), exact, rtol=2e-5)


def test_softmax_matches_torch_and_masked_rows_are_zero(backend):
    rng = backends.rng(6)
    x = host(rng, 3, 4, 9, scale=10.0)
    x[0, 1, :] = -np.inf                               # a fully masked row
    x[1, 2, :4] = -np.inf                              # a partly masked row
    x[2, 0, 3] = 100.0                                 # exp(100) overflows float32 (max ~3.4e38 = exp(88.7))
    expected = TF.softmax(t(x), dim=-1).numpy()
    expected[0, 1, :] = 0.0                            # torch gives NaN there; we promise zeros
    for axis in (-1, 1):
        out = F.softmax(backend.asarray(x), axis=axis)
        ref = expected if axis == -1 else np.nan_to_num(TF.softmax(t(x), dim=axis).numpy(), nan=0.0)
        check(backend, out, ref, x.shape, rtol=1e-6, atol=1e-7)


def _has_no_float16(backend) -> bool:
    """True for array-api-strict, whose standard has no float16 -- after checking that it says so clearly."""
    if backend.name != "strict":
        return False
    with pytest.raises(TypeError, match="no float16"):
        backend.dtype("float16")
    return True


def test_softmax_float16_where_the_backend_has_it(backend):
    if _has_no_float16(backend):
        return
    x = host(backends.rng(16), 3, 5, 40, scale=6.0).astype(np.float16)
    x[0, 0, :] = -np.inf
    x[1, 1, :7] = -np.inf
    expected = np.nan_to_num(TF.softmax(t(x).float(), dim=-1).numpy(), nan=0.0)   # computed in float32, as ours
    out = F.softmax(backend.asarray(x))
    # computed in float32 and rounded once: within half a float16 ulp (2^-11 relative) of the float32 result
    check(backend, out, expected, x.shape, rtol=2 ** -11, atol=1e-7, dtype="float16")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_log_softmax_matches_torch(backend, dtype):
    if dtype == "float16" and _has_no_float16(backend):
        return
    x = host(backends.rng(17), 3, 4, 9, scale=10.0)
    x[1, 2, :4] = -np.inf                              # partly masked: those entries stay -inf
    x[2, 0, 3] = 100.0                                 # exp(100) overflows float32 (max ~3.4e38 = exp(88.7))
    x = x.astype(dtype)
    for axis in (-1, 1):
        expected = TF.log_softmax(t(x).float(), dim=axis).numpy()      # float16 is computed in float32, as ours
        out = F.log_softmax(backend.asarray(x), axis=axis)
        # float16: the result is rounded once, half an ulp (2^-11) relative; float32: a few roundings
        rtol, atol = (2 ** -11, 1e-6) if dtype == "float16" else (1e-6, 1e-6)
        check(backend, out, expected, x.shape, rtol=rtol, atol=atol, dtype=dtype)
    all_masked = backend.asarray(np.full((1, 3), -np.inf, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):           # log(0) and -inf - -inf: the NaN we promise
        assert np.isnan(backend.to_numpy(F.log_softmax(all_masked))).all()   # as torch: no distribution


def test_log_softmax_is_the_log_of_softmax(backend):
    x = host(backends.rng(18), 4, 33, scale=5.0)
    logp, p = F.log_softmax(backend.asarray(x)), F.softmax(backend.asarray(x))
    np.testing.assert_allclose(np.exp(backend.to_numpy(logp)), backend.to_numpy(p), rtol=1e-5, atol=1e-7)


def test_activation_table_names_the_functions():
    assert F.activation("gelu") is F.gelu                          # exact erf GELU (BERT)
    assert F.activation("gelu_new") is F.activation("gelu_pytorch_tanh") is F.gelu_tanh   # GPT-2's tanh form
    assert F.activation("silu") is F.silu and F.activation("relu") is F.relu
    assert set(F.ACTIVATIONS) == {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu"}
    with pytest.raises(ValueError, match="unknown activation 'erf'; known: gelu, gelu_new"):
        F.activation("erf")


def test_relu_matches_torch(backend):
    x = host(backends.rng(19), 5, 7)
    check(backend, F.relu(backend.asarray(x)), TF.relu(t(x)).numpy(), x.shape, rtol=0, atol=0)


# The two feed-forward blocks, composed here from the layers exactly as the models compose them.
def mlp_gelu(x, w_fc, b_fc, w_proj, b_proj, act):
    """GPT-2 / BERT: proj(act(fc(x))). x (..., C), w_fc (C, F), w_proj (F, C) -> (..., C)."""
    return F.linear(act(F.linear(x, w_fc, b_fc)), w_proj, b_proj)


def mlp_swiglu(x, w_gate, w_up, w_down):
    """Llama: down(silu(gate(x)) * up(x)), no biases. x (..., C), w_gate and w_up (C, F), w_down (F, C)."""
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def test_mlp_gelu_matches_torch(backend):
    rng = backends.rng(7)
    x = host(rng, 2, 3, 8)
    w_fc, b_fc, w_proj, b_proj = host(rng, 8, 32), host(rng, 32), host(rng, 32, 8), host(rng, 8)
    args = [backend.asarray(a) for a in (x, w_fc, b_fc, w_proj, b_proj)]
    for approximate, name in (("tanh", "gelu_new"), ("none", "gelu")):
        hidden = TF.gelu(t(x) @ t(w_fc) + t(b_fc), approximate=approximate)
        expected = (hidden @ t(w_proj) + t(b_proj)).numpy()
        check(backend, mlp_gelu(*args, F.activation(name)), expected, (2, 3, 8))


def test_mlp_swiglu_matches_transformers(backend):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    rng = backends.rng(8)
    C, Fw = 16, 40
    x, w_gate, w_up, w_down = host(rng, 2, 3, C), host(rng, C, Fw), host(rng, C, Fw), host(rng, Fw, C)
    mlp = LlamaMLP(LlamaConfig(hidden_size=C, intermediate_size=Fw, hidden_act="silu",
                                  num_attention_heads=2, num_key_value_heads=2))
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(t(w_gate.T))       # torch (out, in) <- ours (in, out)
        mlp.up_proj.weight.copy_(t(w_up.T))
        mlp.down_proj.weight.copy_(t(w_down.T))
        expected = mlp(t(x)).numpy()
    out = mlp_swiglu(*(backend.asarray(a) for a in (x, w_gate, w_up, w_down)))
    # outputs reach ~300 as sums of 40 products of that size: float32's error is absolute at that scale (~1e-4)
    check(backend, out, expected, (2, 3, C), rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 40), st.sampled_from([5.0, 1e-2, 3e-3, 1e-3]))
def test_layer_norm_output_is_normalised(seed, C, scale):
    """With unit weight and zero bias each row has mean 0 and variance var/(var+eps) -- a property, any input; at the
    small scales var is near eps = 1e-5, where var/(var+eps) is far from 1."""
    x = host(np.random.default_rng(seed), 3, C, scale=scale)
    y = F.layer_norm(x, np.ones(C, np.float32), np.zeros(C, np.float32), 1e-5)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-5)
    var = x.astype(np.float64).var(axis=-1)
    np.testing.assert_allclose(y.astype(np.float64).var(axis=-1), var / (var + 1e-5), rtol=1e-4, atol=1e-6)


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 40), st.sampled_from([2.0, 1e-2, 1e-3, 3e-4]))
def test_rms_norm_output_has_the_expected_mean_square(seed, C, scale):
    """With unit weight each row's mean square is ms/(ms+eps), ms its input's mean square; near eps = 1e-6 (the
    small scales) that is far from 1."""
    x = host(np.random.default_rng(seed), 3, C, scale=scale)
    y = F.rms_norm(x, np.ones(C, np.float32), 1e-6)
    assert y.dtype == np.float32
    mean_square = (x.astype(np.float64) ** 2).mean(axis=-1)
    np.testing.assert_allclose((y.astype(np.float64) ** 2).mean(axis=-1), mean_square / (mean_square + 1e-6),
                               rtol=1e-5, atol=1e-7)
