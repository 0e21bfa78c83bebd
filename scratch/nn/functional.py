"""Stateless transformer building blocks: linear, embedding, norms, activations, softmax and the two MLPs.

Each function gets `xp` from its input arrays, so one code path runs on NumPy, array-api-strict and CuPy. Weights are
(C_in, C_out), applied as `x @ w + b` (loaders transpose torch nn.Linear weights once; GPT-2's Conv1D already is).
float32 in gives float32 out; float16 is computed in float32 inside softmax, norms and activations, then cast back.
Not here: attention, RoPE, the KV cache (sibling modules), autograd. Follows LayerNorm (Ba et al. 2016), RMSNorm
(Zhang & Sennrich 2019), GELU (Hendrycks & Gimpel 2016), SwiGLU (Shazeer 2020); erf: Maclaurin series near 0
(Abramowitz & Stegun 7.1.5), Numerical Recipes' Chebyshev erfc fit (`erfcc`, error < 1.2e-7) beyond.
"""
from __future__ import annotations

import math

import backends

__all__ = [
    "linear", "embedding", "layer_norm", "rms_norm",
    "erf", "gelu", "gelu_tanh", "relu", "silu", "ACTIVATIONS", "activation", "softmax", "log_softmax",
    "mlp_gelu", "mlp_swiglu",
]


def _xp(*arrays):
    """The namespace shared by the arrays given (None entries, e.g. an absent bias, are skipped)."""
    return backends.namespace_of(*(a for a in arrays if a is not None))


def _compute_dtype(xp, dtype):
    """float32 for half-precision inputs (the standard has no float16, so strict never gets here), else dtype."""
    half = getattr(xp, "float16", None)
    return xp.float32 if half is not None and dtype == half else dtype


def _upcast(xp, x):
    """(x in its compute dtype, the dtype to cast the result back to)."""
    compute = _compute_dtype(xp, x.dtype)
    return (x if compute == x.dtype else xp.astype(x, compute)), x.dtype


def _cast(xp, x, dtype):
    return x if x.dtype == dtype else xp.astype(x, dtype)


# --- linear and embedding ----------------------------------------------------------------------------------------

def linear(x, w, b=None):
    """x @ w + b. x (..., C_in), w (C_in, C_out), b (C_out,) or None -> (..., C_out)."""
    xp = _xp(x, w, b)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: x has {x.shape[-1]} input channels but w is {tuple(w.shape)} "
                         f"(weights are stored (C_in, C_out); transpose torch nn.Linear weights at load)")
    if x.ndim > 2:
        # subtle: (B, T, C) @ (C, N) is B separate matrix products to NumPy's matmul (B matrix-vector products when
        # T == 1, as in batched decoding); one (B*T, C) @ (C, N) product is one BLAS call and ~4x faster at B = 16.
        lead = tuple(x.shape[:-1])
        y = xp.reshape(xp.matmul(xp.reshape(x, (-1, x.shape[-1])), w), lead + (w.shape[1],))
    else:
        y = xp.matmul(x, w)  # (..., C_in) @ (C_in, C_out) -> (..., C_out)
    if b is None:
        return y
    if b.dtype == y.dtype and tuple(b.shape) == (y.shape[-1],):
        y += b               # in place: y is this call's own fresh result
        return y
    return y + b             # another dtype or shape: the usual promotion and broadcasting


def embedding(ids, table, token_axis: int = 0):
    """The vectors of `table` picked by integer `ids` (any shape, e.g. (B, T)) -> ids.shape + (C,).

    token_axis=0: `table` is (V, C), one row per token (how checkpoints store it).
    token_axis=1: `table` is (C, V), one column per token -- the layout of a tied output head, which multiplies
    hidden states (.., C) @ (C, V). A model that stores its tied embedding this way keeps ONE contiguous copy that
    serves both ends: the lookup reads B*T columns, the head streams the matrix as BLAS likes it.
    """
    xp = _xp(ids, table)
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
    xp = _xp(x, weight, bias)
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (x.shape[-1],):
            raise ValueError(f"layer_norm: {name} must be (C,) = ({x.shape[-1]},), got {tuple(param.shape)}")
    x32, out_dtype = _upcast(xp, x)
    mean = xp.mean(x32, axis=-1, keepdims=True)                 # (..., 1)
    y = x32 - mean                                              # centred; a fresh buffer, finished in place
    var = xp.mean(y * y, axis=-1, keepdims=True)               # (..., 1), the biased (population) variance
    y /= xp.sqrt(var + eps)
    y *= _cast(xp, weight, y.dtype)
    if bias is not None:
        y += _cast(xp, bias, y.dtype)
    return _cast(xp, y, out_dtype)


def rms_norm(x, weight, eps: float = 1e-6):
    """RMSNorm as Hugging Face's LlamaRMSNorm: x / sqrt(mean(x^2) + eps), then times weight.

    subtle: the mean of squares is taken in float32 and the normalised x is cast back to x's dtype BEFORE the
    multiplication by weight (so a float16 model multiplies in float16, exactly as transformers does).
    x (..., C), weight (C,) -> (..., C).
    """
    xp = _xp(x, weight)
    x32, in_dtype = _upcast(xp, x)
    ms = xp.mean(x32 * x32, axis=-1, keepdims=True)            # (..., 1) mean of squares
    normed = _cast(xp, x32 / xp.sqrt(ms + eps), in_dtype)
    return weight * normed


# --- activations -----------------------------------------------------------------------------------------------

# erf: two pieces, each accurate to about one float32 ulp.
#  |x| < 0.5: the Maclaurin series erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)) (A&S 7.1.5), 8 terms;
#             the first omitted term is below 1e-9 relative there. The series keeps full RELATIVE accuracy near 0,
#             where 1 - erfc(x) would lose it.
#  |x| >= 0.5: erf = 1 - erfc(|x|), with erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), P a degree-9 Chebyshev
#             fit whose fractional error is below 1.2e-7 for every z >= 0 (Numerical Recipes' `erfcc` constants).
_ERF_SERIES = tuple(2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(8))
_ERFC_CHEB = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
              0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def _erf_series(xp, x):
    """erf(x) by the Maclaurin series, for |x| < 0.5 (x is clipped there, so any input is safe)."""
    # Both Horner loops in this file update ONE buffer in place (p = p * u + c, the same operations in the same
    # order as p = c + u * p): far fewer full-size temporaries on a large activation.
    small = xp.clip(x, -0.5, 0.5)
    s2 = small * small
    series = s2 * _ERF_SERIES[-1]
    for c in reversed(_ERF_SERIES[1:-1]):         # Horner in x^2
        series += c
        series *= s2
    series += _ERF_SERIES[0]
    series *= small
    return series


def _erfc_nonnegative(xp, z):
    """erfc(z) for z >= 0 by the Chebyshev fit, fractional error < 1.2e-7 everywhere (z is clipped to [0, 10])."""
    z = xp.clip(z, 0.0, 10.0)                     # erf(10) == 1 in float32 and float64: clip avoids exp underflow
    t = 1.0 / (1.0 + 0.5 * z)
    poly = t * _ERFC_CHEB[-1]
    for c in reversed(_ERFC_CHEB[1:-1]):          # Horner in t
        poly += c
        poly *= t
    poly += _ERFC_CHEB[0]
    z *= z
    poly -= z                                     # P(t) - z^2
    erfc = xp.exp(poly)
    erfc *= t
    return erfc


def _erf_float(xp, x):
    erfc = _erfc_nonnegative(xp, xp.abs(x))
    tail = xp.where(x < 0.0, erfc - 1.0, 1.0 - erfc)
    return xp.where(xp.abs(x) < 0.5, _erf_series(xp, x), tail)


def _one_plus_erf(xp, x):
    """1 + erf(x), which is erfc(-x): erfc(|x|) for x < 0, 2 - erfc(x) for x >= 0 -- the Chebyshev fit alone.

    No series is needed here: its error is FRACTIONAL everywhere, so the negative tail (tiny values) keeps its
    relative accuracy, and near 0 both forms are ~1 with an error of ~1e-7 (the series exists for erf's own relative
    accuracy near 0, where erf itself is tiny). Half the work of evaluating erf, which GELU on a large activation
    feels.
    """
    erfc = _erfc_nonnegative(xp, xp.abs(x))
    return xp.where(x < 0.0, erfc, 2.0 - erfc)


def erf(x):
    """The error function, elementwise, to float32 accuracy (about 1e-7 relative) -- NumPy and the Array API have
    none. float64 inputs get the same float32-accurate approximation (documented, not hidden)."""
    xp = _xp(x)
    x32, out_dtype = _upcast(xp, x)
    return _cast(xp, _erf_float(xp, x32), out_dtype)


def gelu(x):
    """Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))): BERT's "gelu" and torch's default. Accurate to ~4e-7
    relative for x > -5 (a few float32 ulps; torch's float32 gelu is within 1.3e-7 near 0 but loses more in the
    negative tail)."""
    xp = _xp(x)
    x32, out_dtype = _upcast(xp, x)
    y = _one_plus_erf(xp, x32 * (1.0 / math.sqrt(2.0)))     # a fresh buffer, finished in place
    y *= x32
    y *= 0.5                                                 # scaling by 0.5 is exact: the same as (0.5 x) (1 + erf)
    return _cast(xp, y, out_dtype)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). GPT-2's "gelu_new"."""
    xp = _xp(x)
    x32, out_dtype = _upcast(xp, x)
    # The same formula, evaluated in place in two buffers instead of nine temporaries: at a prefill the MLP
    # activation is (B, T, 4C) -- 6 MB for GPT-2 124M at 512 tokens -- and every fresh buffer costs page faults.
    inner = x32 * x32
    inner *= x32
    inner *= 0.044715
    inner += x32
    inner *= _SQRT_2_OVER_PI                                       # sqrt(2/pi) (x + 0.044715 x^3)
    out = xp.tanh(inner)
    out += 1.0
    out *= x32
    out *= 0.5                                                     # 0.5 x (1 + tanh(...)); scaling by 0.5 is exact
    return _cast(xp, out, out_dtype)


def silu(x):
    """SiLU (swish), x * sigmoid(x). The sigmoid is written with exp(-|x|), which never overflows."""
    xp = _xp(x)
    x32, out_dtype = _upcast(xp, x)
    e = xp.exp(-xp.abs(x32))                                       # in (0, 1]
    sigmoid = xp.where(x32 >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    return _cast(xp, x32 * sigmoid, out_dtype)


def relu(x):
    """max(x, 0), elementwise (BERT configs may name it)."""
    xp = _xp(x)
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


def softmax(x, axis: int = -1):
    """exp(x - max) / sum(exp(x - max)) along `axis`. Half inputs are computed in float32 and cast back.

    subtle: a row that is entirely -inf (a query with nothing it may attend to) gives zeros, not NaN: its max is
    replaced by 0 so exp(-inf - 0) = 0, and its zero sum by 1.
    """
    xp = _xp(x)
    x32, out_dtype = _upcast(xp, x)
    m = xp.max(x32, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    e = xp.exp(x32 - m)
    total = xp.sum(e, axis=axis, keepdims=True)
    total = xp.where(total == 0.0, xp.ones_like(total), total)
    return _cast(xp, e / total, out_dtype)


def log_softmax(x, axis: int = -1):
    """log(softmax(x)) as x - max - log(sum(exp(x - max))) along `axis`; half inputs computed in float32.

    -inf entries stay -inf; a row that is entirely -inf gives NaN, as torch.log_softmax does (no distribution).
    """
    xp = _xp(x)
    x32, out_dtype = _upcast(xp, x)
    m = xp.max(x32, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    shifted = x32 - m
    return _cast(xp, shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True)), out_dtype)


# --- MLPs ------------------------------------------------------------------------------------------------------

def mlp_gelu(x, w_fc, b_fc, w_proj, b_proj, approximate: str = "tanh"):
    """The GPT-2 / BERT feed-forward block: proj(gelu(fc(x))). x (..., C), w_fc (C, F), w_proj (F, C) -> (..., C).

    approximate="tanh" is GPT-2's gelu_new, "none" the exact erf GELU (BERT).
    """
    if approximate == "tanh":
        act = gelu_tanh
    elif approximate == "none":
        act = gelu
    else:
        raise ValueError(f"mlp_gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    return linear(act(linear(x, w_fc, b_fc)), w_proj, b_proj)


def mlp_swiglu(x, w_gate, w_up, w_down):
    """The Llama feed-forward block: down(silu(gate(x)) * up(x)), no biases.

    x (..., C), w_gate and w_up (C, F), w_down (F, C) -> (..., C). (F is the config's intermediate_size; Llama's
    rule for it -- 2/3 of 4C, rounded up to a multiple -- lives in the config, not here.)
    """
    return linear(silu(linear(x, w_gate)) * linear(x, w_up), w_down)
