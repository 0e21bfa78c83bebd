"""scratch.nn.rope: frequency tables and cos/sin against transformers (default, linear, llama3), both layouts,
the Meta -> Hugging Face Q/K permutation, and RoPE's defining properties (relative position, norm preservation)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import backends
from scratch.nn.dot_product_attention import split_heads
from scratch.nn.functional import linear
from scratch.nn.rope import ROPE_TYPES, apply_rope, permute_for_half_layout, rope_cos_sin, rope_inv_freq

LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}
CASES = {  # name: (head_dim, theta, scaling)
    "default": (64, 10000.0, None),
    "linear": (32, 10000.0, {"rope_type": "linear", "factor": 4.0}),
    "llama3": (128, 500000.0, LLAMA31),
}


def hf_rotary(head_dim, theta, scaling):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    params = {"rope_type": "default", "rope_theta": theta}
    if scaling is not None:
        params.update(scaling)
    config = LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, num_key_value_heads=2, head_dim=head_dim,
                         max_position_embeddings=131072, rope_parameters=params)
    return LlamaRotaryEmbedding(config)


def host(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("case", list(CASES))
def test_inv_freq_matches_transformers(case):
    head_dim, theta, scaling = CASES[case]
    ours = rope_inv_freq(head_dim, theta, scaling)
    theirs = hf_rotary(head_dim, theta, scaling).inv_freq.numpy()
    assert ours.dtype == np.float32 and ours.shape == (head_dim // 2,)
    # ours is the correctly rounded float64 value, transformers' a float32 pow: at most a few ulp apart
    np.testing.assert_allclose(ours, theirs, rtol=4e-7, atol=0)


def test_llama3_scaling_bands():
    """High frequencies kept, low ones divided by factor, the band between strictly between the two."""
    base = rope_inv_freq(128, 500000.0, None, dtype=np.float64)
    scaled = rope_inv_freq(128, 500000.0, LLAMA31, dtype=np.float64)
    wavelen = 2 * np.pi / base
    high, low = wavelen < 8192 / 4.0, wavelen > 8192 / 1.0
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_array_equal(scaled[high], base[high])
    np.testing.assert_allclose(scaled[low], base[low] / 8.0, rtol=1e-15)
    middle = ~high & ~low
    assert np.all(scaled[middle] < base[middle]) and np.all(scaled[middle] > base[middle] / 8.0)


@pytest.mark.parametrize("case", list(CASES))
def test_cos_sin_and_rotation_match_transformers(backend, case):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    head_dim, theta, scaling = CASES[case]
    hf = hf_rotary(head_dim, theta, scaling)
    rng = backends.rng(20)
    positions = np.stack([np.arange(4090, 4097), np.array([0, 1, 2, 17, 300, 2048, 4096])]).astype(np.int64)
    q, k = host(rng, 2, 3, 7, head_dim), host(rng, 2, 3, 7, head_dim)
    with torch.no_grad():
        cos_t, sin_t = hf(torch.from_numpy(q), torch.from_numpy(positions))
        q_t, k_t = apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), cos_t, sin_t)
    xp = backend.xp

    # 1. with transformers' own table the float32 angles are bit-identical; cos/sin differ by a libm ulp at most
    cos, sin = rope_cos_sin(backend.asarray(hf.inv_freq.numpy()), backend.asarray(positions))
    assert cos.dtype == xp.float32 and tuple(cos.shape) == (2, 1, 7, head_dim)
    np.testing.assert_allclose(backend.to_numpy(cos)[:, 0], cos_t.numpy(), atol=2e-7)
    np.testing.assert_allclose(backend.to_numpy(sin)[:, 0], sin_t.numpy(), atol=2e-7)
    out_q = apply_rope(backend.asarray(q), cos, sin)
    out_k = apply_rope(backend.asarray(k), cos, sin, layout="half")
    assert out_q.dtype == xp.float32 and tuple(out_q.shape) == q.shape
    np.testing.assert_allclose(backend.to_numpy(out_q), q_t.numpy(), atol=2e-6)
    np.testing.assert_allclose(backend.to_numpy(out_k), k_t.numpy(), atol=2e-6)

    # 2. with our table: a 1-ulp difference in a frequency f moves the angle at position p by about p * f * 6e-8
    #    (2.4e-4 rad at p = 4096, f = 1) -- the float32 RoPE error every implementation carries.
    cos, sin = rope_cos_sin(rope_inv_freq(head_dim, theta, scaling, xp=backend.xp), backend.asarray(positions))
    np.testing.assert_allclose(backend.to_numpy(cos)[:, 0], cos_t.numpy(), atol=4e-4)
    np.testing.assert_allclose(backend.to_numpy(sin)[:, 0], sin_t.numpy(), atol=4e-4)
    out_q = apply_rope(backend.asarray(q), cos, sin)
    np.testing.assert_allclose(backend.to_numpy(out_q), q_t.numpy(), atol=1.5e-3)      # |q| ~ 3 times that
    # and at short range (positions < 64, where the model tests compare logits) the tables agree to ~1e-6
    short = backend.asarray(positions % 64)
    with torch.no_grad():
        cos_s, _ = hf(torch.from_numpy(q), torch.from_numpy(positions % 64))
    cos, _ = rope_cos_sin(rope_inv_freq(head_dim, theta, scaling, xp=backend.xp), short)
    np.testing.assert_allclose(backend.to_numpy(cos)[:, 0], cos_s.numpy(), atol=5e-6)


def test_positions_1d_and_dtype_argument(backend):
    inv = rope_inv_freq(16, xp=backend.xp)
    assert inv.dtype == backend.xp.float32 and backends.of(inv) is backend
    cos, sin = rope_cos_sin(inv, backend.asarray(np.arange(5, dtype=np.int64)))
    assert tuple(cos.shape) == (1, 1, 5, 16) and tuple(sin.shape) == (1, 1, 5, 16)
    np.testing.assert_allclose(backend.to_numpy(cos)[0, 0, 0], 1.0)            # position 0: no rotation
    if backend.name != "strict":                                               # strict has no float16
        half, _ = rope_cos_sin(inv, backend.asarray(np.arange(5, dtype=np.int64)), dtype=backend.xp.float16)
        assert half.dtype == backend.xp.float16


def test_interleaved_layout_is_the_complex_product(backend):
    """Meta's formulation: view channel pairs (2i, 2i+1) as complex numbers and multiply by e^{i p f_i}."""
    rng = backends.rng(21)
    D, T = 8, 6
    x = host(rng, 1, 2, T, D)
    inv = rope_inv_freq(D, 10000.0)
    positions = np.arange(100, 100 + T)
    cos, sin = rope_cos_sin(backend.asarray(inv), backend.asarray(positions))
    out = backend.to_numpy(apply_rope(backend.asarray(x), cos, sin, layout="interleaved"))
    angles = np.outer(positions, inv).astype(np.float32)                      # (T, D/2), float32 like the code
    z = (x[..., 0::2].astype(np.float64) + 1j * x[..., 1::2]) * np.exp(1j * angles.astype(np.float64))
    expected = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_permutation_connects_the_layouts(backend):
    """Meta checkpoint + interleaved RoPE == HF checkpoint (permuted wq/wk) + rotate-half RoPE, up to the same
    per-head channel permutation on q and k -- so attention scores are identical. Checked past position 10."""
    rng = backends.rng(22)
    B, T, C, H, Hkv, D = 2, 5, 24, 4, 2, 6
    x, wq, wk = host(rng, B, T, C), host(rng, C, H * D), host(rng, C, Hkv * D)
    X, WQ, WK = (backend.asarray(a) for a in (x, wq, wk))
    cos, sin = rope_cos_sin(rope_inv_freq(D, xp=backend.xp), backend.asarray(np.arange(11, 11 + T)))

    q_meta = apply_rope(split_heads(linear(X, WQ), H), cos, sin, layout="interleaved")
    k_meta = apply_rope(split_heads(linear(X, WK), Hkv), cos, sin, layout="interleaved")
    q_hf = apply_rope(split_heads(linear(X, permute_for_half_layout(WQ, H)), H), cos, sin, layout="half")
    k_hf = apply_rope(split_heads(linear(X, permute_for_half_layout(WK, Hkv)), Hkv), cos, sin, layout="half")

    # rotating (interleaved) then permuting the head channels == permuting then rotating (half)
    np.testing.assert_allclose(backend.to_numpy(permute_for_half_layout(q_meta, 1)), backend.to_numpy(q_hf),
                               atol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(permute_for_half_layout(k_meta, 1)), backend.to_numpy(k_hf),
                               atol=1e-5)
    # and the attention scores agree (kv head j serves query heads 2j, 2j+1)
    scores = lambda q, k: np.einsum("bhtd,bhsd->bhts", backend.to_numpy(q),
                                    np.repeat(backend.to_numpy(k), H // Hkv, axis=1))
    np.testing.assert_allclose(scores(q_meta, k_meta), scores(q_hf, k_hf), atol=1e-4)
    # without the permutation the two layouts disagree: this is the bug the permutation exists for
    q_wrong = apply_rope(split_heads(linear(X, WQ), H), cos, sin, layout="half")
    assert not np.allclose(backend.to_numpy(q_wrong), backend.to_numpy(q_meta), atol=1e-3)


def test_permutation_matches_transformers_conversion_rule():
    """The channel order transformers' convert_llama_weights_to_hf applies to wq/wk (torch (out, in) layout)."""
    rng = backends.rng(23)
    H, D, C = 3, 8, 5
    w_torch = host(rng, H * D, C)                                              # Meta's wq, (out, in)
    converted = w_torch.reshape(H, D // 2, 2, C).transpose(0, 2, 1, 3).reshape(H * D, C)
    ours = permute_for_half_layout(np.ascontiguousarray(w_torch.T), H)        # ours acts on (in, out)
    np.testing.assert_array_equal(ours, converted.T)
    assert permute_for_half_layout(host(rng, H * D), H).shape == (H * D,)    # biases too


@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 4096), st.integers(0, 4096), st.integers(-2000, 2000),
       st.sampled_from(["half", "interleaved"]), st.sampled_from(list(CASES)))
def test_dot_product_depends_only_on_offset(seed, m, n, shift, layout, case):
    head_dim, theta, scaling = CASES[case]
    m2, n2 = m + shift, n + shift
    if min(m2, n2) < 0:
        m2, n2 = m - min(m, n), n - min(m, n)
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((1, 1, 1, head_dim)), rng.standard_normal((1, 1, 1, head_dim))
    inv = rope_inv_freq(head_dim, theta, scaling, dtype=np.float64)           # float64: test the maths, not rounding

    def rotated(x, p):
        cos, sin = rope_cos_sin(inv, np.array([p]))
        return apply_rope(x, cos, sin, layout=layout)

    a = float(np.sum(rotated(q, m) * rotated(k, n)))
    b = float(np.sum(rotated(q, m2) * rotated(k, n2)))
    assert abs(a - b) <= 1e-9 * (1 + np.linalg.norm(q) * np.linalg.norm(k))


@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(["half", "interleaved"]))
def test_rotation_preserves_norms_float32(seed, layout):
    rng = np.random.default_rng(seed)
    x = host(rng, 2, 3, 9, 16)
    positions = rng.integers(0, 8192, size=(2, 9))
    cos, sin = rope_cos_sin(rope_inv_freq(16, 10000.0), positions)
    y = apply_rope(x, cos, sin, layout=layout)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"unknown rope_type 'yarn'.*default, linear, llama3"):
        rope_inv_freq(64, 10000.0, {"rope_type": "yarn", "factor": 4.0})
    assert ROPE_TYPES == ("default", "linear", "llama3")
    with pytest.raises(ValueError, match="head_dim must be a positive even number, got 7"):
        rope_inv_freq(7)
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        rope_inv_freq(64, 10000.0, {"rope_type": "llama3", "factor": 8.0})
    cos, sin = rope_cos_sin(rope_inv_freq(8), np.arange(3))
    with pytest.raises(ValueError, match="layout must be 'half' or 'interleaved', got 'meta'"):
        apply_rope(np.zeros((1, 1, 3, 8), np.float32), cos, sin, layout="meta")
    with pytest.raises(ValueError, match="not n_heads=3 heads"):
        permute_for_half_layout(np.zeros((4, 16), np.float32), 3)


def test_scaling_accepts_an_object():
    class Scaling:
        rope_type, factor, low_freq_factor, high_freq_factor = "llama3", 8.0, 1.0, 4.0
        original_max_position_embeddings = 8192
    np.testing.assert_array_equal(rope_inv_freq(128, 500000.0, Scaling()), rope_inv_freq(128, 500000.0, LLAMA31))
