"""Stateless transformer building blocks, each written as its formula: linear, embedding, LayerNorm, RMSNorm, the
activations (GELU, its tanh approximation, SiLU, ReLU) and softmax.

Each function gets `xp` from its input arrays, so one code path runs on NumPy, array-api-strict and CuPy. Weights are
(C_in, C_out), applied as `x @ w + b` (loaders transpose torch nn.Linear weights once; GPT-2's Conv1D already is).
float32 in gives float32 out; float16 is computed in float32 inside softmax, norms and activations, then cast back
(precision.py). Not here: attention, RoPE, the KV cache (sibling modules), erf (error_function.py), autograd.
Follows LayerNorm (Ba et al. 2016), RMSNorm (Zhang & Sennrich 2019), GELU (Hendrycks & Gimpel 2016), SwiGLU's SiLU
(Shazeer 2020).
"""
from __future__ import annotations

import math

import backends
from scratch.nn.error_function import erfc
from scratch.nn.precision import cast_to, upcast_half

__all__ = [
    "linear", "embedding", "layer_norm", "rms_norm",
    "gelu", "gelu_tanh", "silu", "relu", "ACTIVATIONS", "activation", "softmax", "log_softmax",
]


# --- linear and embedding ----------------------------------------------------------------------------------------

def linear(x, w, b=None):
    """x @ w + b. x (..., C_in), w (C_in, C_out), b (C_out,) or None -> (..., C_out)."""
    xp = backends.namespace_of(x, w, b)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: x has {x.shape[-1]} input channels but w is {tuple(w.shape)} "
                         f"(weights are stored (C_in, C_out); transpose torch nn.Linear weights at load)")
    # subtle: (B, T, C) @ (C, N) is B separate matrix products to NumPy's matmul (B matrix-vector products when T == 1,
    # as in batched decoding); one (B*T, C) @ (C, N) product is one BLAS call (bench/bench_nn.py shows the gain).
    y = xp.reshape(xp.matmul(xp.reshape(x, (-1, x.shape[-1])), w), tuple(x.shape[:-1]) + (w.shape[1],))
    return y if b is None else y + b


def embedding(ids, table, token_axis: int = 0):
    """The vectors of `table` picked by integer `ids` (any shape, e.g. (B, T)) -> ids.shape + (C,).

    token_axis=0: `table` is (V, C), one row per token (how checkpoints store it).
    token_axis=1: `table` is (C, V), one column per token -- the layout of a tied output head, which multiplies
    hidden states (.., C) @ (C, V). A model that stores its tied embedding this way keeps ONE contiguous copy that
    serves both ends: the lookup reads B*T columns, the head streams the matrix as BLAS likes it.
    """
    xp = backends.namespace_of(ids, table)
    if isinstance(token_axis, bool) or token_axis not in (0, 1):
        raise ValueError(f"embedding: token_axis must be 0 (table (V, C)) or 1 (table (C, V)), got {token_axis!r}")
    flat = xp.reshape(ids, (-1,))                    # the standard's take wants 1-D indices
    picked = xp.take(table, flat, axis=token_axis)   # (B*T, C), or (C, B*T) for a column table
    if token_axis == 1:
        # subtle: the transpose is a strided view, and activations that keep its layout are summed in another
        # order by the reductions downstream -- a cached step would then differ from the full forward in the last
        # bits. Flattening makes the row-major copy, so every path feeds the first block the same layout.
        picked = xp.reshape(xp.permute_dims(picked, (1, 0)), (-1,))   # (B*T*C,) row-major
    return xp.reshape(picked, tuple(ids.shape) + (table.shape[1 - token_axis],))


# --- normalisation ---------------------------------------------------------------------------------------------

def layer_norm(x, weight, bias, eps: float = 1e-5):
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, var biased (divide by C).

    x (..., C), weight and bias (C,) (bias may be None). Half inputs: computed in float32, result cast back.
    """
    xp = backends.namespace_of(x, weight, bias)
    _check_channel_params("layer_norm", x, weight=weight, bias=bias)
    x, dtype = upcast_half(xp, x)
    centred = x - xp.mean(x, axis=-1, keepdims=True)                  # (..., C)
    variance = xp.mean(centred * centred, axis=-1, keepdims=True)      # (..., 1), the biased (population) variance
    y = centred / xp.sqrt(variance + eps) * cast_to(xp, weight, x.dtype)
    if bias is not None:
        y = y + cast_to(xp, bias, x.dtype)
    return cast_to(xp, y, dtype)


def rms_norm(x, weight, eps: float = 1e-6):
    """RMSNorm as Hugging Face's LlamaRMSNorm: x / sqrt(mean(x^2) + eps), then times weight.

    subtle: the mean of squares is taken in float32 and the normalised x is cast back to x's dtype BEFORE the
    multiplication by weight (so a float16 model multiplies in float16, exactly as transformers does).
    x (..., C), weight (C,) -> (..., C).
    """
    xp = backends.namespace_of(x, weight)
    x32, dtype = upcast_half(xp, x)
    mean_square = xp.mean(x32 * x32, axis=-1, keepdims=True)          # (..., 1)
    return weight * cast_to(xp, x32 / xp.sqrt(mean_square + eps), dtype)


# --- activations -----------------------------------------------------------------------------------------------

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x):
    """Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))): BERT's "gelu" and torch's default.

    Written with erfc, 0.5 x erfc(-x / sqrt(2)) -- the same function, since 1 + erf(u) = erfc(-u) -- because erfc
    keeps its relative accuracy where 1 + erf(u) cancels (the negative tail): ~4e-7 relative for x > -5, a few
    float32 ulps (torch's float32 gelu is within 1.3e-7 near 0 but loses more in that tail).
    """
    xp = backends.namespace_of(x)
    x, dtype = upcast_half(xp, x)
    return cast_to(xp, 0.5 * (x * erfc(-x * _INV_SQRT_2)), dtype)


def gelu_tanh(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). GPT-2's "gelu_new"."""
    xp = backends.namespace_of(x)
    x, dtype = upcast_half(xp, x)
    # x (0.5 + 0.5 tanh(u)) equals 0.5 x (1 + tanh(u)) bit for bit (halving is exact) and, written this way, NumPy
    # reuses the temporaries in place: a prefill's (B, T, 4C) activation makes two new buffers, not three.
    return cast_to(xp, x * (0.5 + 0.5 * xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x)))), dtype)


def silu(x):
    """SiLU (swish), x * sigmoid(x). The sigmoid is written with exp(-|x|), which never overflows."""
    xp = backends.namespace_of(x)
    x, dtype = upcast_half(xp, x)
    exp_neg_abs = xp.exp(-xp.abs(x))                                  # in (0, 1]
    sigmoid = xp.where(x >= 0.0, 1.0 / (1.0 + exp_neg_abs), exp_neg_abs / (1.0 + exp_neg_abs))
    return cast_to(xp, x * sigmoid, dtype)


def relu(x):
    """max(x, 0), elementwise (BERT configs may name it)."""
    xp = backends.namespace_of(x)
    return xp.maximum(x, xp.zeros_like(x))


# The one table from a config's activation name (Hugging Face's spelling) to the function. "gelu" is the exact erf
# form (BERT); "gelu_new" and "gelu_pytorch_tanh" are the same tanh approximation (GPT-2); "silu" is x * sigmoid(x)
# (the gate of Llama's SwiGLU). Every model looks its activation up here.
ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "relu": relu, "silu": silu}


def activation(name: str):
    """The activation function a config calls `name`; ValueError naming the known ones otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# --- softmax ---------------------------------------------------------------------------------------------------

def softmax(x, axis: int = -1):
    """exp(x - max) / sum(exp(x - max)) along `axis`. Half inputs are computed in float32 and cast back.

    subtle: a row that is entirely -inf (a query with nothing it may attend to) gives zeros, not NaN: its max is
    replaced by 0 so exp(-inf - 0) = 0, and its zero sum by 1.
    """
    xp = backends.namespace_of(x)
    x, dtype = upcast_half(xp, x)
    exps = xp.exp(x - _finite_max(xp, x, axis))
    total = xp.sum(exps, axis=axis, keepdims=True)
    total = xp.where(total == 0.0, xp.ones_like(total), total)
    return cast_to(xp, exps / total, dtype)


def log_softmax(x, axis: int = -1):
    """log(softmax(x)) as x - max - log(sum(exp(x - max))) along `axis`; half inputs computed in float32.

    -inf entries stay -inf; a row that is entirely -inf gives NaN, as torch.log_softmax does (no distribution).
    """
    xp = backends.namespace_of(x)
    x, dtype = upcast_half(xp, x)
    shifted = x - _finite_max(xp, x, axis)
    return cast_to(xp, shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True)), dtype)


# --- helpers ---------------------------------------------------------------------------------------------------

def _finite_max(xp, x, axis):
    """The max along `axis` (kept as a length-1 axis), with 0 where a row is all -inf (so x - max stays -inf, not
    NaN)."""
    row_max = xp.max(x, axis=axis, keepdims=True)
    return xp.where(xp.isfinite(row_max), row_max, xp.zeros_like(row_max))


def _check_channel_params(layer: str, x, **params):
    """ValueError naming the parameter unless each given (not None) is (C,), C = x's last axis."""
    for name, param in params.items():
        if param is not None and tuple(param.shape) != (x.shape[-1],):
            raise ValueError(f"{layer}: {name} must be (C,) = ({x.shape[-1]},), got {tuple(param.shape)}")
