"""Top-k: the k largest entries of each row, the one selection every decoding strategy uses.

Beam search keeps the best candidates, contrastive search the most probable tokens, the top-k warper compares with
the k-th largest score. `top_k_reference` is the definition (one stable sort of the whole row: best first, equal
scores by lower index); `top_k` returns exactly the same values and indices with a partial selection; `kth_largest`
is the k-th value alone. Everything runs on the scores' backend (host NumPy arrays too). Not here: sampling.
"""
from __future__ import annotations

import backends

__all__ = ["top_k_reference", "top_k", "kth_largest"]


def top_k_reference(scores, k: int):
    """The k largest entries of each row and their indices, best first; equal scores: the lower index first.

    scores (B, N) -> values (B, k), indices (B, k) int64. One stable sort of the whole row: the oracle.
    """
    xp = backends.namespace_of(scores)
    order = xp.argsort(-scores, axis=-1, stable=True)[:, :k]
    return xp.take_along_axis(scores, order, axis=-1), xp.astype(order, xp.int64)


def top_k(scores, k: int):
    """`top_k_reference`, faster: a partial selection (argpartition, O(N)) where the namespace has one (NumPy, CuPy),
    then a sort of the k chosen only. Same values and indices as the reference, ties included."""
    xp = backends.namespace_of(scores)
    n = scores.shape[-1]
    if n <= 4 * k or not hasattr(xp, "argpartition"):    # short rows (beam bookkeeping): sorting them is cheaper
        return top_k_reference(scores, k)
    chosen = xp.sort(xp.argpartition(scores, n - k, axis=-1)[:, n - k:], axis=-1)   # (B, k) the k largest, by index
    values = xp.take_along_axis(scores, chosen, axis=-1)
    # subtle: when an entry left out equals the k-th value, argpartition may have kept any of the equal entries,
    # the reference keeps the lowest indices. Rare (dead beams at -1e9, rows of -inf): then use the reference.
    kth = xp.min(values, axis=-1, keepdims=True)                                 # (B, 1)
    if bool(xp.any(xp.count_nonzero(scores >= kth, axis=-1) > k)):
        return top_k_reference(scores, k)
    best_first = xp.argsort(-values, axis=-1, stable=True)                       # ties by index
    return (xp.take_along_axis(values, best_first, axis=-1),
            xp.astype(xp.take_along_axis(chosen, best_first, axis=-1), xp.int64))


def kth_largest(scores, k: int):
    """The k-th largest value of each row, (B, N) -> (B, 1); k is clipped to [1, N] (transformers' top-k clips it).

    A partial sort (partition, O(N)) where the namespace has one, else a full sort: the value is the same.
    """
    xp = backends.namespace_of(scores)
    n = scores.shape[-1]
    place = n - max(1, min(k, n))                                               # its place in ascending order
    partition = getattr(xp, "partition", None)
    ascending = partition(scores, place, axis=-1) if partition is not None else xp.sort(scores, axis=-1)
    return ascending[:, place:place + 1]
