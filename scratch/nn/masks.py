"""The boolean masks attention takes, and the position ids that go with them: causal with a KV-cache offset, left
padding, and both at once.

True means "may attend". A decoder's query at absolute position p may attend keys 0..p; with a cache, the T new
queries come after S - T cached positions, so the causal mask is the lower triangle shifted right by S - T. A
left-padded batch (B, S) masks its pad keys as well and numbers each row's real tokens from 0, as transformers does.
Not here: sliding-window or block-sparse masks, additive float masks (-inf sentinels are made inside `attention`).
"""
from __future__ import annotations

import backends

__all__ = ["causal_mask", "padding_mask", "causal_padding_mask", "position_ids_from_attention_mask"]


def causal_mask(T: int, S: int, xp):
    """(T, S) boolean: query i, at absolute position S - T + i, may attend key j iff j <= S - T + i.

    A one-token decoding step (T = 1) sees every key; a prefill (T = S) is the plain lower triangle. Broadcasts
    against (B, 1, T, S). `xp` is the namespace to build it in (the mask depends on no array).
    """
    if not (0 <= T <= S):
        raise ValueError(f"causal_mask: need 0 <= T <= S, got T={T}, S={S}")
    query_pos = xp.reshape(xp.arange(S - T, S, dtype=xp.int64), (T, 1))   # (T, 1) absolute positions
    key_pos = xp.reshape(xp.arange(0, S, dtype=xp.int64), (1, S))          # (1, S)
    return key_pos <= query_pos                                             # (T, S)


def padding_mask(attention_mask):
    """(B, S) 0/1 (or boolean) attention mask -> (B, 1, 1, S) boolean, True where a real token sits."""
    xp = backends.namespace_of(attention_mask)
    if attention_mask.ndim != 2:
        raise ValueError(f"padding_mask: attention_mask must be (B, S), got shape {tuple(attention_mask.shape)}")
    keep = attention_mask if attention_mask.dtype == xp.bool else attention_mask != 0
    B, S = keep.shape
    return xp.reshape(keep, (B, 1, 1, S))


def causal_padding_mask(attention_mask, T: int):
    """The decoder mask for a (left-)padded batch: causal (with the cache offset) AND not padding.

    attention_mask (B, S) covers every position so far, cached and new; T is how many are new -> (B, 1, T, S).
    A padding query row comes out fully masked (its output is zeros and is never read).
    """
    xp = backends.namespace_of(attention_mask)
    S = attention_mask.shape[-1]
    return xp.logical_and(causal_mask(T, S, xp), padding_mask(attention_mask))


def position_ids_from_attention_mask(attention_mask):
    """Position ids for a left-padded batch: cumsum(mask) - 1, clipped at 0. (B, S) -> (B, S) int64.

    Each row's first real token gets position 0 whatever its padding. transformers computes the same cumsum - 1
    (and writes a dummy value on the pad positions, which are masked anyway). With a cache, the new tokens'
    positions are the last T columns: `position_ids_from_attention_mask(mask)[:, -T:]`.
    """
    xp = backends.namespace_of(attention_mask)
    counts = xp.cumulative_sum(xp.astype(attention_mask, xp.int64), axis=-1)
    return xp.clip(counts - 1, 0, None)
