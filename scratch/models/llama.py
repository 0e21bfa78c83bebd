"""Llama 2 / 3.x (Touvron et al. 2023; Grattafiori et al. 2024) as frozen weights plus plain forward functions,
equal to transformers' LlamaForCausalLM.

What Llama changes from GPT-2 (gpt2.py): RMSNorm instead of LayerNorm, no biases, rotary position embeddings (RoPE,
Su et al. 2021) applied to queries and keys instead of a learned position table, grouped-query attention (Hkv <= H
key/value heads, Ainslie et al. 2023), a SwiGLU MLP (Shazeer 2020), an untied output head (tied in Llama 3.2 1B/3B)
and a head_dim that need not be C / H. RoPE uses the rotate-half layout of Hugging Face checkpoints; rope scaling
"default", "linear" and "llama3" come from the config. The plumbing around the blocks is decoder.py, as for GPT-2.
Not here: Meta's original (interleaved) checkpoints -- convert them with `scratch.nn.permute_for_half_layout`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import backends
from scratch.models.config import LlamaConfig
from scratch.models.decoder import (TransposedVocabMatrix, causal_attention, check_logits_to_keep, decoder_inputs,
                                    last_positions, vocab_matrix)
from scratch.models.weights import WeightReader, check_dtype, put
from scratch.nn import (
    KVCache,
    activation,
    apply_rope,
    kv_bytes_per_token,
    linear,
    merge_heads,
    rms_norm,
    rope_cos_sin,
    rope_inv_freq,
)

__all__ = ["Llama", "LlamaLayer", "from_weights", "from_config"]


# --- the model -----------------------------------------------------------------------------------------------------

def forward(model: Llama, input_ids, cache: KVCache | None = None, attention_mask=None, logits_to_keep: int = 0,
            head: bool = True):
    """Llama: token embeddings, pre-norm blocks that rotate queries and keys by their positions (RoPE), a final
    RMSNorm, the output head (lm_head, or embed_tokens when tied). Logits (B, T, V) for the T new tokens, as
    gpt2.forward: the cache, `logits_to_keep` and head=False work the same way."""
    check_logits_to_keep(logits_to_keep)                                # before the cache is touched
    ids, past, positions, mask = decoder_inputs(model, input_ids, cache, attention_mask)   # checked, on the backend
    T = ids.shape[1]
    cos, sin = model.rope_cos_sin(past, T, positions)                   # (1 or B, 1, T, D): the new positions
    x = model.token_embedding.embed(ids)                                # (B, T, C)
    for i, layer in enumerate(model.layers):
        x = block(model.config, layer, x, cos, sin, mask, cache, i)
    if cache is not None:
        cache.advance(T)
    x = rms_norm(x, model.norm_w, model.config.rms_norm_eps)
    if not head:
        return x
    return model.head(last_positions(x, logits_to_keep))                # (B, T, V) = x @ lm_head^T


def block(config: LlamaConfig, layer: LlamaLayer, x, cos, sin, mask, cache: KVCache | None, index: int):
    """One pre-norm block: x + attn(RMSNorm(x)), then + SwiGLU(RMSNorm(x)). x (B, T, C) -> (B, T, C)."""
    xp = backends.namespace_of(x)
    B, T, C = x.shape
    H, Hkv, D, F = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.intermediate_size
    h = rms_norm(x, layer.attn_norm_w, config.rms_norm_eps)
    qkv = linear(h, layer.qkv_w, layer.qkv_b)                           # (B, T, (H + 2 Hkv) D)
    qkv = xp.permute_dims(xp.reshape(qkv, (B, T, H + 2 * Hkv, D)), (0, 2, 1, 3))   # (B, H + 2 Hkv, T, D)
    q = apply_rope(qkv[:, :H, ...], cos, sin, layout="half")           # (B, H, T, D)
    k = apply_rope(qkv[:, H:H + Hkv, ...], cos, sin, layout="half")    # (B, Hkv, T, D)
    v = qkv[:, H + Hkv:, ...]                                           # (B, Hkv, T, D)
    if cache is not None:
        k, v = cache.update(index, k, v)                                # (B, Hkv, S, D), S = cached + T
    y = causal_attention(q, k, v, mask)                                 # (B, H, T, D); q head h <- kv head h // G
    x = x + linear(merge_heads(y), layer.o_w, layer.o_b)                # (B, T, H D) @ (H D, C)
    h = rms_norm(x, layer.mlp_norm_w, config.rms_norm_eps)
    gate_up = linear(h, layer.gate_up_w, layer.gate_up_b)               # (B, T, 2F), gate and up in one matmul
    act = activation(config.hidden_act)                                 # "silu": the MLP is SwiGLU
    return x + linear(act(gate_up[..., :F]) * gate_up[..., F:], layer.down_w, layer.down_b)


# --- weights -------------------------------------------------------------------------------------------------------

INIT_STD = 0.02  # transformers' initializer_range for Llama: every matrix and embedding starts as N(0, 0.02^2)


@dataclass(frozen=True)
class LlamaLayer:
    """One pre-norm block. Matrices are (C_in, C_out): torch's nn.Linear (out, in) weights transposed once at load,
    and Q/K/V (and gate/up) fused so each takes one matmul. Biases are None unless the config asks for them."""

    attn_norm_w: Any    # (C,) input_layernorm
    qkv_w: Any          # (C, (H + 2 Hkv) D): columns [q_proj | k_proj | v_proj]
    o_w: Any            # (H D, C) o_proj
    mlp_norm_w: Any     # (C,) post_attention_layernorm
    gate_up_w: Any      # (C, 2F): columns [gate_proj | up_proj]
    down_w: Any         # (F, C) down_proj
    qkv_b: Any = None   # ((H + 2 Hkv) D,) only with attention_bias
    o_b: Any = None     # (C,) only with attention_bias
    gate_up_b: Any = None  # (2F,) only with mlp_bias
    down_b: Any = None  # (C,) only with mlp_bias


@dataclass(frozen=True, eq=False)
class Llama:
    """Llama with its weights on one backend. `model(input_ids, cache=None, attention_mask=None)` -> logits.

    input_ids (B, T) integers (host or backend array); returns (B, T, V) logits on the backend for the T given
    positions. With a cache (`model.new_cache(B, S_max)`) the tokens are appended after the cached ones;
    `attention_mask` (B, cached + T) of 0/1 marks real tokens (left padding; positions then come from the mask).
    """

    config: LlamaConfig
    backend: backends.Backend
    dtype: str
    token_embedding: TransposedVocabMatrix        # embed_tokens (V, C): token v's vector (the head too when tied)
    layers: tuple[LlamaLayer, ...]
    norm_w: Any                                   # (C,) the final RMSNorm
    untied_head: TransposedVocabMatrix | None     # lm_head (V, C); None when the head is the token embedding
    inv_freq: Any                                 # (D/2,) float32 RoPE frequencies, scaling applied
    # RoPE cos/sin tables (1, 1, P, D), filled lazily up to the longest position seen: the only mutable part.
    _rope: dict = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        c = self.config
        return (f"<Llama L={c.num_hidden_layers} C={c.hidden_size} H={c.num_attention_heads} "
                f"Hkv={c.num_key_value_heads} D={c.head_dim} V={c.vocab_size} on {self.backend.name} {self.dtype}>")

    @property
    def n_vocab(self) -> int:
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        return self.config.max_position_embeddings

    @property
    def embed(self):
        """(V, C): embed_tokens as checkpoints store it (a view, no copy)."""
        return self.token_embedding.weight

    @property
    def lm_head(self):
        """(V, C): the untied lm_head as checkpoints store it (a view), or None when tied."""
        return None if self.untied_head is None else self.untied_head.weight

    def head(self, x):
        """The output head: hidden states (..., C) -> logits (..., V) = x @ lm_head^T (embed_tokens when tied)."""
        return (self.token_embedding if self.untied_head is None else self.untied_head).logits(x)

    def parameter_count(self) -> int:
        """Distinct parameters (a tied head counted once) -- transformers' num_parameters()."""
        vocab = [self.token_embedding] + ([] if self.untied_head is None else [self.untied_head])
        arrays = [self.norm_w] + [a for layer in self.layers for a in vars(layer).values() if a is not None]
        return sum(math.prod(m.shape) for m in vocab) + sum(math.prod(a.shape) for a in arrays)

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_length` positions (default: the context --
        pass a smaller one for long-context models, the cache is allocated up front)."""
        max_length = self.max_length if max_length is None else max_length
        if max_length > self.max_length:
            raise ValueError(f"cache max_length {max_length} exceeds the model's context of {self.max_length}")
        c = self.config
        return KVCache(self.backend.xp, c.num_hidden_layers, batch_size, c.num_key_value_heads, max_length,
                       c.head_dim, dtype=self.dtype)

    def cache_bytes_per_token(self) -> int:
        """What one position of one sequence costs in `new_cache`'s buffers (known before allocating them)."""
        c = self.config
        return kv_bytes_per_token(c.num_hidden_layers, c.num_key_value_heads, c.head_dim,
                                  np.dtype(self.dtype).itemsize)

    def rope_cos_sin(self, past: int, T: int, positions=None):
        """RoPE's cos, sin for T new tokens: (1, 1, T, D) for positions past .. past+T-1 (a slice of `rope_table`),
        or (B, 1, T, D) for per-row `positions` (B, T) (left padding)."""
        if positions is not None:
            return rope_cos_sin(self.inv_freq, positions, dtype=self.backend.dtype(self.dtype))
        cos, sin = self.rope_table(past + T)
        return cos[:, :, past:past + T, :], sin[:, :, past:past + T, :]

    def rope_table(self, length: int):
        """cos, sin (1, 1, P, D) for positions 0 .. P-1 with P >= length, computed once and grown by doubling."""
        have = self._rope.get("cos")
        if have is None or have.shape[2] < length:
            xp = self.backend.xp
            size = min(self.max_length, max(length, 256, 2 * (0 if have is None else have.shape[2])))
            positions = xp.arange(size, dtype=xp.int64)
            self._rope["cos"], self._rope["sin"] = rope_cos_sin(self.inv_freq, positions,
                                                                dtype=self.backend.dtype(self.dtype))
        return self._rope["cos"], self._rope["sin"]

    def __call__(self, input_ids, cache: KVCache | None = None, attention_mask=None, logits_to_keep: int = 0):
        return forward(self, input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep)

    def hidden_states(self, input_ids, cache: KVCache | None = None, attention_mask=None):
        """The final-normed hidden states (B, T, C) the head reads (contrastive search compares them)."""
        return forward(self, input_ids, cache=cache, attention_mask=attention_mask, head=False)


# --- building a model ----------------------------------------------------------------------------------------------

def _check_config(config) -> LlamaConfig:
    if isinstance(config, dict):
        config = LlamaConfig.from_hf(config)
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"expected a LlamaConfig, got {type(config).__name__}")
    return config


def _shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face (torch layout) shapes of one layer's tensors, by name under layers.{i}."""
    C, F, D = config.hidden_size, config.intermediate_size, config.head_dim
    H, Hkv = config.num_attention_heads, config.num_key_value_heads
    shapes = {
        "input_layernorm.weight": (C,), "post_attention_layernorm.weight": (C,),
        "self_attn.q_proj.weight": (H * D, C), "self_attn.k_proj.weight": (Hkv * D, C),
        "self_attn.v_proj.weight": (Hkv * D, C), "self_attn.o_proj.weight": (C, H * D),
        "mlp.gate_proj.weight": (F, C), "mlp.up_proj.weight": (F, C), "mlp.down_proj.weight": (C, F),
    }
    if config.attention_bias:
        shapes.update({"self_attn.q_proj.bias": (H * D,), "self_attn.k_proj.bias": (Hkv * D,),
                       "self_attn.v_proj.bias": (Hkv * D,), "self_attn.o_proj.bias": (C,)})
    if config.mlp_bias:
        shapes.update({"mlp.gate_proj.bias": (F,), "mlp.up_proj.bias": (F,), "mlp.down_proj.bias": (C,)})
    return shapes


def _layer(config: LlamaConfig, get, backend, dtype: str, i: int) -> LlamaLayer:
    """Layer i from `get(hf_name, torch_shape) -> host array`, Q/K/V and gate/up fused into one matrix each."""
    shapes = _shapes(config)

    def tensor(name: str) -> np.ndarray:
        return get(f"layers.{i}.{name}", shapes[name])

    def weight(name: str) -> np.ndarray:          # torch nn.Linear (C_out, C_in) -> ours (C_in, C_out)
        return tensor(name).T

    def on_backend(host: np.ndarray):
        return put(backend, host, dtype)

    biases = {}
    if config.attention_bias:
        biases["qkv_b"] = on_backend(np.concatenate(
            [tensor("self_attn.q_proj.bias"), tensor("self_attn.k_proj.bias"), tensor("self_attn.v_proj.bias")]))
        biases["o_b"] = on_backend(tensor("self_attn.o_proj.bias"))
    if config.mlp_bias:
        biases["gate_up_b"] = on_backend(np.concatenate([tensor("mlp.gate_proj.bias"), tensor("mlp.up_proj.bias")]))
        biases["down_b"] = on_backend(tensor("mlp.down_proj.bias"))
    return LlamaLayer(
        attn_norm_w=on_backend(tensor("input_layernorm.weight")),
        qkv_w=on_backend(np.concatenate(
            [weight("self_attn.q_proj.weight"), weight("self_attn.k_proj.weight"), weight("self_attn.v_proj.weight")],
            axis=1)),
        o_w=on_backend(weight("self_attn.o_proj.weight")),
        mlp_norm_w=on_backend(tensor("post_attention_layernorm.weight")),
        gate_up_w=on_backend(np.concatenate([weight("mlp.gate_proj.weight"), weight("mlp.up_proj.weight")], axis=1)),
        down_w=on_backend(weight("mlp.down_proj.weight")),
        **biases)


def _assemble(config: LlamaConfig, get, backend, dtype: str, untied_head: bool) -> Llama:
    """Build the model from `get(hf_name, torch_shape) -> host array` (names without the "model." prefix)."""
    C, V = config.hidden_size, config.vocab_size
    layers = tuple(_layer(config, get, backend, dtype, i) for i in range(config.num_hidden_layers))
    # subtle: the frequencies stay float32 even in a float16 model (positions * inv_freq needs the precision);
    # cos and sin are cast to the model's dtype afterwards, as transformers does.
    inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling, xp=backend.xp, dtype="float32")
    return Llama(config=config, backend=backend, dtype=dtype,
                 token_embedding=vocab_matrix(backend, get("embed_tokens.weight", (V, C)), dtype),
                 layers=layers,
                 norm_w=put(backend, get("norm.weight", (C,)), dtype),
                 untied_head=vocab_matrix(backend, get("lm_head.weight", (V, C)), dtype) if untied_head else None,
                 inv_freq=inv_freq)


def from_weights(config: LlamaConfig, weights: dict[str, np.ndarray], backend="numpy", dtype="float32") -> Llama:
    """Llama from Hugging Face tensors (host arrays by name), as LlamaForCausalLM saves them ("model.layers.0...",
    "lm_head.weight" when untied) or LlamaModel ("layers.0..."; it has no head, so it must be tied). A missing
    tensor or a wrong shape raises ValueError naming it; extra tensors (rotary inv_freq buffers) are ignored."""
    config = _check_config(config)
    backend = backends.get(backend)
    dtype = check_dtype(backend, dtype)
    body = WeightReader(weights, ("model.", ""), "Llama")
    extra = f"layers.{config.num_hidden_layers}.input_layernorm.weight"
    if extra in body:
        raise ValueError(f"the checkpoint has more layers than config.num_hidden_layers "
                         f"({config.num_hidden_layers}): found {extra!r}")
    head = WeightReader(weights, ("",), "Llama")

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return head(name, shape) if name == "lm_head.weight" else body(name, shape)

    # A tied checkpoint may still carry lm_head.weight (a copy of embed_tokens); the config decides.
    return _assemble(config, get, backend, dtype, untied_head=not config.tie_word_embeddings)


def from_config(config: LlamaConfig, backend="numpy", seed: int | None = 0, dtype="float32") -> Llama:
    """A randomly initialised Llama, as transformers initialises it: N(0, 0.02^2) matrices and embeddings, zero
    biases, RMSNorm weight one. Draws come from the host generator `backends.rng(seed)`, so every backend gets the
    same model for the same seed."""
    config = _check_config(config)
    backend = backends.get(backend)
    dtype = check_dtype(backend, dtype)
    rng = backends.rng(seed)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name.endswith("norm.weight"):
            return np.ones(shape, dtype=np.float32)
        if name.endswith(".bias"):
            return np.zeros(shape, dtype=np.float32)
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)

    return _assemble(config, get, backend, dtype, untied_head=not config.tie_word_embeddings)
