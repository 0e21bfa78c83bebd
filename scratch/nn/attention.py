"""Scaled dot-product attention (Vaswani et al. 2017) for multi-head, grouped-query and multi-query layouts, with
the mask helpers a decoder needs (causal with a cache offset, left padding, position ids) and head split/merge.

`attention` is the batched path; `attention_reference` is the plain loop over (batch, head, query) it is
property-tested against. Not here: the projections (the models do those with `linear`), RoPE (rope.py), the KV
cache (kv_cache.py), dropout, FlashAttention-style tiling. Grouped-query attention follows Ainslie et al. 2023 and
multi-query attention Shazeer 2019; the head-to-group assignment matches transformers' `repeat_kv`.

Masks are boolean, True = "may attend". Masked logits become -inf and the softmax maps a fully masked row to zeros.
"""
from __future__ import annotations

import math

import backends
from scratch.nn.functional import softmax

__all__ = [
    "attention", "attention_reference",
    "causal_mask", "padding_mask", "causal_padding_mask", "position_ids_from_attention_mask",
    "split_heads", "merge_heads",
]


def _namespace(xp):
    """Accept a namespace or a Backend (anything with `.xp`)."""
    return getattr(xp, "xp", xp)


def _check_qkv(q, k, v):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention wants q (B, H, T, D) and k, v (B, Hkv, S, D); got ndim "
                         f"{q.ndim}, {k.ndim}, {v.ndim}")
    B, H, T, D = q.shape
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    Bk, Hkv, S, Dk = k.shape
    if Bk != B or Dk != D:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"attention: {H} query heads are not a multiple of {Hkv} key/value heads")
    return B, H, T, D, Hkv, S


def _mask_5d(xp, mask, B, H, Hkv, T, S):
    """A boolean mask broadcastable to (B, 1 or H, T, S), reshaped to broadcast against (B, Hkv, G, T, S)."""
    if mask.dtype != xp.bool:
        raise TypeError(f"attention: mask must be boolean (True = may attend), got dtype {mask.dtype}")
    if mask.ndim > 4:
        raise ValueError(f"attention: mask must broadcast to (B, 1, T, S), got shape {tuple(mask.shape)}")
    mask = xp.reshape(mask, (1,) * (4 - mask.ndim) + tuple(mask.shape))
    mb, mh, mt, ms = mask.shape
    if mb not in (1, B) or mt not in (1, T) or ms not in (1, S) or mh not in (1, H):
        raise ValueError(f"attention: mask shape {tuple(mask.shape)} does not broadcast to "
                         f"(B, 1, T, S) = ({B}, 1, {T}, {S})")
    if mh == 1:
        return xp.expand_dims(mask, axis=2)                       # (B, 1, 1, T, S)
    return xp.reshape(mask, (mb, Hkv, H // Hkv, mt, ms))          # a per-query-head mask, grouped like q


def attention(q, k, v, mask=None, scale: float | None = None):
    """softmax(q k^T * scale, masked) v for every head. q (B, H, T, D), k and v (B, Hkv, S, D) -> (B, H, T, D).

    H must be a multiple of Hkv; G = H // Hkv query heads share each key/value head. Query head h uses key/value
    head h // G -- "repeat_interleave" order (kv head j serves query heads j*G .. j*G+G-1), the order of
    transformers' repeat_kv and of Meta's reference. It is NOT `repeat`/tile order (h % Hkv); a checkpoint run with
    the wrong one gives plausible-looking garbage, so tests pin it.
    The grouping is a reshape of q, not a copy of k and v: q (B, H, T, D) -> (B, Hkv, G*T, D), so each key/value
    head meets its G query heads in one matmul.
    `mask`: boolean, True = may attend, broadcastable to (B, 1, T, S) (or (B, H, T, S)). `scale` defaults to
    1/sqrt(D). Fully masked query rows come out as zeros.
    """
    xp = backends.namespace_of(*(a for a in (q, k, v, mask) if a is not None))
    B, H, T, D, Hkv, S = _check_qkv(q, k, v)
    G = H // Hkv
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    qg = xp.reshape(q * scale, (B, Hkv, G * T, D))                     # (B, Hkv, G*T, D): heads h = j*G + g
    logits = xp.matmul(qg, xp.permute_dims(k, (0, 1, 3, 2)))        # (B, Hkv, G*T, S)
    if mask is not None:
        logits = xp.reshape(logits, (B, Hkv, G, T, S))
        neg_inf = xp.asarray(-math.inf, dtype=logits.dtype)
        logits = xp.where(_mask_5d(xp, mask, B, H, Hkv, T, S), logits, neg_inf)
        logits = xp.reshape(logits, (B, Hkv, G * T, S))
    weights = softmax(logits, axis=-1)                              # (B, Hkv, G*T, S), rows sum to 1 (or 0)
    out = xp.matmul(weights, v)                                     # (B, Hkv, G*T, D)
    return xp.reshape(out, (B, H, T, D))


def attention_reference(q, k, v, mask=None, scale: float | None = None):
    """The oracle for `attention`: loops over batch, query head and query position, one dot product per key.

    Same arguments and result. Kept deliberately plain (and slow): query head h reads kv head h // G; a masked key
    is left out of the softmax; a query with no key left gets a zero vector.
    """
    xp = backends.namespace_of(*(a for a in (q, k, v, mask) if a is not None))
    B, H, T, D, Hkv, S = _check_qkv(q, k, v)
    G = H // Hkv
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if mask is not None:
        full = xp.broadcast_to(xp.reshape(mask, (1,) * (4 - mask.ndim) + tuple(mask.shape)), (B, H, T, S))
    rows = []
    for b in range(B):
        heads = []
        for h in range(H):
            j = h // G                                               # the kv head serving query head h
            outs = []
            for t in range(T):
                scores = xp.sum(k[b, j, :, :] * q[b, h, t, :], axis=-1) * scale   # (S,)
                allowed = xp.ones((S,), dtype=xp.bool) if mask is None else full[b, h, t, :]
                if not bool(xp.any(allowed)):
                    outs.append(xp.zeros((D,), dtype=q.dtype))
                    continue
                top = xp.max(xp.where(allowed, scores, xp.asarray(-math.inf, dtype=scores.dtype)))
                w = xp.where(allowed, xp.exp(scores - top), xp.zeros_like(scores))  # (S,)
                w = w / xp.sum(w)
                outs.append(xp.sum(xp.expand_dims(w, axis=1) * v[b, j, :, :], axis=0))   # (D,)
            heads.append(xp.stack(outs, axis=0))                     # (T, D)
        rows.append(xp.stack(heads, axis=0))                         # (H, T, D)
    return xp.astype(xp.stack(rows, axis=0), q.dtype)                # (B, H, T, D)


# --- masks -----------------------------------------------------------------------------------------------------

def causal_mask(T: int, S: int, xp):
    """(T, S) boolean: query i, at absolute position S - T + i, may attend key j iff j <= S - T + i.

    With a KV cache the T new queries come after S - T cached positions, so the mask is the lower triangle shifted
    right by the offset S - T: a one-token decoding step (T = 1) sees every key, a prefill (T = S) is the plain
    lower triangle. Broadcasts against (B, 1, T, S). `xp` is a namespace or a Backend.
    """
    xp = _namespace(xp)
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


# --- heads -----------------------------------------------------------------------------------------------------

def split_heads(x, n_heads: int):
    """(B, T, C) -> (B, H, T, D) with D = C // H (a view where the library allows)."""
    xp = backends.namespace_of(x)
    B, T, C = x.shape
    if C % n_heads != 0:
        raise ValueError(f"split_heads: {C} channels do not split into {n_heads} heads")
    return xp.permute_dims(xp.reshape(x, (B, T, n_heads, C // n_heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, D) -> (B, T, H*D), the inverse of split_heads."""
    xp = backends.namespace_of(x)
    B, H, T, D = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (B, T, H * D))
