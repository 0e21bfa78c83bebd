"""GPT-2 (Radford et al. 2019) as frozen weights plus plain forward functions, equal to transformers' GPT2LMHeadModel.

A decoder-only transformer: learned absolute position embeddings, pre-norm blocks x = x + attn(LN(x)),
x = x + MLP(LN(x)), a final LayerNorm, and an output head tied to the token embeddings (logits = h @ wte^T).
GPT-2 stores its projections as Conv1D weights, already (C_in, C_out) -- the layout `scratch.nn.linear` wants, so
they are used as stored; c_attn fuses Q, K and V into one (C, 3C) matmul. This file also holds the decoder plumbing
Llama reuses (input ids at the edge, positions and masks with a KV cache and left padding, weight lookup with
errors that name the tensor). Not here: training, dropout, cross-attention, GPT2's classification heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import backends
from scratch.models.config import GPT2Config
from scratch.models.inputs import token_ids
from scratch.nn import (
    KVCache,
    attention,
    causal_mask,
    causal_padding_mask,
    embedding,
    gelu,
    gelu_tanh,
    layer_norm,
    linear,
    merge_heads,
    position_ids_from_attention_mask,
)

__all__ = ["GPT2", "GPT2Layer", "from_weights", "from_config"]

INIT_STD = 0.02  # GPT-2's initializer_range


# --- decoder plumbing shared with llama.py ---------------------------------------------------------------------

FLOAT_DTYPES = ("float16", "float32", "float64")


def check_dtype(backend: backends.Backend, dtype) -> str:
    """A floating dtype name the backend has (strict has no float16)."""
    dtype = "float32" if dtype is None else dtype
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"a model runs in a floating dtype ({', '.join(FLOAT_DTYPES)}), got {dtype!r}")
    backend.dtype(dtype)
    return dtype


class WeightReader:
    """Looks up Hugging Face tensors by name, checks shape and dtype, and says which tensor is wrong.

    `prefix` is tried first (e.g. "transformer." for GPT2LMHeadModel), then the bare name (GPT2Model).
    """

    def __init__(self, weights: dict[str, np.ndarray], prefixes: tuple[str, ...], what: str):
        self.weights, self.prefixes, self.what = weights, prefixes, what

    def __contains__(self, name: str) -> bool:
        return any(p + name in self.weights for p in self.prefixes)

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        for prefix in self.prefixes:
            if prefix + name in self.weights:
                array = self.weights[prefix + name]
                break
        else:
            tried = " or ".join(repr(p + name) for p in self.prefixes)
            raise ValueError(f"missing tensor {tried} in the {self.what} checkpoint "
                             f"({len(self.weights)} tensors present)")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"tensor {prefix + name!r} has shape {tuple(array.shape)}, expected {tuple(shape)} "
                             f"for the {self.what} config")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"tensor {prefix + name!r} has dtype {array.dtype}, expected a float")
        return array


def put(backend: backends.Backend, host: np.ndarray, dtype: str):
    """A host array moved to the backend as a C-contiguous array of `dtype`, in memory the model owns.

    subtle: the safetensors reader returns memory-mapped views; np.ascontiguousarray would hand those through
    unchanged, leaving the model's weights backed by the file (first use pays the page faults, and a rewritten
    file would change the model). Any view is copied once, here; an array made at load (a concatenation, a fresh
    random draw) is already owned and is kept as it is.
    """
    owned = host.flags.owndata and host.flags.c_contiguous and not isinstance(host, np.memmap)
    return backend.asarray(host if owned else np.array(host, order="C"), dtype=dtype)


def put_transposed(backend: backends.Backend, host: np.ndarray, dtype: str):
    """put(host.T) for a (V, C) checkpoint matrix stored (C, V). The transposed copy is made 64 rows at a time:
    each block stays in cache while it is written out, ~4x faster than one element-by-element transposed copy of
    a large memory-mapped matrix (measured: 0.16 vs 0.61 s for 32,000 x 2,048 float32)."""
    V, C = host.shape
    out = np.empty((C, V), dtype=host.dtype)                            # owned and C-contiguous: put keeps it
    for start in range(0, V, 64):
        out[:, start:start + 64] = host[start:start + 64].T
    return put(backend, out, dtype)


def positions_and_mask(backend: backends.Backend, B: int, T: int, past: int, attention_mask):
    """Where the T new tokens sit and what they may attend to, given `past` cached positions.

    Returns (positions, mask): positions is None when every row's positions are past .. past+T-1 (no padding:
    callers slice their tables), else (B, T) int64 from the mask (cumsum - 1, as transformers' generate computes
    them, so a left-padded row's first real token is position 0); mask is boolean, True = may attend, (T, S) or
    (B, 1, T, S) with S = past + T, or None when nothing needs masking (one new token, no padding).
    """
    S = past + T
    if attention_mask is None:
        return None, (causal_mask(T, S, backend) if T > 1 else None)
    if backends.array_kind(attention_mask) in (None, "numpy") or isinstance(attention_mask, (list, tuple)):
        host = np.asarray(attention_mask)
        if host.ndim != 2 or host.shape != (B, S):
            raise ValueError(f"attention_mask must be (B, cached + new) = ({B}, {S}), got shape {host.shape}")
        am = backend.asarray(host != 0)
    else:
        am = attention_mask
        if tuple(am.shape) != (B, S):
            raise ValueError(f"attention_mask must be (B, cached + new) = ({B}, {S}), got shape {tuple(am.shape)}")
    positions = position_ids_from_attention_mask(am)[:, past:]       # (B, T): the new tokens' positions
    # subtle: a left-padding query sees no key at all; attention gives it a zero vector, never NaN, and its
    # logits are never read.
    return positions, causal_padding_mask(am, T)                     # (B, 1, T, S)


# Query rows per attention call in a long prefill. Causal attention lets query block [i, i+128) skip every key after
# i+128 (masked anyway), so a 512-token prefill computes ~60% of the T x S scores -- the causal skipping of
# FlashAttention (Dao et al. 2022), without its tiling of the keys.
PREFILL_BLOCK = 128


def causal_attention(q, k, v, mask, block: int | None = None):
    """`scratch.nn.attention` for a causal mask, in query blocks that see only the keys they may attend to.

    q (B, H, T, D), k and v (B, Hkv, S, D), mask (T, S) or (B, 1, T, S) that is causal with offset S - T (query i
    may see no key after S - T + i). Exact: the skipped keys are masked, so they would add exp(-inf) = 0.
    `block` defaults to PREFILL_BLOCK; a call with T <= block is one plain attention call.
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


def check_length(past: int, T: int, limit: int, what: str) -> None:
    if past + T > limit:
        raise ValueError(f"{what}: {past} cached + {T} new positions exceed the model's context of {limit}")


# --- weights -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPT2Layer:
    """One pre-norm block. Every matrix is (C_in, C_out), as GPT-2's Conv1D stores it."""

    ln_1_w: Any     # (C,)
    ln_1_b: Any     # (C,)
    qkv_w: Any      # (C, 3C) c_attn: columns [query | key | value]
    qkv_b: Any      # (3C,)
    attn_proj_w: Any  # (C, C) c_proj of the attention
    attn_proj_b: Any  # (C,)
    ln_2_w: Any     # (C,)
    ln_2_b: Any     # (C,)
    fc_w: Any       # (C, F) c_fc
    fc_b: Any       # (F,)
    proj_w: Any     # (F, C) c_proj of the MLP
    proj_b: Any     # (C,)


LAYER_NAMES = {  # our field -> Hugging Face name under h.{i}.
    "ln_1_w": "ln_1.weight", "ln_1_b": "ln_1.bias",
    "qkv_w": "attn.c_attn.weight", "qkv_b": "attn.c_attn.bias",
    "attn_proj_w": "attn.c_proj.weight", "attn_proj_b": "attn.c_proj.bias",
    "ln_2_w": "ln_2.weight", "ln_2_b": "ln_2.bias",
    "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias",
    "proj_w": "mlp.c_proj.weight", "proj_b": "mlp.c_proj.bias",
}


def _layer_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    C, F = config.n_embd, config.n_inner
    return {"ln_1_w": (C,), "ln_1_b": (C,), "qkv_w": (C, 3 * C), "qkv_b": (3 * C,), "attn_proj_w": (C, C),
            "attn_proj_b": (C,), "ln_2_w": (C,), "ln_2_b": (C,), "fc_w": (C, F), "fc_b": (F,), "proj_w": (F, C),
            "proj_b": (C,)}


# --- the model -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class GPT2:
    """GPT-2 with its weights on one backend. `model(input_ids, cache=None, attention_mask=None)` -> logits.

    input_ids (B, T) integers (host or backend array); returns (B, T, V) logits on the backend, for the T given
    positions only. With a cache (`model.new_cache(B, S_max)`) the T tokens are appended after the cached ones;
    `attention_mask` (B, cached + T) of 0/1 marks real tokens (left padding).
    """

    config: GPT2Config
    backend: backends.Backend
    dtype: str
    wte_t: Any      # (C, V) token embeddings stored transposed: column v embeds token v. It IS the tied output
                    # head, contiguous as its matmul wants; `wte` gives the checkpoint's (V, C) view
    wpe: Any        # (P, C) learned absolute position embeddings, P = n_positions
    layers: tuple[GPT2Layer, ...]
    ln_f_w: Any     # (C,)
    ln_f_b: Any     # (C,)

    def __repr__(self) -> str:
        c = self.config
        return (f"<GPT2 L={c.n_layer} C={c.n_embd} H={c.n_head} V={c.vocab_size} P={c.n_positions} "
                f"on {self.backend.name} {self.dtype}>")

    @property
    def n_vocab(self) -> int:
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        return self.config.n_positions

    @property
    def head(self):
        """(C, V): the tied output head -- the stored matrix itself.

        Why (C, V) and not the checkpoint's (V, C): BLAS multiplies 4-8 rows (batched decoding, beam search) by a
        contiguous (C, V) matrix ~1.5x faster than by a transposed view of (V, C) (measured with NumPy's OpenBLAS:
        11.8 vs 17.3 ms for GPT-2 124M's head at 8 rows; equal at 1 row). Keeping both layouts would cost V*C more
        memory (154 MB for GPT-2 124M); the lookup at the input reads columns instead (`embedding(token_axis=1)`).
        """
        return self.wte_t

    @property
    def wte(self):
        """(V, C): the token embeddings as checkpoints store them -- a transposed view, no copy."""
        return self.backend.xp.permute_dims(self.wte_t, (1, 0))

    def parameter_count(self) -> int:
        """Distinct parameters (the tied head is wte, counted once) -- transformers' num_parameters()."""
        arrays = [self.wte_t, self.wpe, self.ln_f_w, self.ln_f_b]
        arrays += [getattr(layer, name) for layer in self.layers for name in LAYER_NAMES]
        return sum(math.prod(a.shape) for a in arrays)

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_length` positions (default: the context)."""
        max_length = self.max_length if max_length is None else max_length
        if max_length > self.max_length:
            raise ValueError(f"cache max_length {max_length} exceeds GPT-2's context of {self.max_length} "
                             f"(learned positions stop there)")
        c = self.config
        return KVCache(self.backend, c.n_layer, batch_size, c.n_head, max_length, c.head_dim, dtype=self.dtype)

    def __call__(self, input_ids, cache: KVCache | None = None, attention_mask=None, logits_to_keep: int = 0):
        return forward(self, input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep)

    def hidden_states(self, input_ids, cache: KVCache | None = None, attention_mask=None):
        """The final-normed hidden states (B, T, C) the head reads (contrastive search compares them)."""
        return hidden_states(self, input_ids, cache=cache, attention_mask=attention_mask)


def forward(model: GPT2, input_ids, cache: KVCache | None = None, attention_mask=None, logits_to_keep: int = 0):
    """Logits (B, T, V) for the T new tokens; with a cache, their keys/values are appended to it.
    `logits_to_keep` > 0 returns only the last that many positions, (B, logits_to_keep, V)."""
    check_logits_to_keep(logits_to_keep)                                # before the cache is touched
    x = hidden_states(model, input_ids, cache=cache, attention_mask=attention_mask)   # (B, T, C)
    return output_logits(model, x, logits_to_keep)


def check_logits_to_keep(logits_to_keep) -> None:
    if isinstance(logits_to_keep, (bool, np.bool_)) or not isinstance(logits_to_keep, (int, np.integer)) \
            or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an int >= 0 (0 keeps every position), got {logits_to_keep!r}")


def output_logits(model, x, logits_to_keep: int = 0):
    """The output head on hidden states x (B, T, C) -> (B, T, V), or (B, logits_to_keep, V) for the last positions.

    Why keep fewer: generation reads only the last position's logits after the prompt, and the head costs 2*C*V
    FLOPs per position -- a third of GPT-2 124M's work per token -- so a prefill skips it for the other T-1
    (transformers' `logits_to_keep`, same name and meaning; 0 keeps all).
    """
    if 0 < logits_to_keep < x.shape[1]:
        x = x[:, x.shape[1] - int(logits_to_keep):, :]                  # (B, logits_to_keep, C)
    return linear(x, model.head)                                        # (B, T, C) @ (C, V) -> (B, T, V), one BLAS call


def hidden_states(model: GPT2, input_ids, cache: KVCache | None = None, attention_mask=None):
    """The last block's output after the final LayerNorm, (B, T, C): everything but the output head."""
    ids = token_ids(model.backend, input_ids, model.n_vocab)            # (B, T) int64
    B, T = ids.shape
    past = 0 if cache is None else cache.length
    check_length(past, T, model.max_length, "GPT-2")
    positions, mask = positions_and_mask(model.backend, B, T, past, attention_mask)
    if positions is None:
        pos_emb = model.wpe[past:past + T, :]                           # (T, C): contiguous positions, a slice
    else:
        pos_emb = embedding(positions, model.wpe)                       # (B, T, C): per-row positions
    x = embedding(ids, model.wte_t, token_axis=1) + pos_emb             # (B, T, C): columns of the (C, V) table
    for i, layer in enumerate(model.layers):
        x = block(model.config, layer, x, mask, cache, i)
    if cache is not None:
        cache.advance(T)
    return layer_norm(x, model.ln_f_w, model.ln_f_b, model.config.layer_norm_epsilon)


def block(config: GPT2Config, layer: GPT2Layer, x, mask, cache: KVCache | None, index: int):
    """One pre-norm block: x + attn(LN1(x)), then + MLP(LN2(x)). x (B, T, C) -> (B, T, C)."""
    xp = backends.namespace_of(x)
    B, T, C = x.shape
    H, D = config.n_head, config.head_dim
    h = layer_norm(x, layer.ln_1_w, layer.ln_1_b, config.layer_norm_epsilon)
    qkv = linear(h, layer.qkv_w, layer.qkv_b)                           # (B, T, 3C), one matmul for Q, K, V
    qkv = xp.permute_dims(xp.reshape(qkv, (B, T, 3, H, D)), (2, 0, 3, 1, 4))   # (3, B, H, T, D)
    q, k, v = qkv[0, ...], qkv[1, ...], qkv[2, ...]                     # each (B, H, T, D)
    if cache is not None:
        k, v = cache.update(index, k, v)                                # (B, H, S, D), S = cached + T
    y = causal_attention(q, k, v, mask)                                 # (B, H, T, D), scale 1/sqrt(D)
    x = x + linear(merge_heads(y), layer.attn_proj_w, layer.attn_proj_b)
    h = layer_norm(x, layer.ln_2_w, layer.ln_2_b, config.layer_norm_epsilon)
    act = gelu if config.activation == "gelu" else gelu_tanh            # "gelu_new" / "gelu_pytorch_tanh": tanh
    return x + linear(act(linear(h, layer.fc_w, layer.fc_b)), layer.proj_w, layer.proj_b)


# --- building a model ----------------------------------------------------------------------------------------------

def _check_config(config) -> GPT2Config:
    if isinstance(config, dict):
        config = GPT2Config.from_hf(config)
    if not isinstance(config, GPT2Config):
        raise TypeError(f"expected a GPT2Config, got {type(config).__name__}")
    if config.activation not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"GPT-2 activation {config.activation!r} is not supported here (gelu, gelu_new)")
    return config


def _assemble(config: GPT2Config, get, backend, dtype: str) -> GPT2:
    """Build the model from `get(hf_name, shape) -> host array` (names without the "transformer." prefix)."""
    C, V, P = config.n_embd, config.vocab_size, config.n_positions
    shapes = _layer_shapes(config)
    layers = tuple(
        GPT2Layer(**{field: put(backend, get(f"h.{i}.{name}", shapes[field]), dtype)
                     for field, name in LAYER_NAMES.items()})
        for i in range(config.n_layer))
    return GPT2(config=config, backend=backend, dtype=dtype,
                wte_t=put_transposed(backend, get("wte.weight", (V, C)), dtype),   # (C, V)
                wpe=put(backend, get("wpe.weight", (P, C)), dtype),
                layers=layers,
                ln_f_w=put(backend, get("ln_f.weight", (C,)), dtype),
                ln_f_b=put(backend, get("ln_f.bias", (C,)), dtype))


def from_weights(config: GPT2Config, weights: dict[str, np.ndarray], backend="numpy", dtype="float32") -> GPT2:
    """GPT-2 from Hugging Face tensors (host arrays by name), as GPT2LMHeadModel ("transformer.h.0...") or GPT2Model
    ("h.0...") saves them. Extra tensors (the old `attn.bias` mask buffers, a duplicated lm_head.weight) are
    ignored. A missing tensor or a wrong shape raises ValueError naming it."""
    config = _check_config(config)
    backend = backends.get(backend)
    dtype = check_dtype(backend, dtype)
    if not config.tie_word_embeddings:
        raise ValueError("GPT-2 with an untied output head (tie_word_embeddings=false) is not supported")
    reader = WeightReader(weights, ("transformer.", ""), "GPT-2")
    extra = f"h.{config.n_layer}.ln_1.weight"
    if extra in reader:
        raise ValueError(f"the checkpoint has more layers than config.n_layer ({config.n_layer}): found {extra!r}")
    return _assemble(config, reader, backend, dtype)


def from_config(config: GPT2Config, backend="numpy", seed: int | None = 0, dtype="float32") -> GPT2:
    """A randomly initialised GPT-2, as transformers initialises it: N(0, 0.02^2) matrices and embeddings, the two
    residual projections (c_proj) scaled down by 1/sqrt(2 * n_layer) (GPT-2 paper, section 2.3), zero biases,
    LayerNorm weight one. Draws come from the host generator `backends.rng(seed)`, so every backend gets the same
    model for the same seed."""
    config = _check_config(config)
    backend = backends.get(backend)
    dtype = check_dtype(backend, dtype)
    rng = backends.rng(seed)
    residual_std = INIT_STD / math.sqrt(2 * config.n_layer)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            return np.ones(shape, dtype=np.float32)
        if name.endswith(".bias"):
            return np.zeros(shape, dtype=np.float32)
        std = residual_std if name.endswith("c_proj.weight") else INIT_STD
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    return _assemble(config, get, backend, dtype)
