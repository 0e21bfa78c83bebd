"""scratch.train.layers: every backward pass against central finite differences (float64, hypothesis-chosen shapes,
numpy and strict) and against torch autograd (float64 to 1e-10, float32 to 1e-5); forwards equal scratch.nn's;
the scatter-add paths agree with a loop; cross-entropy's ignore_index and edge cases follow torch."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backends
from scratch import nn
from scratch import train
from scratch.train import layers

# The backend fixture is stateless, so reusing it across hypothesis examples is safe.
FD_SETTINGS = settings(max_examples=8, deadline=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- the cases: one forward/backward pair, its inputs, and the same function in torch ---------------------------

@dataclass
class Case:
    forward: Callable            # forward(*inputs) -> (out, cache)
    backward: Callable           # backward(dout, cache) -> grads (a tuple, or one array)
    inputs: list                 # host arrays: float64 values, int ids/targets, bool masks, cos/sin tables
    grad_of: list                # grads[i] differentiates inputs[grad_of[i]]
    torch_fn: Callable           # the same forward on torch tensors
    fd_rtol: float = 1e-6        # directional finite differences, relative to |grad| |direction|
    torch_rtol: float = 1e-10    # float64 against torch autograd, relative to the largest torch value
    constants: list = field(default_factory=list)   # float inputs that are not differentiated (cos, sin)


def normal(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def embedding_case(rng, B, T, n, token_axis):
    V, C = n + 1, 3                                               # V small: B*T ids repeat many times
    ids = rng.integers(0, V, (B, T))
    table = normal(rng, V, C) if token_axis == 0 else normal(rng, C, V)
    torch_fn = ((lambda i, w: TF.embedding(i, w)) if token_axis == 0 else (lambda i, w: TF.embedding(i, w.T)))
    return Case(lambda i, w: train.embedding_forward(i, w, token_axis=token_axis), train.embedding_backward,
                [ids, table], [1], torch_fn)


def linear_case(rng, B, T, n, bias=True):
    x, w, b = normal(rng, B, T, n), normal(rng, n, n + 2), normal(rng, n + 2)
    if not bias:
        return Case(lambda x, w: train.linear_forward(x, w), lambda d, c: train.linear_backward(d, c)[:2],
                    [x, w], [0, 1], lambda x, w: x @ w)
    return Case(train.linear_forward, train.linear_backward, [x, w, b], [0, 1, 2], lambda x, w, b: x @ w + b)


def spread_rows(x, spread):
    """Rows rescaled to a given standard deviation: a nearly constant row (std ~ sqrt(eps)) is so curved that
    central differences lose their accuracy there, while the backward stays exact."""
    centred = x - x.mean(axis=-1, keepdims=True)
    return x.mean(axis=-1, keepdims=True) + centred / np.maximum(centred.std(axis=-1, keepdims=True), 1e-3) * spread


def layer_norm_case(rng, B, T, n):
    x = spread_rows(normal(rng, B, T, n + 1, scale=2.0) + 0.5, 1.5)
    w, b = normal(rng, n + 1), normal(rng, n + 1)
    return Case(train.layer_norm_forward, train.layer_norm_backward, [x, w, b], [0, 1, 2],
                lambda x, w, b: TF.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5))


def rms_norm_case(rng, B, T, n):
    x, w = normal(rng, B, T, n, scale=2.0), normal(rng, n)
    x /= np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) / 1.5        # rows of RMS 1.5, well away from sqrt(eps)

    def llama_rms_norm(x, w):                                     # transformers' LlamaRMSNorm, written out
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    return Case(train.rms_norm_forward, train.rms_norm_backward, [x, w], [0, 1], llama_rms_norm)


def activation_case(rng, B, T, n, name):
    forward, backward = {"gelu": (train.gelu_forward, train.gelu_backward),
                         "gelu_tanh": (train.gelu_tanh_forward, train.gelu_tanh_backward),
                         "silu": (train.silu_forward, train.silu_backward)}[name]
    torch_fn = {"gelu": TF.gelu, "gelu_tanh": lambda x: TF.gelu(x, approximate="tanh"), "silu": TF.silu}[name]
    # subtle: scratch.nn's erf is float32-accurate (~1e-7) even in float64, so exact GELU is held to 1e-6 (torch)
    # and its finite differences (which differentiate the approximation) to 1e-5.
    loose = name == "gelu"
    return Case(forward, backward, [normal(rng, B, T, n, scale=3.0)], [0], torch_fn,
                fd_rtol=1e-5 if loose else 1e-6, torch_rtol=1e-6 if loose else 1e-10)


def swiglu_case(rng, B, T, n):
    return Case(train.swiglu_forward, train.swiglu_backward, [normal(rng, B, T, n, scale=2.0), normal(rng, B, T, n)],
                [0, 1], lambda g, u: TF.silu(g) * u)


def mlp_gelu_case(rng, B, T, n, approximate):
    C, F = n + 1, 2 * n + 1
    arrays = [normal(rng, B, T, C), normal(rng, C, F), normal(rng, F), normal(rng, F, C, scale=0.5), normal(rng, C)]
    torch_approx = "tanh" if approximate == "tanh" else "none"
    return Case(lambda *a: train.mlp_gelu_forward(*a, approximate=approximate), train.mlp_gelu_backward, arrays,
                [0, 1, 2, 3, 4],
                lambda x, wf, bf, wp, bp: TF.gelu(x @ wf + bf, approximate=torch_approx) @ wp + bp,
                fd_rtol=1e-5 if approximate == "none" else 1e-6, torch_rtol=1e-6 if approximate == "none" else 1e-10)


def mlp_swiglu_case(rng, B, T, n):
    C, F = n + 1, 2 * n + 1
    arrays = [normal(rng, B, T, C), normal(rng, C, F), normal(rng, C, F), normal(rng, F, C)]
    return Case(train.mlp_swiglu_forward, train.mlp_swiglu_backward, arrays, [0, 1, 2, 3],
                lambda x, wg, wu, wd: (TF.silu(x @ wg) * (x @ wu)) @ wd)


def rope_tables(T, D, offset=3):
    """cos, sin (1, 1, T, D) in float64 on the host for positions offset .. offset+T-1, and the angles (T, D/2)."""
    inv_freq = nn.rope_inv_freq(D, theta=10000.0, dtype=np.float64)
    positions = np.arange(offset, offset + T)
    cos, sin = nn.rope_cos_sin(inv_freq, positions)
    return cos, sin, positions[:, None] * inv_freq[None, :]


def rope_case(rng, B, T, n, layout):
    H, D = 2, 2 * n
    x = normal(rng, B, H, T, D)
    cos, sin, angles = rope_tables(T, D)

    def torch_rope(x, cos, sin):
        if layout == "half":                                      # Hugging Face: x cos + rotate_half(x) sin
            x1, x2 = x[..., :D // 2], x[..., D // 2:]
            return x * cos + torch.cat([-x2, x1], dim=-1) * sin
        # Meta: pairs (2i, 2i+1) as complex numbers times e^{i angle}
        pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], D // 2, 2).contiguous())
        turn = torch.polar(torch.ones_like(cos[..., :D // 2]), torch.from_numpy(angles).to(x.dtype))
        return torch.view_as_real(pairs * turn).reshape(x.shape)
    return Case(lambda x, c, s: train.rope_forward(x, c, s, layout=layout), train.rope_backward,
                [x, cos, sin], [0], torch_rope, constants=[1, 2])


def attention_case(rng, B, T, n, heads, masked=True, extra_keys=0):
    H, Hkv = heads
    D, S = n, T + extra_keys
    q, k, v = normal(rng, B, H, T, D), normal(rng, B, Hkv, S, D), normal(rng, B, Hkv, S, D)
    mask = nn.causal_mask(T, S, np)                               # (T, S), offset S - T as with a cache

    def torch_attention(q, k, v, mask):
        G = H // Hkv                                              # transformers' repeat_kv order
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        return TF.scaled_dot_product_attention(q, k, v, attn_mask=mask if masked else None)
    return Case(lambda q, k, v, m: train.attention_forward(q, k, v, mask=m if masked else None),
                train.attention_backward, [q, k, v, mask], [0, 1, 2], torch_attention)


def cross_entropy_case(rng, B, T, n):
    V = n + 1
    logits = normal(rng, B, T, V, scale=3.0)
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < 0.4] = -100                      # ignored positions
    targets[0, 0] = rng.integers(0, V)                            # at least one target counts
    return Case(train.cross_entropy_forward, train.cross_entropy_backward, [logits, targets], [0],
                lambda z, t: TF.cross_entropy(z.reshape(-1, z.shape[-1]), t.reshape(-1), ignore_index=-100))


CASES = {
    "embedding": lambda rng, B, T, n: embedding_case(rng, B, T, n, token_axis=0),
    "embedding_columns": lambda rng, B, T, n: embedding_case(rng, B, T, n, token_axis=1),
    "linear": linear_case,
    "linear_no_bias": lambda rng, B, T, n: linear_case(rng, B, T, n, bias=False),
    "layer_norm": layer_norm_case,
    "rms_norm": rms_norm_case,
    "gelu": lambda rng, B, T, n: activation_case(rng, B, T, n, "gelu"),
    "gelu_tanh": lambda rng, B, T, n: activation_case(rng, B, T, n, "gelu_tanh"),
    "silu": lambda rng, B, T, n: activation_case(rng, B, T, n, "silu"),
    "swiglu": swiglu_case,
    "mlp_gelu_tanh": lambda rng, B, T, n: mlp_gelu_case(rng, B, T, n, "tanh"),
    "mlp_gelu_exact": lambda rng, B, T, n: mlp_gelu_case(rng, B, T, n, "none"),
    "mlp_swiglu": mlp_swiglu_case,
    "rope_half": lambda rng, B, T, n: rope_case(rng, B, T, n, "half"),
    "rope_interleaved": lambda rng, B, T, n: rope_case(rng, B, T, n, "interleaved"),
    "attention_mha": lambda rng, B, T, n: attention_case(rng, B, T, n, (2, 2)),
    "attention_gqa": lambda rng, B, T, n: attention_case(rng, B, T, n, (6, 2)),
    "attention_mqa": lambda rng, B, T, n: attention_case(rng, B, T, n, (3, 1)),
    "attention_unmasked": lambda rng, B, T, n: attention_case(rng, B, T, n, (4, 2), masked=False),
    "attention_cache_offset": lambda rng, B, T, n: attention_case(rng, B, T, n, (4, 2), extra_keys=3),
    "cross_entropy": cross_entropy_case,
}


def is_float(a):
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def run_backward(backend, case, inputs, cotangent):
    out, cache = case.forward(*(backend.asarray(a) for a in inputs))
    dout = float(cotangent) if np.ndim(cotangent) == 0 else backend.asarray(cotangent, dtype=out.dtype)
    return out, as_tuple(case.backward(dout, cache))


# --- finite differences ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
@FD_SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), B=st.integers(1, 2), T=st.integers(1, 4), n=st.integers(1, 4))
def test_backward_matches_finite_differences(backend, name, seed, B, T, n):
    """<grad, u> equals (L(x + h u) - L(x - h u)) / 2h for random directions u, with L = sum(out * R)."""
    rng = np.random.default_rng(seed)
    case = CASES[name](rng, B, T, n)
    out, cache = case.forward(*(backend.asarray(a) for a in case.inputs))
    cotangent = rng.standard_normal(tuple(out.shape))

    def loss(arrays):
        return float(np.sum(backend.to_numpy(case.forward(*(backend.asarray(a) for a in arrays))[0]) * cotangent))

    _, grads = run_backward(backend, case, case.inputs, cotangent)
    assert len(grads) == len(case.grad_of)
    h, base = 1e-5, abs(loss(case.inputs))
    for grad, index in zip(grads, case.grad_of):
        x = case.inputs[index]
        assert grad.dtype == backend.xp.float64 and tuple(grad.shape) == x.shape
        grad = backend.to_numpy(grad)
        for _ in range(2):
            u = rng.standard_normal(x.shape)
            plus, minus = list(case.inputs), list(case.inputs)
            plus[index], minus[index] = x + h * u, x - h * u
            numeric = (loss(plus) - loss(minus)) / (2 * h)
            analytic = float(np.sum(grad * u))
            tolerance = case.fd_rtol * np.linalg.norm(grad) * np.linalg.norm(u) + 1e-8 * (1.0 + base)
            assert abs(numeric - analytic) <= tolerance, (name, index, numeric, analytic)


# --- torch autograd ----------------------------------------------------------------------------------------------

def torch_grads(case, inputs, cotangent):
    tensors = []
    for i, a in enumerate(inputs):
        tensor = torch.from_numpy(np.ascontiguousarray(a))
        tensors.append(tensor.requires_grad_(True) if i in case.grad_of else tensor)
    out = case.torch_fn(*tensors)
    out.backward(torch.from_numpy(np.asarray(cotangent, dtype=np.asarray(inputs[case.grad_of[0]]).dtype)))
    return out.detach().numpy(), [tensors[i].grad.numpy() for i in case.grad_of]


def assert_close(ours, ref, rel, what):
    """max |ours - ref| <= rel * max |ref|: relative to the array's scale, so entries near 0 do not dominate."""
    scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
    error = float(np.max(np.abs(ours - ref), initial=0.0))
    assert error <= rel * scale, f"{what}: max error {error:.3g} > {rel:g} * {scale:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_backward_matches_torch_autograd(backend, name, dtype):
    rng = np.random.default_rng(sum(map(ord, name)))
    case = CASES[name](rng, 2, 5, 4)
    inputs = [a.astype(dtype) if is_float(a) else a for a in case.inputs]
    out_shape = tuple(case.forward(*(backend.asarray(a) for a in inputs))[0].shape)
    cotangent = rng.standard_normal(out_shape).astype(dtype)
    out, grads = run_backward(backend, case, inputs, cotangent)
    ref_out, ref_grads = torch_grads(case, inputs, cotangent)
    rel = case.torch_rtol if dtype == "float64" else 1e-5
    assert out.dtype == backend.dtype(dtype) and tuple(out.shape) == ref_out.shape
    assert_close(backend.to_numpy(out), ref_out, max(rel, 1e-12), f"{name} forward")
    for grad, ref, index in zip(grads, ref_grads, case.grad_of):
        assert grad.dtype == backend.dtype(dtype), f"{name}: grad of input {index} is {grad.dtype}"
        assert_close(backend.to_numpy(grad), ref, rel, f"{name} grad of input {index}")


# --- forwards equal scratch.nn's ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forwards_equal_the_inference_layers(backend, dtype):
    rng = np.random.default_rng(3)
    rel = 1e-6 if dtype == "float32" else 1e-13

    def put(*shape, scale=1.0):
        return backend.asarray(rng.standard_normal(shape) * scale, dtype=dtype)

    x, w, b = put(2, 5, 8, scale=3.0), put(8), put(8)
    pairs = [(train.layer_norm_forward(x, w, b)[0], nn.layer_norm(x, w, b)),
             (train.rms_norm_forward(x, w)[0], nn.rms_norm(x, w))]
    w_fc, b_fc, w_proj, b_proj = put(8, 12), put(12), put(12, 8), put(8)
    for approximate in ("tanh", "none"):
        pairs.append((train.mlp_gelu_forward(x, w_fc, b_fc, w_proj, b_proj, approximate)[0],
                      nn.linear(nn.activation({"tanh": "gelu_new", "none": "gelu"}[approximate])(
                          nn.linear(x, w_fc, b_fc)), w_proj, b_proj)))
    w_gate, w_up, w_down = put(8, 12), put(8, 12), put(12, 8)
    pairs.append((train.mlp_swiglu_forward(x, w_gate, w_up, w_down)[0],
                  nn.linear(nn.silu(nn.linear(x, w_gate)) * nn.linear(x, w_up), w_down)))
    for H, Hkv in ((4, 4), (4, 2), (4, 1)):
        q, k, v = put(2, H, 5, 4), put(2, Hkv, 7, 4), put(2, Hkv, 7, 4)
        for mask in (None, nn.causal_mask(5, 7, backend.xp)):
            pairs.append((train.attention_forward(q, k, v, mask=mask)[0], nn.attention(q, k, v, mask=mask)))
    for ours, reference in pairs:
        assert ours.dtype == reference.dtype == backend.dtype(dtype)
        assert_close(backend.to_numpy(ours), backend.to_numpy(reference), rel, "forward vs scratch.nn")
    logits, targets = put(2, 5, 11, scale=4.0), rng.integers(0, 11, (2, 5))
    loss, _ = train.cross_entropy_forward(logits, backend.asarray(targets))
    log_probs = backend.to_numpy(nn.log_softmax(logits))
    expected = -np.mean(np.take_along_axis(log_probs, targets[..., None], axis=-1))
    assert loss.dtype == backend.dtype(dtype) and loss.ndim == 0
    assert_close(backend.to_numpy(loss), expected, rel * 10, "cross-entropy vs log_softmax")


# --- scatter-add ------------------------------------------------------------------------------------------------

def loop_index_add(size, index, values):
    """The oracle: one Python addition per value."""
    out = np.zeros(size, dtype=np.float64)
    for i, value in zip(index.tolist(), values.tolist()):
        out[i] += value
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), size=st.integers(1, 6), count=st.integers(0, 60),
       dtype=st.sampled_from(["float32", "float64"]))
def test_scatter_add_paths_agree_with_a_loop(seed, size, count, dtype):
    """Few slots, many values: every slot is hit many times. add.at (numpy's fast path), segment_sums (the strict
    path), unique_sums scattered once per key (the CuPy path) and a plain loop agree."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, size, count)
    values = rng.standard_normal(count).astype(dtype)
    expected = loop_index_add(size, index, values)
    fast = layers.index_add(np.zeros(size, dtype), index, values)
    portable = layers.segment_sums(index, values, size)
    keys, sums = layers.unique_sums(index, values)
    assert len(set(keys.tolist())) == len(keys)
    by_key = np.zeros(size, dtype)
    by_key[keys] += sums
    rel = 1e-6 if dtype == "float32" else 1e-12
    for got in (fast, portable, by_key):
        assert got.dtype == np.dtype(dtype) and got.shape == (size,)
        np.testing.assert_allclose(got, expected, rtol=rel, atol=rel * max(1.0, np.abs(values).sum()))


def test_index_add_on_every_backend(backend):
    rng = np.random.default_rng(5)
    index, values = rng.integers(0, 4, 200), rng.standard_normal(200).astype(np.float32)
    target = backend.asarray(np.ones((2, 2), np.float32))
    out = layers.index_add(target, backend.asarray(index), backend.asarray(values))
    assert out.dtype == backend.xp.float32
    expected = 1.0 + loop_index_add(4, index, values).reshape(2, 2)
    np.testing.assert_allclose(backend.to_numpy(target), expected, rtol=1e-5, atol=1e-5)


def test_segment_sums_keep_float32_values_apart():
    """The running sum is float64: a float32 one would lose the 1.0 that follows 1e8 (1e8 + 1 == 1e8 in float32)."""
    sums = layers.segment_sums(np.array([0, 1, 0]), np.array([1e8, 1.0, -1e8], np.float32), 2)
    assert sums.dtype == np.float32 and sums.tolist() == [0.0, 1.0]


def test_index_add_refuses_a_non_contiguous_target():
    """The fast path adds into a flat view; a transposed target has none, and a silent copy would lose the sums."""
    with pytest.raises(ValueError, match="must be C-contiguous"):
        layers.index_add(np.zeros((3, 2), np.float32).T, np.array([0, 1]), np.ones(2, np.float32))


# --- tied embeddings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tied_embedding_sums_lookup_and_head(backend, dtype):
    """logits = embedding(ids, W) @ W, W (C, V) used twice: dW = head's gradient + lookup's, as torch sums them."""
    rng = np.random.default_rng(7)
    C, V = 4, 5
    table = rng.standard_normal((C, V)).astype(dtype)
    ids, targets = rng.integers(0, V, (2, 6)), rng.integers(0, V, (2, 6))
    W = backend.asarray(table)
    h, lookup_cache = train.embedding_forward(backend.asarray(ids), W, token_axis=1)     # (B, T, C)
    logits, head_cache = train.linear_forward(h, W)                                     # (B, T, V)
    loss, loss_cache = train.cross_entropy_forward(logits, backend.asarray(targets))
    dlogits = train.cross_entropy_backward(1.0, loss_cache)
    dh, dW, _ = train.linear_backward(dlogits, head_cache)
    dW = train.embedding_backward(dh, lookup_cache, dtable=dW)                          # summed in place
    Wt = torch.from_numpy(table).requires_grad_(True)
    ref = TF.cross_entropy((TF.embedding(torch.from_numpy(ids), Wt.T) @ Wt).reshape(-1, V),
                           torch.from_numpy(targets).reshape(-1))
    ref.backward()
    rel = 1e-10 if dtype == "float64" else 1e-5
    assert dW.dtype == backend.dtype(dtype)
    assert_close(backend.to_numpy(loss), ref.detach().numpy(), rel, "loss")
    assert_close(backend.to_numpy(dW), Wt.grad.numpy(), rel, "tied gradient")


def test_embedding_backward_checks_the_accumulator():
    out, cache = train.embedding_forward(np.array([[0, 1]]), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"dtable must be \(3, 2\) float32"):
        train.embedding_backward(np.ones((1, 2, 2), np.float32), cache, dtable=np.zeros((2, 3), np.float32))


# --- cross-entropy edge cases ------------------------------------------------------------------------------------

def test_cross_entropy_every_target_ignored_is_nan_with_zero_gradient(backend):
    """torch: the mean over no targets is 0/0 = NaN, and the gradient is zero."""
    logits = backend.asarray(np.ones((2, 3, 4), np.float32))
    loss, cache = train.cross_entropy_forward(logits, backend.asarray(np.full((2, 3), -100)))
    assert math.isnan(float(backend.to_numpy(loss)))
    dlogits = train.cross_entropy_backward(1.0, cache)
    assert dlogits.dtype == backend.xp.float32 and not np.any(backend.to_numpy(dlogits))


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [5e3, 5e3, 0.0]], np.float32)
    loss, cache = train.cross_entropy_forward(logits, np.array([1, 0]))
    assert loss.dtype == np.float32
    np.testing.assert_allclose(float(loss), (1e4 + math.log(2.0)) / 2, rtol=1e-6)
    assert np.all(np.isfinite(train.cross_entropy_backward(1.0, cache)))


def test_cross_entropy_rejects_bad_targets_and_a_second_backward():
    logits = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        train.cross_entropy_forward(logits, np.array([[0, 3]]))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        train.cross_entropy_forward(logits, np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="targets"):
        train.cross_entropy_forward(logits, np.array([0, 1]))
    _, cache = train.cross_entropy_forward(logits, np.array([[0, -100]]))
    train.cross_entropy_backward(1.0, cache)
    with pytest.raises(RuntimeError, match="already used"):
        train.cross_entropy_backward(1.0, cache)


def test_cross_entropy_dloss_scales_the_gradient():
    rng = np.random.default_rng(8)
    logits, targets = rng.standard_normal((3, 5)).astype(np.float32), np.array([1, -100, 4])
    one = train.cross_entropy_backward(1.0, train.cross_entropy_forward(logits, targets)[1])
    scaled = train.cross_entropy_backward(np.float32(1024.0), train.cross_entropy_forward(logits, targets)[1])
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, 1024.0 * one, rtol=1e-6)


# --- small properties ------------------------------------------------------------------------------------------------

def test_rope_backward_undoes_the_rotation(backend):
    """R(theta) is orthogonal, so its backward R(-theta) maps every output back to its input."""
    rng = np.random.default_rng(9)
    cos, sin, _ = rope_tables(6, 8, offset=100)
    for layout in ("half", "interleaved"):
        x = backend.asarray(rng.standard_normal((1, 2, 6, 8)), dtype="float32")
        out, cache = train.rope_forward(x, backend.asarray(cos, dtype="float32"),
                                        backend.asarray(sin, dtype="float32"), layout=layout)
        back = train.rope_backward(out, cache)
        assert back.dtype == backend.xp.float32
        np.testing.assert_allclose(backend.to_numpy(back), backend.to_numpy(x), rtol=1e-5, atol=1e-5)


def test_frozen_linear_skips_weight_gradients():
    rng = np.random.default_rng(10)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 4), (4, 5), (5,)))
    dy = rng.standard_normal((2, 3, 5)).astype(np.float32)
    _, cache = train.linear_forward(x, w, b)
    dx, dw, db = train.linear_backward(dy, cache, weight_grads=False)
    assert dw is None and db is None
    np.testing.assert_array_equal(dx, train.linear_backward(dy, cache)[0])


def test_activation_table_matches_scratch_nn():
    """Every activation with a backward pair has the same name and forward as scratch.nn.ACTIVATIONS."""
    x = np.linspace(-4, 4, 17, dtype=np.float32)
    for name, (forward, _) in train.ACTIVATIONS.items():
        np.testing.assert_array_equal(forward(x)[0], nn.activation(name)(x))


def test_float16_norm_and_activation_backwards_stay_float16():
    """Half inputs are differentiated in float32 inside (as scratch.nn computes them) and come back float16."""
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((2, 3, 8)).astype(np.float16), rng.standard_normal(8).astype(np.float16)
    dy = rng.standard_normal((2, 3, 8)).astype(np.float16)
    for grads in (train.rms_norm_backward(dy, train.rms_norm_forward(x, w)[1]),
                  train.layer_norm_backward(dy, train.layer_norm_forward(x, w, w)[1]),
                  (train.silu_backward(dy, x), train.gelu_tanh_backward(dy, train.gelu_tanh_forward(x)[1]),
                   train.gelu_backward(dy, x))):
        assert all(g.dtype == np.float16 for g in grads)
