"""GPT-2 (Radford et al. 2019) as frozen weights plus plain forward functions, equal to transformers' GPT2LMHeadModel.

A decoder-only transformer: learned absolute position embeddings, pre-norm blocks x = x + attn(LN(x)),
x = x + MLP(LN(x)), a final LayerNorm, and an output head tied to the token embeddings (logits = h @ wte^T).
GPT-2 stores its projections as Conv1D weights, already (C_in, C_out) -- the layout `scratch.nn.linear` wants, so
they are used as stored; c_attn fuses Q, K and V into one (C, 3C) matmul. The plumbing around the blocks (checked
inputs, positions and masks with a KV cache and left padding, the vocabulary matrix) is decoder.py, shared with
Llama. Not here: training, dropout, cross-attention, GPT2's classification heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import backends
from scratch.models.config import GPT2Config
from scratch.models.decoder import (TransposedVocabMatrix, causal_attention, check_logits_to_keep, decoder_inputs,
                                    last_positions, vocab_matrix)
from scratch.models.weights import WeightReader, check_dtype, put
from scratch.nn import KVCache, activation, embedding, kv_bytes_per_token, layer_norm, linear, merge_heads

__all__ = ["GPT2", "GPT2Layer", "from_weights", "from_config"]


# --- the model -----------------------------------------------------------------------------------------------------

def forward(model: GPT2, input_ids, cache: KVCache | None = None, attention_mask=None, logits_to_keep: int = 0,
            head: bool = True):
    """GPT-2: token + learned position embeddings, n_layer pre-norm blocks, a final LayerNorm, the tied head.

    Logits (B, T, V) for the T new tokens (with a cache, their keys/values are appended to it); `logits_to_keep` > 0
    keeps only the last that many positions; head=False returns the final-normed hidden states (B, T, C) instead.
    """
    check_logits_to_keep(logits_to_keep)                                # before the cache is touched
    ids, past, positions, mask = decoder_inputs(model, input_ids, cache, attention_mask)   # checked, on the backend
    T = ids.shape[1]
    if positions is None:
        pos_emb = model.wpe[past:past + T, :]                           # (T, C): contiguous positions, a slice
    else:
        pos_emb = embedding(positions, model.wpe)                       # (B, T, C): per-row positions (padding)
    x = model.token_embedding.embed(ids) + pos_emb                      # (B, T, C)
    for i, layer in enumerate(model.layers):
        x = block(model.config, layer, x, mask, cache, i)
    if cache is not None:
        cache.advance(T)
    x = layer_norm(x, model.ln_f_w, model.ln_f_b, model.config.layer_norm_epsilon)
    if not head:
        return x
    return model.head(last_positions(x, logits_to_keep))                # (B, T, V) = x @ wte^T


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
    act = activation(config.activation)                                 # "gelu_new": GELU's tanh approximation
    return x + linear(act(linear(h, layer.fc_w, layer.fc_b)), layer.proj_w, layer.proj_b)


# --- weights -------------------------------------------------------------------------------------------------------

INIT_STD = 0.02  # GPT-2's initializer_range


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
    token_embedding: TransposedVocabMatrix  # wte (V, C): token v's vector; also the tied output head
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
    def wte(self):
        """(V, C): the token embeddings as checkpoints store them (a view, no copy)."""
        return self.token_embedding.weight

    def head(self, x):
        """The tied output head: hidden states (..., C) -> logits (..., V) = x @ wte^T."""
        return self.token_embedding.logits(x)

    def parameter_count(self) -> int:
        """Distinct parameters (the tied head is wte, counted once) -- transformers' num_parameters()."""
        arrays = [self.wpe, self.ln_f_w, self.ln_f_b]
        arrays += [getattr(layer, name) for layer in self.layers for name in LAYER_NAMES]
        return math.prod(self.token_embedding.shape) + sum(math.prod(a.shape) for a in arrays)

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_length` positions (default: the context)."""
        max_length = self.max_length if max_length is None else max_length
        if max_length > self.max_length:
            raise ValueError(f"cache max_length {max_length} exceeds GPT-2's context of {self.max_length} "
                             f"(learned positions stop there)")
        c = self.config
        return KVCache(self.backend.xp, c.n_layer, batch_size, c.n_head, max_length, c.head_dim, dtype=self.dtype)

    def cache_bytes_per_token(self) -> int:
        """What one position of one sequence costs in `new_cache`'s buffers (known before allocating them)."""
        c = self.config
        return kv_bytes_per_token(c.n_layer, c.n_head, c.head_dim, np.dtype(self.dtype).itemsize)

    def __call__(self, input_ids, cache: KVCache | None = None, attention_mask=None, logits_to_keep: int = 0):
        return forward(self, input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep)

    def hidden_states(self, input_ids, cache: KVCache | None = None, attention_mask=None):
        """The final-normed hidden states (B, T, C) the head reads (contrastive search compares them)."""
        return forward(self, input_ids, cache=cache, attention_mask=attention_mask, head=False)


# --- building a model ----------------------------------------------------------------------------------------------

def _check_config(config) -> GPT2Config:
    if isinstance(config, dict):
        config = GPT2Config.from_hf(config)
    if not isinstance(config, GPT2Config):
        raise TypeError(f"expected a GPT2Config, got {type(config).__name__}")
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
                token_embedding=vocab_matrix(backend, get("wte.weight", (V, C)), dtype),
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
