"""scratch.nn.kv_cache.KVCache alone: writes and reads against a concatenation oracle, the one-advance-per-step rule,
reorder (beam search), crop (speculative decoding), capacity errors, memory arithmetic. On every backend."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import backends
from scratch.nn.dot_product_attention import attention
from scratch.nn.kv_cache import KVCache, kv_bytes_per_token
from scratch.nn.masks import causal_mask

L, B, HKV, D = 2, 3, 2, 4


def host(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def step(cache, backend, rng, T):
    """One forward step: every layer writes T positions, then advance. Returns the host k/v written per layer."""
    written, views = [], []
    for layer in range(cache.n_layers):
        k, v = host(rng, cache.batch_size, HKV, T, D), host(rng, cache.batch_size, HKV, T, D)
        views.append(cache.update(layer, backend.asarray(k), backend.asarray(v)))
        written.append((k, v))
    cache.advance(T)
    return written, views


def test_writes_and_views(backend):
    rng = backends.rng(30)
    cache = KVCache(backend.xp, L, B, HKV, 10, D, "float32")
    assert cache.length == 0 and cache.remaining == 10
    first, _ = step(cache, backend, rng, 4)                       # prefill
    second, views = step(cache, backend, rng, 1)                  # one decoding step
    assert cache.length == 5
    for layer in range(L):
        k, v = views[layer]
        assert tuple(k.shape) == (B, HKV, 5, D) and k.dtype == backend.xp.float32 and backends.of(k) is backend
        np.testing.assert_array_equal(backend.to_numpy(k), np.concatenate([first[layer][0], second[layer][0]], 2))
        np.testing.assert_array_equal(backend.to_numpy(v), np.concatenate([first[layer][1], second[layer][1]], 2))
        gk, gv = cache.get(layer)
        np.testing.assert_array_equal(backend.to_numpy(gk), backend.to_numpy(k))


def test_buffers_are_preallocated_with_the_dtype(backend):
    cache = KVCache(backend.xp, 1, 1, 1, 4, 2, backend.xp.float32)
    assert cache.dtype == backend.xp.float32
    assert cache.nbytes == 2 * 1 * 1 * 1 * 4 * 2 * 4
    with pytest.raises(TypeError, match="dtypes"):
        cache.update(0, backend.asarray(np.zeros((1, 1, 1, 2)), dtype="float64"),
                     backend.asarray(np.zeros((1, 1, 1, 2)), dtype="float64"))


def test_one_advance_per_step_rule(backend):
    rng = backends.rng(31)
    cache = KVCache(backend.xp, L, B, HKV, 8, D, "float32")
    kv = backend.asarray(host(rng, B, HKV, 2, D))
    cache.update(0, kv, kv)
    with pytest.raises(ValueError, match="layer 0 already wrote"):
        cache.update(0, kv, kv)
    with pytest.raises(ValueError, match=r"layers \[1\] did not write"):
        cache.advance(2)
    with pytest.raises(ValueError, match="writes T=1 but this step writes T=2"):
        cache.update(1, kv[:, :, :1, :], kv[:, :, :1, :])
    cache.update(1, kv, kv)
    with pytest.raises(ValueError, match="the layers wrote T=2"):
        cache.advance(3)
    with pytest.raises(ValueError, match="step is in progress"):
        cache.crop(0)
    cache.advance(2)
    assert cache.length == 2                                       # advanced once, by T, not once per layer
    with pytest.raises(ValueError, match="no layer wrote"):
        cache.advance(2)
    with pytest.raises(AttributeError):
        cache.length = 5                                           # one owner: no setter


def test_capacity_error_names_the_numbers(backend):
    rng = backends.rng(32)
    cache = KVCache(backend.xp, 1, 1, HKV, 5, D, "float32")
    kv = backend.asarray(host(rng, 1, HKV, 3, D))
    cache.update(0, kv, kv)
    cache.advance(3)
    with pytest.raises(ValueError, match="T=3 positions at length=3 exceeds max_length=5"):
        cache.update(0, kv, kv)
    assert cache.length == 3


def test_bad_construction_and_shapes(backend):
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        KVCache(backend.xp, 1, 1, 1, 0, 4)
    with pytest.raises(ValueError, match="not a dtype"):
        KVCache(backend.xp, 1, 1, 1, 4, 4, "float17")
    cache = KVCache(backend.xp, 1, 2, 2, 4, 4)
    wrong = backend.asarray(np.zeros((2, 3, 1, 4), np.float32))
    with pytest.raises(ValueError, match=r"not \(B, Hkv, T, D\) = \(2, 2, T, 4\)"):
        cache.update(0, wrong, wrong)
    with pytest.raises(ValueError, match="layer 1 out of range"):
        cache.update(1, wrong, wrong)


def test_reorder_gathers_rows_in_every_layer(backend):
    rng = backends.rng(33)
    cache = KVCache(backend.xp, L, B, HKV, 6, D, "float32")
    written, _ = step(cache, backend, rng, 3)
    cache.reorder(backend.asarray(np.array([2, 2, 0], dtype=np.int64)))
    for layer in range(L):
        k, v = cache.get(layer)
        np.testing.assert_array_equal(backend.to_numpy(k), written[layer][0][[2, 2, 0]])
        np.testing.assert_array_equal(backend.to_numpy(v), written[layer][1][[2, 2, 0]])
    cache.reorder([0, 0, 1, 1, 2])                               # beams may grow the batch (list accepted)
    assert cache.batch_size == 5 and cache.length == 3
    more, views = step(cache, backend, rng, 1)                     # and decoding continues after a reorder
    k0 = backend.to_numpy(views[0][0])
    np.testing.assert_array_equal(k0[:, :, :3], written[0][0][[2, 2, 2, 2, 0]])
    np.testing.assert_array_equal(k0[:, :, 3:], more[0][0])


def test_crop_and_reset(backend):
    rng = backends.rng(34)
    cache = KVCache(backend.xp, L, B, HKV, 8, D, "float32")
    first, _ = step(cache, backend, rng, 3)
    step(cache, backend, rng, 4)                                   # 4 draft tokens...
    cache.crop(5)                                                  # ...of which 2 were accepted
    assert cache.length == 5
    replacement, views = step(cache, backend, rng, 2)
    k = backend.to_numpy(views[1][0])
    assert k.shape[2] == 7
    np.testing.assert_array_equal(k[:, :, :3], first[1][0])
    np.testing.assert_array_equal(k[:, :, 5:], replacement[1][0])  # the rejected drafts were overwritten
    with pytest.raises(ValueError, match=r"length must be in 0..7, got 8"):
        cache.crop(8)
    cache.reset()
    assert cache.length == 0
    step(cache, backend, rng, 8)                                   # the whole capacity is usable again
    assert cache.length == 8


@given(st.lists(st.integers(1, 4), min_size=1, max_size=6), st.integers(0, 2 ** 32 - 1), st.data())
def test_cache_equals_concatenation(chunks, seed, data):
    """Property: any sequence of chunked writes (with crops between them) reads back as the concatenation oracle."""
    backend = backends.get("numpy")
    rng = np.random.default_rng(seed)
    cache = KVCache(backend.xp, 2, 2, HKV, 12, D, "float32")
    oracle = [np.zeros((2, HKV, 0, D), np.float32) for _ in range(2)]
    for T in chunks:
        if cache.length + T > cache.max_length:
            with pytest.raises(ValueError, match="exceeds max_length=12"):
                cache.update(0, np.zeros((2, HKV, T, D), np.float32), np.zeros((2, HKV, T, D), np.float32))
            break
        if cache.length and data.draw(st.booleans()):
            keep = data.draw(st.integers(0, cache.length))
            cache.crop(keep)
            oracle = [o[:, :, :keep] for o in oracle]
        written, views = step(cache, backend, rng, T)
        oracle = [np.concatenate([o, w[0]], axis=2) for o, w in zip(oracle, written)]
        for layer in range(2):
            np.testing.assert_array_equal(views[layer][0], oracle[layer])
        assert cache.length == oracle[0].shape[2]


def test_cached_decoding_equals_full_attention(backend):
    """Attention over the cache, one token at a time with the offset mask, equals one full causal pass."""
    rng = backends.rng(35)
    H, T = 4, 6
    q, k, v = host(rng, 1, H, T, D), host(rng, 1, HKV, T, D), host(rng, 1, HKV, T, D)
    xp = backend.xp
    full = backend.to_numpy(attention(*(backend.asarray(a) for a in (q, k, v)), mask=causal_mask(T, T, xp)))
    cache = KVCache(backend.xp, 1, 1, HKV, T, D, "float32")
    outs = []
    for chunk in ((0, 3), (3, 4), (4, 6)):                        # a 3-token prefill, then 1, then 2
        a, b = chunk
        kk, vv = cache.update(0, backend.asarray(k[:, :, a:b]), backend.asarray(v[:, :, a:b]))
        outs.append(backend.to_numpy(attention(backend.asarray(q[:, :, a:b]), kk, vv,
                                               mask=causal_mask(b - a, b, xp))))
        cache.advance(b - a)
    np.testing.assert_allclose(np.concatenate(outs, axis=2), full, rtol=1e-6, atol=1e-6)


def test_memory_arithmetic():
    # Llama 2 7B: 32 layers, 32 kv heads (MHA), D = 128, fp16 -> 512 KiB per token
    assert kv_bytes_per_token(32, 32, 128, 2) == 512 * 1024
    # Llama 3.1 8B: GQA with 8 kv heads -> 128 KiB per token
    assert kv_bytes_per_token(32, 8, 128, 2) == 128 * 1024
    cache = KVCache(np, 3, 2, 2, 16, 8, "float16")
    assert cache.bytes_per_token() == 2 * 3 * 2 * 8 * 2
    assert cache.nbytes == cache.bytes_per_token() * 2 * 16 == sum(b.nbytes for b in cache._k + cache._v)


def test_reorder_copies_the_written_positions_not_the_reserved_ones(backend, monkeypatch):
    """Beam search reorders every step: the cost follows the tokens written so far, not max_length (at a budget of
    1M positions a whole-buffer gather took ~0.7 s per step on a toy model). Growing the batch copies no more."""
    rng = backends.rng(35)
    cache = KVCache(backend.xp, L, B, HKV, 100_000, D, "float32")
    written, _ = step(cache, backend, rng, 3)
    gathered = []
    take = backend.xp.take
    monkeypatch.setattr(backend.xp, "take", lambda x, indices, axis=None: (gathered.append(tuple(x.shape)),
                                                                           take(x, indices, axis=axis))[1])
    cache.reorder([2, 0, 1])
    cache.reorder([0, 0, 1, 1, 2])
    monkeypatch.undo()
    assert gathered == [(B, HKV, 3, D)] * (2 * L) * 2          # K and V of every layer, twice: 3 positions each
    k, v = cache.get(1)
    np.testing.assert_array_equal(backend.to_numpy(k), written[1][0][[2, 2, 0, 0, 1]])
    np.testing.assert_array_equal(backend.to_numpy(v), written[1][1][[2, 2, 0, 0, 1]])


def test_available_memory_is_known_here():
    from scratch.nn.kv_cache import available_memory

    assert available_memory(np) is None or available_memory(np) > 0
