"""Samplers: turn next-token scores (B, V) into token ids (B,), greedily or with a uniform draw passed in.

Randomness is an argument, never hidden state: `sample_from_probs(probs, uniforms)` inverts the cumulative
distribution at one uniform number per row (inverse-transform sampling), and the uniforms come from the host
generator `backends.rng(seed)` (`draw_uniforms`), so NumPy, array-api-strict and CuPy pick the same tokens for the
same seed -- barring a uniform that falls within rounding error of a CDF boundary (the cumulative sums are formed
in float64 and rounded to float32 on every backend, so a GPU scan's different summation order almost never shows).
This is not torch.multinomial: the same seed gives different tokens than transformers' sampling, by design.
Greedy decoding is `greedy`, its own branch.
"""
from __future__ import annotations

import numpy as np

import backends
from scratch.generate.processors import cumulative_probs
from scratch.nn import softmax

__all__ = ["greedy", "draw_uniforms", "sample_from_probs", "sample", "sample_multinomial_reference"]


def greedy(scores):
    """Argmax of each row, (B, V) -> (B,) int64; on ties the FIRST maximal index wins, as torch.argmax does."""
    xp = backends.namespace_of(scores)
    return xp.astype(xp.argmax(scores, axis=-1), xp.int64)


def draw_uniforms(rng: np.random.Generator, batch: int, backend) -> object:
    """B uniforms in [0, 1) from the host generator, moved to `backend` as float32 (one draw per row per step).

    Subtle: a float64 draw just below 1 rounds to 1.0 in float32; `sample_from_probs` handles u == 1.
    """
    return backends.get(backend).random_uniform(rng, (batch,), dtype="float32")


def sample_from_probs(probs, uniforms):
    """Inverse-CDF sampling: for each row, the first index whose cumulative probability exceeds u.

    probs (B, V) float32 with rows summing to ~1, uniforms (B,) in [0, 1] -> (B,) int64.
    - A token of probability 0 is never chosen (its cumulative sum equals its predecessor's, which was <= u).
    - If rounding leaves the total below u (u close to 1), the last token of non-zero probability is chosen.
    - A row with nothing to draw from -- NaN or inf in it, or all zeros (scores all -inf, or NaN) -- raises
      ValueError naming the row, as torch.multinomial refuses it in transformers; no token is made up.
    The CDF is summed in float64, rounded to the probabilities' dtype (float32) and compared there on every
    backend, so a uniform draw maps to the same token everywhere unless it lies within rounding error of a CDF
    boundary.
    """
    xp = backends.namespace_of(probs, uniforms)
    vocab_size = probs.shape[-1]
    cdf = cumulative_probs(probs)                                            # (B, V), float64 sums rounded
    u = xp.astype(uniforms, probs.dtype)[:, None]                            # (B, 1)
    index = xp.sum(xp.astype(cdf <= u, xp.int64), axis=-1)                   # (B,): first cdf > u
    total = cdf[:, -1]                                                       # (B,): NaN, inf or 0 if unusable
    drawable = (total > 0) & xp.isfinite(total)
    if bool(xp.all(drawable & (index < vocab_size))):                        # the one sync of the usual case
        return index
    if not bool(xp.all(drawable)):
        row = int(xp.argmax(xp.astype(~drawable, xp.int8)))
        raise ValueError(f"sampling: row {row} of the next-token probabilities has nothing to draw from (they sum "
                         f"to {float(total[row])}): the scores are NaN, or -inf for every token -- a temperature so "
                         f"small that scores / temperature overflow float32, or processors that banned every token. "
                         f"transformers refuses it too (torch.multinomial: probability tensor contains either inf, "
                         f"nan or element < 0)")
    # Fallback for index == V: the last index with p > 0 (V-1 minus the position of the first p > 0 from the end).
    nonzero_from_end = xp.flip(probs > 0, axis=-1)
    last_nonzero = (vocab_size - 1) - xp.astype(xp.argmax(xp.astype(nonzero_from_end, xp.int8), axis=-1), xp.int64)
    return xp.where(index >= vocab_size, last_nonzero, index)


def sample(scores, uniforms):
    """Softmax the (processed) scores in their dtype, then `sample_from_probs`: (B, V), (B,) -> (B,) int64."""
    return sample_from_probs(softmax(scores), uniforms)


def sample_multinomial_reference(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """The oracle for `sample_from_probs`: a plain loop on host arrays. The running total is kept in float64 and
    each partial sum is rounded to float32 before it is compared with u, as `cumulative_probs` specifies."""
    probs = np.asarray(probs, dtype=np.float32)
    uniforms = np.asarray(uniforms, dtype=np.float32)
    chosen = np.zeros(probs.shape[0], dtype=np.int64)
    for row in range(probs.shape[0]):
        total = 0.0  # a Python float is a float64
        pick = None
        for token in range(probs.shape[1]):
            total += float(probs[row, token])
            if np.float32(total) > uniforms[row]:
                pick = token
                break
        if pick is None:  # the float sum never exceeded u: the last token that has any probability
            pick = max(token for token in range(probs.shape[1]) if probs[row, token] > 0)
        chosen[row] = pick
    return chosen
