"""scratch.nn.dot_product_attention: batched attention against torch's SDPA and the loop oracle, GQA head order,
masked rows, head split/merge."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st

import backends
from scratch.nn.dot_product_attention import attention, attention_reference, merge_heads, split_heads
from scratch.nn.masks import causal_mask, causal_padding_mask


def host(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def sdpa(q, k, v, mask=None):
    """torch's reference, with kv heads expanded by repeat_interleave (transformers' repeat_kv order)."""
    G = q.shape[1] // k.shape[1]
    k, v = t(k).repeat_interleave(G, dim=1), t(v).repeat_interleave(G, dim=1)
    return TF.scaled_dot_product_attention(t(q), k, v, attn_mask=None if mask is None else t(mask)).numpy()


@pytest.mark.parametrize("H,Hkv", [(4, 4), (6, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_attention_matches_torch_sdpa(backend, H, Hkv):
    rng = backends.rng(10)
    B, T, S, D = 2, 5, 9, 8
    q, k, v = host(rng, B, H, T, D), host(rng, B, Hkv, S, D), host(rng, B, Hkv, S, D)
    mask = np.tril(np.ones((T, S), dtype=bool), k=S - T)            # causal with a cache offset of S - T
    for m in (None, mask):
        out = attention(*(backend.asarray(a) for a in (q, k, v)), mask=None if m is None else backend.asarray(m))
        assert out.dtype == backend.xp.float32 and tuple(out.shape) == (B, H, T, D)
        np.testing.assert_allclose(backend.to_numpy(out), sdpa(q, k, v, m), rtol=1e-5, atol=1e-5)


def test_gqa_uses_repeat_interleave_not_repeat():
    """kv head j serves query heads j*G .. j*G+G-1. Tiling the kv heads (`repeat`) is the classic wrong guess."""
    rng = backends.rng(11)
    q, k, v = host(rng, 1, 4, 3, 8), host(rng, 1, 2, 3, 8), host(rng, 1, 2, 3, 8)
    out = attention(q, k, v)
    interleaved = TF.scaled_dot_product_attention(t(q), t(k).repeat_interleave(2, dim=1),
                                                  t(v).repeat_interleave(2, dim=1)).numpy()
    tiled = TF.scaled_dot_product_attention(t(q), t(k).repeat(1, 2, 1, 1), t(v).repeat(1, 2, 1, 1)).numpy()
    np.testing.assert_allclose(out, interleaved, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, tiled, atol=1e-3)


def test_fully_masked_rows_give_zeros_and_custom_scale(backend):
    rng = backends.rng(12)
    q, k, v = host(rng, 1, 2, 3, 4), host(rng, 1, 2, 5, 4), host(rng, 1, 2, 5, 4)
    mask = np.ones((1, 1, 3, 5), dtype=bool)
    mask[..., 1, :] = False
    out = backend.to_numpy(attention(*(backend.asarray(a) for a in (q, k, v, mask)), scale=0.3))
    assert np.all(out[:, :, 1, :] == 0.0) and not np.any(np.isnan(out))
    expected = TF.scaled_dot_product_attention(t(q), t(k), t(v), scale=0.3).numpy()
    np.testing.assert_allclose(out[:, :, [0, 2]], expected[:, :, [0, 2]], rtol=1e-5, atol=1e-5)


def test_attention_float16_stays_float16():
    rng = backends.rng(13)
    q, k, v = host(rng, 1, 4, 3, 8), host(rng, 1, 2, 6, 8), host(rng, 1, 2, 6, 8)
    mask = causal_mask(3, 6, np)
    out = attention(q.astype(np.float16), k.astype(np.float16), v.astype(np.float16), mask=mask)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), attention(q, k, v, mask=mask), atol=5e-3)


def test_attention_rejects_bad_inputs():
    q, k = np.zeros((1, 3, 2, 4), np.float32), np.zeros((1, 2, 2, 4), np.float32)
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2"):
        attention(q, k, k)
    q = np.zeros((1, 4, 2, 4), np.float32)
    with pytest.raises(TypeError, match="boolean"):
        attention(q, k, k, mask=np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, k, mask=np.ones((3, 2), bool))


@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([(1, 1), (2, 2), (4, 2), (3, 1), (6, 3)]),
       st.integers(1, 4), st.integers(0, 3), st.sampled_from(["none", "causal", "random", "per_head"]))
def test_batched_equals_reference(seed, heads, T, extra, mask_kind):
    H, Hkv = heads
    S = T + extra
    rng = np.random.default_rng(seed)
    B, D = 2, 4
    q, k, v = host(rng, B, H, T, D), host(rng, B, Hkv, S, D), host(rng, B, Hkv, S, D)
    mask = {"none": None, "causal": causal_mask(T, S, np),
            "random": rng.random((B, 1, T, S)) < 0.6, "per_head": rng.random((B, H, T, S)) < 0.6}[mask_kind]
    fast, slow = attention(q, k, v, mask=mask), attention_reference(q, k, v, mask=mask)
    assert fast.dtype == slow.dtype == np.float32
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_reference_runs_on_every_backend(backend):
    rng = backends.rng(14)
    q, k, v = host(rng, 1, 4, 2, 4), host(rng, 1, 2, 3, 4), host(rng, 1, 2, 3, 4)
    args = [backend.asarray(a) for a in (q, k, v)]
    mask = causal_mask(2, 3, backend.xp)
    ref = attention_reference(*args, mask=mask)
    assert ref.dtype == backend.xp.float32 and tuple(ref.shape) == (1, 4, 2, 4)
    np.testing.assert_allclose(backend.to_numpy(ref), backend.to_numpy(attention(*args, mask=mask)), atol=1e-6)


def test_left_padded_row_equals_unpadded_row():
    """The point of the padding mask: a row's real tokens get the same outputs padded or not."""
    rng = backends.rng(15)
    D, H = 4, 2
    q, k, v = host(rng, 1, H, 3, D), host(rng, 1, H, 3, D), host(rng, 1, H, 3, D)
    pad = lambda a: np.concatenate([host(rng, 1, H, 2, D), a], axis=2)   # two junk positions in front
    attention_mask = np.array([[0, 0, 1, 1, 1]])
    padded = attention(pad(q), pad(k), pad(v), mask=causal_padding_mask(attention_mask, 5))
    plain = attention(q, k, v, mask=causal_mask(3, 3, np))
    np.testing.assert_allclose(padded[:, :, 2:], plain, rtol=1e-6, atol=1e-6)
    assert np.all(padded[:, :, :2] == 0.0)


def test_split_merge_heads_round_trip(backend):
    rng = backends.rng(16)
    x = host(rng, 2, 3, 12)
    X = backend.asarray(x)
    heads = split_heads(X, 4)
    assert tuple(heads.shape) == (2, 4, 3, 3) and heads.dtype == backend.xp.float32
    # head h holds channels h*D .. h*D+D-1 (the layout of every checkpoint's fused projections)
    np.testing.assert_array_equal(backend.to_numpy(heads)[:, 1], x[:, :, 3:6])
    merged = merge_heads(heads)
    assert tuple(merged.shape) == (2, 3, 12)
    np.testing.assert_array_equal(backend.to_numpy(merged), x)
    with pytest.raises(ValueError, match="12 channels do not split into 5 heads"):
        split_heads(X, 5)
