"""Scaled dot-product attention (Vaswani et al. 2017) for multi-head, grouped-query and multi-query layouts, its loop
oracle, and the head split/merge around it.

`attention` is the batched path; `attention_reference` is the plain loop over (batch, head, query) it is
property-tested against. Grouped-query attention follows Ainslie et al. 2023 and multi-query attention Shazeer 2019;
the head-to-group assignment matches transformers' `repeat_kv`. Masks are boolean, True = "may attend" (masks.py
builds them); masked scores become -inf and the softmax maps a fully masked row to zeros. Not here: the projections
(the models do those with `linear`), RoPE (rope.py), the KV cache (kv_cache.py), dropout, FlashAttention-style tiling.
"""
from __future__ import annotations

import math

import backends
from scratch.nn.functional import softmax

__all__ = ["attention", "attention_reference", "split_heads", "merge_heads"]


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
    xp = backends.namespace_of(q, k, v, mask)
    B, H, T, D, Hkv, S = _check_qkv(q, k, v)
    G = H // Hkv                                                      # query heads per key/value head
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q = xp.reshape(q * scale, (B, Hkv, G * T, D))                     # heads h = j*G + g grouped under kv head j
    scores = xp.matmul(q, xp.permute_dims(k, (0, 1, 3, 2)))          # (B, Hkv, G*T, S)
    if mask is not None:
        scores = xp.reshape(scores, (B, Hkv, G, T, S))
        allowed = _grouped_mask(xp, mask, B, H, Hkv, T, S)           # broadcasts against (B, Hkv, G, T, S)
        scores = xp.where(allowed, scores, xp.asarray(-math.inf, dtype=scores.dtype))
        scores = xp.reshape(scores, (B, Hkv, G * T, S))
    weights = softmax(scores, axis=-1)                                # (B, Hkv, G*T, S), rows sum to 1 (or 0)
    return xp.reshape(xp.matmul(weights, v), (B, H, T, D))            # (B, Hkv, G*T, D) -> (B, H, T, D)


def attention_reference(q, k, v, mask=None, scale: float | None = None):
    """The oracle for `attention`: loops over batch, query head and query position, one dot product per key.

    Same arguments and result. Kept deliberately plain (and slow): query head h reads kv head h // G; a masked key
    is left out of the softmax; a query with no key left gets a zero vector.
    """
    xp = backends.namespace_of(q, k, v, mask)
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
                weights = xp.where(allowed, xp.exp(scores - top), xp.zeros_like(scores))  # (S,)
                weights = weights / xp.sum(weights)
                outs.append(xp.sum(xp.expand_dims(weights, axis=1) * v[b, j, :, :], axis=0))   # (D,)
            heads.append(xp.stack(outs, axis=0))                     # (T, D)
        rows.append(xp.stack(heads, axis=0))                         # (H, T, D)
    return xp.astype(xp.stack(rows, axis=0), q.dtype)                # (B, H, T, D)


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


# --- input checks ----------------------------------------------------------------------------------------------

def _check_qkv(q, k, v):
    """(B, H, T, D, Hkv, S) of q (B, H, T, D) and k, v (B, Hkv, S, D); ValueError naming the disagreement."""
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


def _grouped_mask(xp, mask, B, H, Hkv, T, S):
    """A boolean mask broadcastable to (B, 1 or H, T, S), reshaped to broadcast against (B, Hkv, G, T, S)."""
    if mask.dtype != xp.bool:
        raise TypeError(f"attention: mask must be boolean (True = may attend), got dtype {mask.dtype}")
    if mask.ndim > 4:
        raise ValueError(f"attention: mask must broadcast to (B, 1, T, S), got shape {tuple(mask.shape)}")
    mask = xp.reshape(mask, (1,) * (4 - mask.ndim) + tuple(mask.shape))
    mask_b, mask_h, mask_t, mask_s = mask.shape
    if mask_b not in (1, B) or mask_t not in (1, T) or mask_s not in (1, S) or mask_h not in (1, H):
        raise ValueError(f"attention: mask shape {tuple(mask.shape)} does not broadcast to "
                         f"(B, 1, T, S) = ({B}, 1, {T}, {S})")
    if mask_h == 1:
        return xp.expand_dims(mask, axis=2)                              # (B, 1, 1, T, S)
    return xp.reshape(mask, (mask_b, Hkv, H // Hkv, mask_t, mask_s))     # a per-query-head mask, grouped like q
