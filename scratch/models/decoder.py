"""The plumbing GPT-2 and Llama share around their blocks: inputs at the edge, positions and masks with a KV cache
and left padding, causal attention in query blocks, the vocabulary matrix at both ends, and `logits_to_keep`.

What a decoder computes is in gpt2.py and llama.py; this module holds what would otherwise be written twice there.
The vocabulary matrix comes in two layouts that compute the same thing: `VocabMatrix`, plain (V, C) as checkpoints
store it (the reference), and `TransposedVocabMatrix`, stored (C, V) because that is the layout the head's matrix
product is fastest with (docs/transformer.md has the figures). `vocab_matrix` picks the layout for every model.
Not here: the blocks, weights of a model, generation loops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import backends
from scratch.models.inputs import check_length, token_ids
from scratch.models.weights import put
from scratch.nn import (
    attention,
    causal_mask,
    causal_padding_mask,
    embedding,
    linear,
    position_ids_from_attention_mask,
)

__all__ = ["decoder_inputs", "positions_and_mask", "causal_attention", "PREFILL_BLOCK", "VocabMatrix",
           "TransposedVocabMatrix", "vocab_matrix", "check_logits_to_keep", "last_positions"]


# --- inputs: ids, positions, mask ----------------------------------------------------------------------------------

def decoder_inputs(model, input_ids, cache, attention_mask):
    """The checked inputs of one decoder call: (ids, past, positions, mask).

    ids (B, T) int64 on the model's backend; `past` the positions already in the cache (0 without one); positions
    and mask from `positions_and_mask`. Raises ValueError for ids outside the vocabulary or past the context.
    """
    ids = token_ids(model.backend, input_ids, model.n_vocab)            # (B, T) int64
    B, T = ids.shape
    past = 0 if cache is None else cache.length
    check_length(past, T, model.max_length, type(model).__name__)
    positions, mask = positions_and_mask(model.backend, B, T, past, attention_mask)
    return ids, past, positions, mask


def positions_and_mask(backend: backends.Backend, B: int, T: int, past: int, attention_mask):
    """Where the T new tokens sit and what they may attend to, given `past` cached positions.

    Returns (positions, mask): positions is None when every row's positions are past .. past+T-1 (no padding:
    callers slice their tables), else (B, T) int64 from the mask (cumsum - 1, as transformers' generate computes
    them, so a left-padded row's first real token is position 0); mask is boolean, True = may attend, (T, S) or
    (B, 1, T, S) with S = past + T, or None when nothing needs masking (one new token, no padding).
    """
    S = past + T
    if attention_mask is None:
        return None, (causal_mask(T, S, backend.xp) if T > 1 else None)
    if backends.array_kind(attention_mask) in (None, "numpy") or isinstance(attention_mask, (list, tuple)):
        host = np.asarray(attention_mask)
        if host.ndim != 2 or host.shape != (B, S):
            raise ValueError(f"attention_mask must be (B, cached + new) = ({B}, {S}), got shape {host.shape}")
        real = backend.asarray(host != 0)                               # (B, S) True on real tokens
    else:
        real = attention_mask
        if tuple(real.shape) != (B, S):
            raise ValueError(f"attention_mask must be (B, cached + new) = ({B}, {S}), got shape {tuple(real.shape)}")
    positions = position_ids_from_attention_mask(real)[:, past:]        # (B, T): the new tokens' positions
    # subtle: a left-padding query sees no key at all; attention gives it a zero vector, never NaN, and its
    # logits are never read.
    return positions, causal_padding_mask(real, T)                      # (B, 1, T, S)


# --- attention -----------------------------------------------------------------------------------------------------

# Query rows per attention call in a long prefill. Causal attention lets query block [i, i+128) skip every key after
# i+128 (masked anyway), so a 512-token prefill computes ~60% of the T x S scores -- the causal skipping of
# FlashAttention (Dao et al. 2022), without its tiling of the keys.
PREFILL_BLOCK = 128


def causal_attention(q, k, v, mask, block: int | None = None):
    """`scratch.nn.attention` for a causal mask, in query blocks that see only the keys they may attend to.

    q (B, H, T, D), k and v (B, Hkv, S, D), mask (T, S) or (B, 1, T, S) that is causal with offset S - T (query i
    may see no key after S - T + i). Exact: the skipped keys are masked, so they would add exp(-inf) = 0.
    `block` defaults to PREFILL_BLOCK; a call with T <= block is one plain attention call (its oracle).
    """
    T, S = q.shape[2], k.shape[2]
    block = PREFILL_BLOCK if block is None else block
    if T <= block or mask is None:
        return attention(q, k, v, mask=mask)
    xp = backends.namespace_of(q)
    blocks = []
    for start in range(0, T, block):
        end = min(start + block, T)
        visible = S - T + end                                       # keys 0 .. visible-1 can be seen by the block
        blocks.append(attention(q[:, :, start:end, :], k[:, :, :visible, :], v[:, :, :visible, :],
                                mask=mask[..., start:end, :visible]))   # (B, H, block, D)
    return xp.concat(blocks, axis=2)                                # (B, H, T, D)


# --- the vocabulary matrix: token ids in, logits out ---------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class VocabMatrix:
    """A (V, C) vocabulary matrix W as checkpoints store it, row v = token v's vector: the plain layout.

    It serves the input (embed: ids -> their rows), the output (logits = x @ W^T, one score per token), or both
    when the head is tied to the embedding. TransposedVocabMatrix computes the same from the (C, V) transpose.
    """

    weight: Any         # (V, C)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def embed(self, ids):
        """(B, T) ids -> (B, T, C): the rows of W."""
        return embedding(ids, self.weight)

    def logits(self, x):
        """(..., C) -> (..., V): x @ W^T, through a transposed view (no copy)."""
        return linear(x, backends.namespace_of(self.weight).permute_dims(self.weight, (1, 0)))


@dataclass(frozen=True, eq=False)
class TransposedVocabMatrix:
    """The (V, C) vocabulary matrix W stored as its transpose, (C, V) C-contiguous: column v is token v's vector.

    Why: the head multiplies a few rows (batched decoding, beam search) by W^T, and BLAS does that faster with a
    contiguous (C, V) matrix than with the transposed view of a (V, C) one; keeping both layouts would cost V*C more
    memory, so the lookup at the input reads columns instead. Same results as VocabMatrix (to float32 rounding).
    """

    columns: Any        # (C, V)

    @property
    def weight(self):
        """(V, C), as checkpoints store it: a transposed view, no copy."""
        return backends.namespace_of(self.columns).permute_dims(self.columns, (1, 0))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.columns.shape[::-1])

    def embed(self, ids):
        """(B, T) ids -> (B, T, C): the columns of the stored (C, V) matrix."""
        xp = backends.namespace_of(ids, self.columns)
        picked = xp.take(self.columns, xp.reshape(ids, (-1,)), axis=1)           # (C, B*T)
        # subtle: the transpose is a strided view, and activations that keep its layout are summed in another
        # order by the reductions downstream -- a cached step would then differ from the full forward in the last
        # bits. Flattening makes the row-major copy, so every path feeds the first block the same layout.
        flat = xp.reshape(xp.permute_dims(picked, (1, 0)), (-1,))                # (B*T*C,) row-major
        return xp.reshape(flat, tuple(ids.shape) + (self.columns.shape[0],))     # (B, T, C)

    def logits(self, x):
        """(..., C) -> (..., V): x @ (C, V), the matrix as BLAS likes it."""
        return linear(x, self.columns)


def vocab_matrix(backend: backends.Backend, host: np.ndarray, dtype: str) -> TransposedVocabMatrix:
    """A (V, C) checkpoint matrix on the backend, in the layout the models use (TransposedVocabMatrix)."""
    V, C = host.shape
    columns = np.empty((C, V), dtype=host.dtype)                        # owned and C-contiguous: put keeps it
    for start in range(0, V, 64):
        # 64 rows at a time: each block stays in cache while it is written out (much faster than one strided
        # copy of a large memory-mapped matrix; docs/transformer.md).
        columns[:, start:start + 64] = host[start:start + 64].T
    return TransposedVocabMatrix(put(backend, columns, dtype))


# --- logits_to_keep ------------------------------------------------------------------------------------------------

def check_logits_to_keep(logits_to_keep) -> None:
    if isinstance(logits_to_keep, (bool, np.bool_)) or not isinstance(logits_to_keep, (int, np.integer)) \
            or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an int >= 0 (0 keeps every position), got {logits_to_keep!r}")


def last_positions(x, logits_to_keep: int):
    """Hidden states x (B, T, C) -> the last `logits_to_keep` positions (B, logits_to_keep, C); 0 keeps all.

    Why keep fewer: generation reads only the last position's logits after the prompt, and the head costs 2*C*V
    FLOPs per position -- a third of GPT-2 124M's work per token -- so a prefill skips it for the other T-1
    (transformers' `logits_to_keep`, same name and meaning).
    """
    if 0 < logits_to_keep < x.shape[1]:
        return x[:, x.shape[1] - int(logits_to_keep):, :]
    return x
