"""Rotary position embeddings, RoPE (Su et al. 2021, "RoFormer"), with Llama 3.1's frequency scaling.

RoPE rotates each pair of query/key channels by an angle position * frequency, so the dot product of a query at
position m and a key at position n depends only on m - n. Two pairings of channels exist in the wild and both are
here: "half" (Hugging Face's rotate-half: channel i pairs with i + D/2) and "interleaved" (Meta's original
checkpoints: channel 2i pairs with 2i + 1); `permute_for_half_layout` converts Q/K projection weights between them.
Frequency tables follow transformers' rope_type "default", "linear" and "llama3" (`_compute_llama3_parameters`).
Not here: YaRN, NTK-dynamic or LongRoPE scaling (rejected with a ValueError), partial rotary dims.
"""
from __future__ import annotations

import math

import numpy as np

import backends

__all__ = ["ROPE_TYPES", "rope_inv_freq", "rope_cos_sin", "apply_rope", "permute_for_half_layout"]

ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(head_dim: int, theta: float = 10000.0, scaling=None, *, xp=None, dtype=None):
    """The D/2 rotation frequencies theta^(-2i/D), optionally rescaled. -> (D/2,) float32.

    `scaling`: None, or a dict/object with `rope_type` in ROPE_TYPES plus its fields -- "linear": `factor`;
    "llama3": `factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`. An unknown
    rope_type raises ValueError. The table is computed in float64 on the host and rounded once, so each entry is the
    correctly rounded value (transformers computes it in float32; the two differ by at most 1 ulp).
    Returns a host NumPy array when `xp` is None, else an array of the namespace `xp`; `dtype` (a dtype or its name)
    defaults to float32 (pass float64 for reference computations).
    """
    if head_dim <= 0 or head_dim % 2 != 0:
        raise ValueError(f"rope: head_dim must be a positive even number, got {head_dim}")
    if not theta > 0:
        raise ValueError(f"rope: theta must be positive, got {theta}")
    # theta_i = theta^(-2i/D), i = 0 .. D/2-1: wavelengths from 2*pi up to about 2*pi*theta. A table computed once
    # per model, so host NumPy in float64 is right here.
    inv_freq = 1.0 / (float(theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    inv_freq = _rescaled(inv_freq, scaling)       # context extension ("linear", "llama3"); "default" keeps it
    if xp is None:
        return inv_freq.astype(np.float32 if dtype is None else dtype)
    if dtype is None or isinstance(dtype, str):
        dtype = getattr(xp, dtype or "float32")
    return xp.asarray(inv_freq, dtype=dtype)


def rope_cos_sin(inv_freq, positions, dtype=None):
    """cos and sin of position * frequency, in rotate-half layout. -> cos, sin, each (B, 1, T, D).

    positions: integer (B, T) (per-row positions, e.g. for left padding) or (T,) (shared; the result is then
    (1, 1, T, D)). inv_freq: (D/2,) on the same backend. The angles are computed in inv_freq's dtype (float32 for a
    model -- the same float32 product transformers and Meta's reference compute), then returned as `dtype`
    (default: inv_freq's dtype; pass the model's dtype for a float16 model).
    The D/2 frequencies are duplicated, [f_0 .. f_{D/2-1}, f_0 .. f_{D/2-1}], to line up with rotate-half pairs;
    the interleaved layout in apply_rope reads the first half.
    """
    xp = backends.namespace_of(inv_freq, positions)
    if positions.ndim == 1:
        positions = xp.reshape(positions, (1, positions.shape[0]))
    if positions.ndim != 2:
        raise ValueError(f"rope_cos_sin: positions must be (B, T) or (T,), got shape {tuple(positions.shape)}")
    positions = xp.astype(positions, inv_freq.dtype)
    angles = xp.expand_dims(positions, axis=-1) * inv_freq              # (B, T, 1) * (D/2,) -> (B, T, D/2)
    angles = xp.concat([angles, angles], axis=-1)                 # (B, T, D)
    angles = xp.expand_dims(angles, axis=1)                       # (B, 1, T, D): broadcasts over heads
    cos, sin = xp.cos(angles), xp.sin(angles)
    if dtype is not None and dtype != cos.dtype:
        cos, sin = xp.astype(cos, dtype), xp.astype(sin, dtype)
    return cos, sin


def apply_rope(x, cos, sin, layout: str = "half"):
    """Rotate x (B, H, T, D) by the angles behind cos, sin (broadcastable to (B, 1, T, D), from rope_cos_sin).

    layout="half" (Hugging Face): pair (i, i + D/2) rotates by frequency i --
        out = x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[D/2:], x[:D/2]).
    layout="interleaved" (Meta's checkpoints): pair (2i, 2i + 1) rotates by frequency i, as the complex product
        (x_2i + i x_2i+1) * e^{i angle_i}.
    The two give the same attention scores only if the Q/K weights are permuted to match: permute_for_half_layout.
    """
    xp = backends.namespace_of(x, cos, sin)
    D = x.shape[-1]
    if D % 2 != 0 or cos.shape[-1] != D:
        raise ValueError(f"apply_rope: x has head dim {D}, cos/sin have {cos.shape[-1]} (both must be the same even D)")
    half = D // 2
    if layout == "half":
        rotated = xp.concat([-x[..., half:], x[..., :half]], axis=-1)    # rotate_half(x), (B, H, T, D)
        return x * cos + rotated * sin
    if layout == "interleaved":
        pair_cos, pair_sin = cos[..., :half], sin[..., :half]            # (B, 1, T, D/2): one angle per pair
        even, odd = x[..., 0::2], x[..., 1::2]                           # (B, H, T, D/2) each
        out_even = even * pair_cos - odd * pair_sin
        out_odd = even * pair_sin + odd * pair_cos
        pairs = xp.stack([out_even, out_odd], axis=-1)                   # (B, H, T, D/2, 2)
        return xp.reshape(pairs, tuple(x.shape))
    raise ValueError(f"apply_rope: layout must be 'half' or 'interleaved', got {layout!r}")


def permute_for_half_layout(w, n_heads: int):
    """Reorder the output channels of a Q or K projection from Meta's interleaved layout to rotate-half.

    w: (C_in, n_heads * D) weight in this project's (in, out) layout, or a (n_heads * D,) bias; the permutation acts
    on the LAST axis. Within each head, new channel h * D/2 + i is old channel 2i + h (h in {0, 1}): the even
    channels first, then the odd ones. This is the permutation transformers' Llama conversion script applies to
    Meta's wq and wk (wv and wo are untouched); pass n_kv_heads for wk.
    After it, rotate-half on the permuted projection equals interleaved rotation on the original one followed by
    the same channel permutation -- and q.k dot products are unchanged because q and k are permuted alike.
    """
    xp = backends.namespace_of(w)
    out = w.shape[-1]
    if n_heads <= 0 or out % (2 * n_heads) != 0:
        raise ValueError(f"permute_for_half_layout: last axis {out} is not n_heads={n_heads} heads of even size")
    lead = tuple(w.shape[:-1])
    D = out // n_heads
    split = xp.reshape(w, lead + (n_heads, D // 2, 2))                  # (..., H, D/2, pair member)
    order = tuple(range(len(lead))) + (len(lead), len(lead) + 2, len(lead) + 1)
    return xp.reshape(xp.permute_dims(split, order), lead + (out,))     # (..., H, 2, D/2) -> (..., H*D)


# --- frequency scaling (context extension) ---------------------------------------------------------------------

def _rescaled(inv_freq: np.ndarray, scaling) -> np.ndarray:
    """The host float64 frequency table after the context-extension rule `scaling` names (unchanged for None or
    "default"): transformers' `_compute_linear_scaling_rope_parameters` / `_compute_llama3_parameters`."""
    kind = _rope_type(scaling)
    if kind == "default":
        return inv_freq
    factor = float(_scaling_get(scaling, "factor", 0.0))
    if not factor > 0:
        raise ValueError(f"rope_type {kind!r} needs a positive 'factor', got {factor}")
    if kind == "linear":
        return inv_freq / factor            # position interpolation: position p is treated as p / factor
    # llama3: keep high frequencies, divide low frequencies by factor, interpolate smoothly between them.
    low = float(_scaling_get(scaling, "low_freq_factor", 1.0))
    high = float(_scaling_get(scaling, "high_freq_factor", 4.0))
    original = _scaling_get(scaling, "original_max_position_embeddings")
    if original is None:
        raise ValueError("rope_type 'llama3' needs 'original_max_position_embeddings'")
    if not high > low:
        raise ValueError(f"rope_type 'llama3' needs high_freq_factor > low_freq_factor, got {high} and {low}")
    original = float(original)
    low_freq_wavelen = original / low       # wavelengths longer than this are slowed down by `factor`
    high_freq_wavelen = original / high     # wavelengths shorter than this are kept
    wavelen = 2.0 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)   # 0 at low_freq_wavelen .. 1 at high_freq_wavelen
    blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    out = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    middle = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(middle, blended, out)


def _scaling_get(scaling, key, default=None):
    """Read a field of a scaling spec given as a dict (HF's rope_scaling / rope_parameters) or an object."""
    if isinstance(scaling, dict):
        value = scaling.get(key, default)
    else:
        value = getattr(scaling, key, default)
    return default if value is None else value


def _rope_type(scaling) -> str:
    if scaling is None:
        return "default"
    kind = _scaling_get(scaling, "rope_type") or _scaling_get(scaling, "type") or "default"  # old HF key: "type"
    if kind not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type {kind!r}; known rope types: {', '.join(ROPE_TYPES)}")
    return kind
