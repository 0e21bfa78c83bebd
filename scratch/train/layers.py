"""Backward passes for every layer GPT-2 and Llama use, written by hand as forward/backward pairs.

Each layer is two adjacent functions: `x_forward(inputs...) -> (out, cache)` computes what `scratch.nn` computes (the
same values; tests pin it) and keeps what the backward needs, and `x_backward(dout, cache) -> grads` turns dL/d(out)
into the gradients of the forward's array arguments, in the forward's argument order. Every backward quotes, in a
comment, the forward line it differentiates (the layout of llm.c's train_gpt2.c). Derivations: docs/backprop.md.
Not here: chaining layers into a whole-model gradient, optimizers (optim.py), any autograd machinery.
Shapes: B batch, T time, C channels, H heads, Hkv kv heads, G = H // Hkv, D head dim, V vocab, F MLP width,
N = B*T rows. Gradients have the dtype of what they differentiate; float16 norms/softmax compute in float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import backends
from scratch.nn import apply_rope, embedding, erf, gelu, gelu_tanh, linear, silu, softmax

__all__ = [
    "index_add", "segment_sums", "unique_sums",
    "embedding_forward", "embedding_backward",
    "linear_forward", "linear_backward",
    "layer_norm_forward", "layer_norm_backward",
    "rms_norm_forward", "rms_norm_backward",
    "gelu_forward", "gelu_backward", "gelu_tanh_forward", "gelu_tanh_backward",
    "silu_forward", "silu_backward", "swiglu_forward", "swiglu_backward", "ACTIVATIONS",
    "mlp_gelu_forward", "mlp_gelu_backward", "mlp_swiglu_forward", "mlp_swiglu_backward",
    "rope_forward", "rope_backward",
    "attention_forward", "attention_backward",
    "cross_entropy_forward", "cross_entropy_backward", "CrossEntropyCache",
]


def _xp(*arrays):
    return backends.namespace_of(*(a for a in arrays if a is not None))


def _upcast(xp, x):
    """x in its compute dtype: float32 for float16 (as scratch.nn computes norms and activations), else as is."""
    half = getattr(xp, "float16", None)
    return xp.astype(x, xp.float32) if half is not None and x.dtype == half else x


def _cast(xp, x, dtype):
    return x if x.dtype == dtype else xp.astype(x, dtype)


def _sum_rows(xp, x):
    """(..., C) -> (C,): the sum over every leading axis, the gradient of a parameter broadcast over rows."""
    return xp.sum(xp.reshape(x, (-1, x.shape[-1])), axis=0)


# --- scatter-add: the backward of a gather ------------------------------------------------------------------------

def _stable_argsort(xp, index):
    # (CuPy's argsort is always stable and takes no `stable` keyword; NumPy's is stable only when asked)
    return xp.argsort(index) if backends.array_kind(index) == "cupy" else xp.argsort(index, stable=True)


def segment_sums(index, values, size: int):
    """(size,) array whose entry i is the sum of the values whose index is i (0 where none): the portable scatter-add.

    index (M,) integers in [0, size), values (M,). Sort the values by index, take a running sum (in float64, so the
    differences below lose nothing a float32 gradient can hold), and read each index's segment as
    prefix[end] - prefix[start], with start/end found by binary search. Only Array API functions: this is the path of
    array-api-strict, which has no scatter. Cost O(M log M + size); the result has `values`' dtype.
    """
    xp = _xp(index, values)
    order = _stable_argsort(xp, index)
    sorted_index = xp.take(index, order)                                            # (M,) ascending
    prefix = xp.cumulative_sum(xp.astype(xp.take(values, order), xp.float64), include_initial=True)   # (M+1,)
    positions = xp.arange(size, dtype=sorted_index.dtype)                           # (size,)
    start = xp.searchsorted(sorted_index, positions, side="left")                   # first value of segment i
    end = xp.searchsorted(sorted_index, positions, side="right")                    # one past its last
    return xp.astype(xp.take(prefix, end) - xp.take(prefix, start), values.dtype)


def unique_sums(index, values):
    """(keys, sums): the distinct indices, ascending, and the sum of the values of each -- segment_sums without the
    (size,) array, O(M log M) in time and O(M) in memory, the same order of additions on every run.

    The same sorted running sum as segment_sums, read at the first position of each distinct index: then
    `flat[keys] += sums` is a scatter with no repeated index, which every array library does exactly.
    """
    xp = _xp(index, values)
    M = index.shape[0]
    if M == 0:
        return index, values
    order = _stable_argsort(xp, index)
    sorted_index = xp.take(index, order)                                            # (M,) ascending
    prefix = xp.cumulative_sum(xp.astype(xp.take(values, order), xp.float64), include_initial=True)   # (M+1,)
    first = xp.concat([xp.ones((1,), dtype=xp.bool), sorted_index[1:] != sorted_index[:-1]])   # (M,)
    starts = xp.nonzero(first)[0]                                                   # (U,) where each key begins
    ends = xp.concat([starts[1:], xp.asarray([M], dtype=starts.dtype)])             # (U,) one past its last
    return xp.take(sorted_index, starts), xp.astype(xp.take(prefix, ends) - xp.take(prefix, starts), values.dtype)


def index_add(target, index, values):
    """target.flat[index[m]] += values[m] for every m, repeated indices adding up; in place, returns target.

    target: any shape (C-contiguous on NumPy/CuPy, whose scatter works on a flat view); index (M,) integer flat
    positions; values (M,) of target's dtype. A plain `target[index] += values` would keep only one of the repeated
    entries. NumPy has an unbuffered scatter, `np.add.at`; CuPy's add.at adds with atomics, in an order that changes
    from run to run (so would a gradient's last bits), so CuPy scatters `unique_sums` instead, which repeats itself
    exactly; array-api-strict has no scatter at all and adds the dense `segment_sums`.
    """
    xp = _xp(target, index, values)
    kind = backends.array_kind(target)
    if kind == "strict":
        target += xp.reshape(segment_sums(index, values, math.prod(target.shape)), tuple(target.shape))
        return target
    # a reshape of a non-contiguous array would be a silent copy, and the sums would land in it, not in target.
    if not target.flags.c_contiguous:
        raise ValueError(f"index_add: target {tuple(target.shape)} must be C-contiguous (it is scattered into "
                         f"through a flat view)")
    flat = xp.reshape(target, (-1,))
    if kind == "numpy":
        xp.add.at(flat, index, values)
    else:
        keys, sums = unique_sums(index, values)
        flat[keys] += sums
    return target


# --- embedding -----------------------------------------------------------------------------------------------------

def embedding_forward(ids, table, token_axis: int = 0):
    """out = table's vectors for `ids` -> ids.shape + (C,). table (V, C) (token_axis=0) or (C, V) (token_axis=1,
    the layout GPT-2 and Llama keep their tied embedding in). cache: (ids, table shape, token_axis)."""
    out = embedding(ids, table, token_axis=token_axis)
    return out, (ids, tuple(table.shape), token_axis)


def embedding_backward(dout, cache, dtable=None):
    """dL/dtable, table's shape: every row of dout added to the table entry its id picked (repeats add up).

    dtable: None makes a zero gradient; an existing array (the table's shape and dtype, C-contiguous) is added to IN
    PLACE -- that is how a tied embedding sums its two uses: pass the output head's weight gradient (from
    linear_backward on the (C, V) head) here, and the result is d(lookup) + d(head).
    """
    ids, table_shape, token_axis = cache
    xp = _xp(dout, ids, dtable)
    C = dout.shape[-1]
    if dtable is None:
        dtable = xp.zeros(table_shape, dtype=dout.dtype)
    elif tuple(dtable.shape) != table_shape or dtable.dtype != dout.dtype:
        raise ValueError(f"embedding_backward: dtable must be {table_shape} {dout.dtype}, "
                         f"got {tuple(dtable.shape)} {dtable.dtype}")
    flat_ids = xp.reshape(xp.astype(ids, xp.int64), (1, -1))                 # (1, N)
    channels = xp.reshape(xp.arange(C, dtype=xp.int64), (C, 1))              # (C, 1)
    rows = xp.reshape(dout, (-1, C))                                         # (N, C)
    # out[n, c] = table[ids[n], c]   (token_axis=0: flat position ids[n] * C + c)
    # out[n, c] = table[c, ids[n]]   (token_axis=1: flat position c * V + ids[n])
    if token_axis == 0:
        flat_positions = xp.permute_dims(flat_ids * C + channels, (1, 0))    # (N, C), in dout's order
        values = rows
    else:
        # subtle: visited channel by channel, (C, N), the scatter walks along the rows of the (C, V) table instead
        # of jumping V floats between neighbours (faster; the sums are the same, in the same order per entry).
        flat_positions = channels * table_shape[1] + flat_ids                # (C, N)
        values = xp.permute_dims(rows, (1, 0))                               # (C, N)
    return index_add(dtable, xp.reshape(flat_positions, (-1,)), xp.reshape(values, (-1,)))


# --- linear --------------------------------------------------------------------------------------------------------

def linear_forward(x, w, b=None):
    """y = x @ w + b. x (..., C_in), w (C_in, C_out), b (C_out,) or None. cache: (x, w, has_bias)."""
    return linear(x, w, b), (x, w, b is not None)


def linear_backward(dy, cache, weight_grads: bool = True):
    """-> (dx, dw, db): dx like x, dw (C_in, C_out), db (C_out,) (None without a bias).

    weight_grads=False skips dw and db (returned as None): a frozen weight, e.g. a LoRA base layer, only passes the
    gradient through. Rows are flattened to (N, C) so each product is one BLAS call.
    """
    x, w, has_bias = cache
    xp = _xp(dy, x, w)
    x2 = xp.reshape(x, (-1, w.shape[0]))                      # (N, C_in)
    dy2 = xp.reshape(dy, (-1, w.shape[1]))                    # (N, C_out)
    # y = x @ w + b
    dx = xp.reshape(xp.matmul(dy2, xp.permute_dims(w, (1, 0))), tuple(x.shape))   # dx = dy @ w^T
    if not weight_grads:
        return dx, None, None
    dw = xp.matmul(xp.permute_dims(x2, (1, 0)), dy2)           # dw = x^T @ dy, (C_in, C_out)
    db = xp.sum(dy2, axis=0) if has_bias else None            # db = dy summed over rows
    return dx, dw, db


# --- normalisation -------------------------------------------------------------------------------------------------

def layer_norm_forward(x, weight, bias, eps: float = 1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis, var biased: scratch.nn.layer_norm.

    x (..., C), weight and bias (C,) (bias may be None). cache: (xhat, std, weight, has_bias, x dtype).
    """
    xp = _xp(x, weight, bias)
    x32 = _upcast(xp, x)
    mean = xp.mean(x32, axis=-1, keepdims=True)                # (..., 1)
    xhat = x32 - mean                                         # centred, normalised in place below
    var = xp.mean(xhat * xhat, axis=-1, keepdims=True)        # (..., 1) biased variance
    std = xp.sqrt(var + eps)                                  # (..., 1)
    xhat /= std                                               # (..., C) zero mean, unit variance
    y = xhat * _cast(xp, weight, xhat.dtype)
    if bias is not None:
        y += _cast(xp, bias, y.dtype)
    return _cast(xp, y, x.dtype), (xhat, std, weight, bias is not None, x.dtype)


def layer_norm_backward(dy, cache):
    """-> (dx, dweight, dbias): dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / std, per row."""
    xhat, std, weight, has_bias, x_dtype = cache
    xp = _xp(dy, xhat, weight)
    dy32 = _upcast(xp, dy)
    # y = xhat * weight + bias
    dbias = _cast(xp, _sum_rows(xp, dy32), weight.dtype) if has_bias else None
    dweight = _cast(xp, _sum_rows(xp, dy32 * xhat), weight.dtype)
    dxhat = dy32 * _cast(xp, weight, dy32.dtype)
    # xhat = (x - mean) / std: the mean and std depend on every x of the row, hence the two row means
    dx = dxhat - xp.mean(dxhat, axis=-1, keepdims=True)
    dx -= xhat * xp.mean(dxhat * xhat, axis=-1, keepdims=True)
    dx /= std
    return _cast(xp, dx, x_dtype), dweight, dbias


def rms_norm_forward(x, weight, eps: float = 1e-6):
    """y = weight * x / sqrt(mean(x^2) + eps): scratch.nn.rms_norm (Hugging Face's LlamaRMSNorm).

    As there, the normalised x is cast back to x's dtype before the multiplication by weight.
    x (..., C), weight (C,). cache: (normed, std, weight, x dtype).
    """
    xp = _xp(x, weight)
    x32 = _upcast(xp, x)
    std = xp.sqrt(xp.mean(x32 * x32, axis=-1, keepdims=True) + eps)   # (..., 1) root mean square
    normed = _cast(xp, x32 / std, x.dtype)                              # (..., C)
    return weight * normed, (normed, std, weight, x.dtype)


def rms_norm_backward(dy, cache):
    """-> (dx, dweight): dx = (dnormed - normed * mean(dnormed * normed)) / std, per row."""
    normed, std, weight, x_dtype = cache
    xp = _xp(dy, normed, weight)
    dy32, n32 = _upcast(xp, dy), _upcast(xp, normed)
    # y = weight * normed
    dweight = _cast(xp, _sum_rows(xp, dy32 * n32), weight.dtype)
    dnormed = dy32 * _cast(xp, weight, dy32.dtype)
    # normed = x / std, std = sqrt(mean(x^2) + eps)
    dx = dnormed - n32 * xp.mean(dnormed * n32, axis=-1, keepdims=True)
    dx /= std
    return _cast(xp, dx, x_dtype), dweight


# --- activations ---------------------------------------------------------------------------------------------------

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


def gelu_forward(x):
    """Exact GELU, 0.5 x (1 + erf(x / sqrt(2))) (scratch.nn.gelu; its erf is float32-accurate). cache: x."""
    return gelu(x), x


def gelu_backward(dout, cache):
    """dx = dout * (Phi(x) + x phi(x)), Phi the normal CDF, phi its density."""
    x = cache
    xp = _xp(dout, x)
    x32 = _upcast(xp, x)
    # out = 0.5 * x * (1 + erf(x / sqrt(2)))
    slope = erf(x32 * _INV_SQRT_2)
    slope += 1.0
    slope *= 0.5                                              # Phi(x)
    slope += x32 * xp.exp(-0.5 * x32 * x32) * _INV_SQRT_2PI   # + x phi(x)
    return _cast(xp, _upcast(xp, dout) * slope, dout.dtype)


def gelu_tanh_forward(x):
    """GELU, tanh approximation (GPT-2's gelu_new). cache: (x, tanh(u)).

    scratch.nn.gelu_tanh's formula, operation for operation (the output is bit-identical; a test pins it), written
    out here to keep tanh(u) -- the backward then needs no tanh of its own, the costliest part of it -- and finished
    in two buffers: it runs on the (B, T, 4C) MLP activation.
    """
    xp = _xp(x)
    x32 = _upcast(xp, x)
    u = x32 * x32
    u *= x32
    u *= _GELU_CUBIC
    u += x32
    u *= _SQRT_2_OVER_PI                                      # u = sqrt(2/pi) (x + 0.044715 x^3)
    tanh_u = xp.tanh(u)
    out = tanh_u + 1.0
    out *= x32
    out *= 0.5                                                # scaling by 0.5 is exact: the same as (0.5 x) (1 + t)
    return _cast(xp, out, x.dtype), (x, tanh_u)


def gelu_tanh_backward(dout, cache):
    """dx = dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx), u = sqrt(2/pi) (x + 0.044715 x^3)."""
    x, tanh_u = cache
    xp = _xp(dout, x)
    x32 = _upcast(xp, x)
    # out = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 * x^3)
    # (two buffers the size of x, finished in place: this runs on the (B, T, 4C) MLP activation)
    minus_du_dx = x32 * x32
    minus_du_dx *= -3.0 * _GELU_CUBIC * _SQRT_2_OVER_PI
    minus_du_dx -= _SQRT_2_OVER_PI                            # -du/dx = -sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    slope = tanh_u * tanh_u
    slope -= 1.0
    slope *= minus_du_dx
    slope *= x32                                              # x (1 - tanh^2 u) du/dx
    slope += tanh_u
    slope += 1.0
    slope *= 0.5                                              # 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx
    slope *= _upcast(xp, dout)
    return _cast(xp, slope, dout.dtype)


def _sigmoid(xp, x):
    """1 / (1 + exp(-x)), written with exp(-|x|) so it never overflows (as scratch.nn.silu)."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def _silu_slope(xp, x32, sig):
    """d silu / dx = sigmoid(x) (1 + x (1 - sigmoid(x))) = sigmoid(x) + silu(x) (1 - sigmoid(x)), in place."""
    slope = 1.0 - sig
    slope *= x32
    slope *= sig                                              # silu(x) (1 - sigmoid(x))
    slope += sig
    return slope


def silu_forward(x):
    """SiLU, x * sigmoid(x): scratch.nn.silu. cache: x."""
    return silu(x), x


def silu_backward(dout, cache):
    x = cache
    xp = _xp(dout, x)
    x32 = _upcast(xp, x)
    # out = x * sigmoid(x)
    slope = _silu_slope(xp, x32, _sigmoid(xp, x32))
    slope *= _upcast(xp, dout)
    return _cast(xp, slope, dout.dtype)


def swiglu_forward(gate, up):
    """h = silu(gate) * up, the gated product inside Llama's MLP. gate, up (..., F). cache: (gate, up)."""
    return silu(gate) * up, (gate, up)


def swiglu_backward(dh, cache):
    """-> (dgate, dup). The sigmoid of gate is computed once and serves both."""
    gate, up = cache
    xp = _xp(dh, gate, up)
    g32 = _upcast(xp, gate)
    sig = _sigmoid(xp, g32)
    # h = silu(gate) * up
    dup = _cast(xp, _upcast(xp, dh) * (g32 * sig), up.dtype)        # dup = dh * silu(gate)
    slope = _silu_slope(xp, g32, sig)
    slope *= _upcast(xp, dh * up)                                    # dgate = dh * up * silu'(gate)
    return _cast(xp, slope, gate.dtype), dup


# A config's activation name (Hugging Face's spelling, as scratch.nn.ACTIVATIONS) -> (forward, backward).
ACTIVATIONS = {
    "gelu": (gelu_forward, gelu_backward),
    "gelu_new": (gelu_tanh_forward, gelu_tanh_backward),
    "gelu_pytorch_tanh": (gelu_tanh_forward, gelu_tanh_backward),
    "silu": (silu_forward, silu_backward),
}


# --- the two MLPs, composed from the pairs above -------------------------------------------------------------------

def mlp_gelu_forward(x, w_fc, b_fc, w_proj, b_proj, approximate: str = "tanh"):
    """proj(gelu(fc(x))), GPT-2's MLP (as scratch/models/gpt2.py's block computes it). x (..., C), w_fc (C, F), w_proj (F, C)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"mlp_gelu_forward: approximate must be 'tanh' or 'none', got {approximate!r}")
    act_forward = gelu_tanh_forward if approximate == "tanh" else gelu_forward
    h, fc_cache = linear_forward(x, w_fc, b_fc)               # (..., F)
    a, act_cache = act_forward(h)
    out, proj_cache = linear_forward(a, w_proj, b_proj)        # (..., C)
    return out, (fc_cache, act_cache, proj_cache, approximate)


def mlp_gelu_backward(dout, cache, weight_grads: bool = True):
    """-> (dx, dw_fc, db_fc, dw_proj, db_proj)."""
    fc_cache, act_cache, proj_cache, approximate = cache
    act_backward = gelu_tanh_backward if approximate == "tanh" else gelu_backward
    da, dw_proj, db_proj = linear_backward(dout, proj_cache, weight_grads)   # out = proj(a)
    dh = act_backward(da, act_cache)                                         # a = gelu(h)
    dx, dw_fc, db_fc = linear_backward(dh, fc_cache, weight_grads)           # h = fc(x)
    return dx, dw_fc, db_fc, dw_proj, db_proj


def mlp_swiglu_forward(x, w_gate, w_up, w_down):
    """down(silu(gate(x)) * up(x)), Llama's MLP (as scratch/models/llama.py's block computes it). x (..., C), w_gate/w_up (C, F)."""
    gate, gate_cache = linear_forward(x, w_gate)               # (..., F)
    up, up_cache = linear_forward(x, w_up)                     # (..., F)
    h, swiglu_cache = swiglu_forward(gate, up)                 # (..., F)
    out, down_cache = linear_forward(h, w_down)                # (..., C)
    return out, (gate_cache, up_cache, swiglu_cache, down_cache)


def mlp_swiglu_backward(dout, cache, weight_grads: bool = True):
    """-> (dx, dw_gate, dw_up, dw_down). x feeds two branches, so dx is the sum of theirs."""
    gate_cache, up_cache, swiglu_cache, down_cache = cache
    dh, dw_down, _ = linear_backward(dout, down_cache, weight_grads)        # out = down(h)
    dgate, dup = swiglu_backward(dh, swiglu_cache)                          # h = silu(gate) * up
    dx, dw_up, _ = linear_backward(dup, up_cache, weight_grads)             # up = x @ w_up
    dx_gate, dw_gate, _ = linear_backward(dgate, gate_cache, weight_grads)  # gate = x @ w_gate
    dx += dx_gate
    return dx, dw_gate, dw_up, dw_down


# --- RoPE ----------------------------------------------------------------------------------------------------------

def rope_forward(x, cos, sin, layout: str = "half"):
    """Rotate x (B, H, T, D) by the angles behind cos, sin (scratch.nn.apply_rope). cache: (cos, sin, layout)."""
    return apply_rope(x, cos, sin, layout=layout), (cos, sin, layout)


def rope_backward(dout, cache):
    """dx = R(theta)^T dout = R(-theta) dout: a rotation's transpose is the rotation back, i.e. sin -> -sin."""
    cos, sin, layout = cache
    # out = R(theta) x, pair by pair
    return apply_rope(dout, cos, -sin, layout=layout)


# --- attention -----------------------------------------------------------------------------------------------------

def attention_forward(q, k, v, mask=None, scale: float | None = None):
    """softmax(q k^T * scale, masked) v: scratch.nn.attention, keeping the attention weights for the backward.

    q (B, H, T, D), k and v (B, Hkv, S, D), H a multiple of Hkv: query head h reads kv head h // G. As in
    scratch.nn.attention, q is grouped by a reshape to (B, Hkv, G*T, D), so each kv head meets its G query heads in
    one matmul. mask: boolean, True = may attend, broadcastable to (B, 1, T, S) -- for training,
    `scratch.nn.causal_mask(T, T, xp)`. scale defaults to 1/sqrt(D).
    cache: (q_scaled, k, v, weights): q * scale grouped (B, Hkv, G*T, D), weights (B, Hkv, G*T, S).
    """
    xp = _xp(q, k, v, mask)
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if Hkv == 0 or H % Hkv != 0 or tuple(k.shape) != (B, Hkv, S, D) or tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"attention_forward: q {tuple(q.shape)} needs k, v (B, Hkv, S, D) with H a multiple of "
                         f"Hkv; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    G = H // Hkv
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    q_scaled = xp.reshape(q * scale, (B, Hkv, G * T, D))                     # heads h = j*G + g
    logits = xp.matmul(q_scaled, xp.permute_dims(k, (0, 1, 3, 2)))         # (B, Hkv, G*T, S)
    if mask is not None:
        if mask.ndim > 4 or (mask.ndim == 4 and mask.shape[1] != 1):
            raise ValueError(f"attention_forward: mask must broadcast to (B, 1, T, S), got {tuple(mask.shape)}")
        mask = xp.reshape(mask, (1,) * (4 - mask.ndim) + tuple(mask.shape))  # (B or 1, 1, T, S)
        logits = xp.reshape(logits, (B, Hkv, G, T, S))
        neg_inf = xp.asarray(-math.inf, dtype=logits.dtype)
        logits = xp.where(xp.expand_dims(mask, axis=2), logits, neg_inf)    # mask (B, 1, 1, T, S)
        logits = xp.reshape(logits, (B, Hkv, G * T, S))
    weights = softmax(logits, axis=-1)                                      # (B, Hkv, G*T, S)
    out = xp.matmul(weights, v)                                             # (B, Hkv, G*T, D)
    return xp.reshape(out, (B, H, T, D)), (q_scaled, k, v, weights, scale)


def attention_backward(dout, cache):
    """-> (dq, dk, dv). dout (B, H, T, D); dk, dv (B, Hkv, S, D) already summed over each kv head's G query heads.

    With O = P V, P = softmax(S), S = Q K^T * scale (per head, masked entries -inf so P = 0 there):
        dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K * scale,  dK = dS^T Q * scale.
    In the grouped layout (B, Hkv, G*T, .) the G query heads of a kv head are rows of one matrix, so the products
    with P^T and dS^T sum over them without a loop. Masked entries need no backward: P, hence dS, is 0 there.
    """
    q_scaled, k, v, weights, scale = cache
    xp = _xp(dout, k, v)
    B, H, T, D = dout.shape
    Hkv = k.shape[1]
    dout = xp.reshape(dout, (B, Hkv, (H // Hkv) * T, D))                      # (B, Hkv, G*T, D)
    # out = weights @ v
    dv = xp.matmul(xp.permute_dims(weights, (0, 1, 3, 2)), dout)            # dV = P^T dO      (B, Hkv, S, D)
    dweights = xp.matmul(dout, xp.permute_dims(v, (0, 1, 3, 2)))            # dP = dO V^T      (B, Hkv, G*T, S)
    # weights = softmax(logits)
    dweights -= xp.sum(dweights * weights, axis=-1, keepdims=True)
    dlogits = dweights
    dlogits *= weights                                                       # dS = P * (dP - rowsum(dP * P))
    # logits = q_scaled @ k^T,  q_scaled = q * scale
    dq = xp.matmul(dlogits, k)
    dq *= scale                                                              # dQ = dS K * scale
    dk = xp.matmul(xp.permute_dims(dlogits, (0, 1, 3, 2)), q_scaled)        # dK = dS^T (Q * scale)
    return xp.reshape(dq, (B, H, T, D)), dk, dv


# --- softmax + cross-entropy ---------------------------------------------------------------------------------------

@dataclass
class CrossEntropyCache:
    """What cross_entropy_backward needs. `probs` is consumed by the backward (its buffer becomes dlogits)."""

    probs: Any              # (N, V) softmax of the logits, float32 at least; None once the backward has run
    targets: Any            # (N,) target ids, ignored rows replaced by 0
    valid: Any              # (N,) bool, False where the target is ignore_index
    count: Any              # 0-d: number of valid targets (the mean's divisor), at least 1
    logits_shape: tuple
    logits_dtype: Any


def cross_entropy_forward(logits, targets, ignore_index: int = -100):
    """Mean cross-entropy of `targets` under softmax(logits): torch.nn.functional.cross_entropy's semantics.

    logits (..., V) (e.g. (B, T, V)), targets (...) integers in [0, V) or ignore_index. The loss is
    sum over non-ignored rows of (logsumexp(row) - row[target]) / (number of non-ignored rows), a 0-d array in
    float32 at least (float64 for float64 logits); NaN when every target is ignored, as torch. The log-sum-exp is
    taken after subtracting each row's max, so no exp overflows. Raises ValueError for a target outside [0, V)
    (this reads one boolean back from the device). cache: CrossEntropyCache.
    """
    xp = _xp(logits, targets)
    V = logits.shape[-1]
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"cross_entropy_forward: targets {tuple(targets.shape)} must be logits' shape without the "
                         f"vocab axis, {tuple(logits.shape[:-1])}")
    z = _upcast(xp, xp.reshape(logits, (-1, V)))                            # (N, V)
    t = xp.reshape(targets, (-1,))                                          # (N,)
    valid = t != ignore_index
    if bool(xp.any(xp.logical_and(valid, xp.logical_or(t < 0, t >= V)))):
        raise ValueError(f"cross_entropy_forward: a target is outside [0, {V}) and is not "
                         f"ignore_index={ignore_index}")
    safe_t = xp.where(valid, t, xp.zeros_like(t))                           # (N,) ignored rows read column 0
    row_max = xp.max(z, axis=-1, keepdims=True)                             # (N, 1)
    probs = xp.exp(z - row_max)                                             # (N, V) unnormalised
    total = xp.sum(probs, axis=-1, keepdims=True)                           # (N, 1)
    log_sum_exp = xp.log(total) + row_max                                   # (N, 1)
    picked = xp.take_along_axis(z, xp.reshape(safe_t, (-1, 1)), axis=-1)    # (N, 1) logit of the target
    nll = xp.where(valid, (log_sum_exp - picked)[:, 0], xp.zeros((), dtype=z.dtype))   # (N,)
    count = xp.sum(xp.astype(valid, z.dtype))                               # 0-d number of valid targets
    at_least_one = xp.maximum(count, xp.ones_like(count))                   # (no 0/0 warning below)
    nan = xp.asarray(math.nan, dtype=z.dtype)
    loss = xp.asarray(xp.where(count > 0, xp.sum(nll) / at_least_one, nan))   # 0-d; NaN for no target, as torch
    probs /= total                                                          # softmax(z), kept for the backward
    return loss, CrossEntropyCache(probs, safe_t, valid, at_least_one, tuple(logits.shape), logits.dtype)


def cross_entropy_backward(dloss, cache: CrossEntropyCache):
    """dlogits = (softmax(logits) - onehot(target)) * dloss / count on valid rows, 0 on ignored rows.

    dloss: a Python float or 0-d array (1.0 for the loss itself; a loss scale under mixed precision). Returns an array
    of the logits' shape and dtype. Consumes the cache: the softmax buffer is turned into the gradient in place
    (the largest activation of a language model is not copied), so a second call raises.
    """
    if cache.probs is None:
        raise RuntimeError("cross_entropy_backward: this cache was already used (its softmax buffer became the "
                           "gradient); run cross_entropy_forward again")
    dlogits, cache.probs = cache.probs, None
    xp = _xp(dlogits)
    N, V = dlogits.shape
    # loss = sum(valid * (log_sum_exp - z[target])) / count
    rows = xp.arange(N, dtype=xp.int64)
    minus_one = xp.where(cache.valid, xp.asarray(-1.0, dtype=dlogits.dtype), xp.zeros((), dtype=dlogits.dtype))
    index_add(dlogits, rows * V + xp.astype(cache.targets, xp.int64), minus_one)    # softmax - onehot(target)
    row_scale = xp.where(cache.valid, dloss / cache.count, xp.zeros((), dtype=dlogits.dtype))   # (N,)
    dlogits *= xp.reshape(xp.astype(row_scale, dlogits.dtype), (N, 1))
    return xp.reshape(_cast(xp, dlogits, cache.logits_dtype), cache.logits_shape)
