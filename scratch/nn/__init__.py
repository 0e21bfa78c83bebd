"""Transformer layers as plain functions on arrays, plus RoPE and the KV cache: what the models are built from.

Every function finds its namespace `xp` from its input arrays, so the same call runs on NumPy, array-api-strict
and CuPy (the two that build an array from nothing, causal_mask and rope_inv_freq, and KVCache take `xp`). No classes
except KVCache, no parameters held here: models own their weights and pass them in.
Conventions (shape letters as in `scratch`): weights are (C_in, C_out) and applied as `x @ w + b`; attention
tensors are (B, H, T, D) for queries and (B, Hkv, S, D) for keys/values; masks are boolean, True = may attend.
float32 in gives float32 out; float16 softmax/norms/activations compute in float32 internally (precision.py).

Public API, by module
    functional:             linear(x, w, b=None); embedding(ids, table, token_axis=0);
                            layer_norm(x, weight, bias, eps=1e-5); rms_norm(x, weight, eps=1e-6);
                            gelu(x); gelu_tanh(x); silu(x); relu(x); ACTIVATIONS; activation(name);
                            softmax(x, axis=-1); log_softmax(x, axis=-1)
    error_function:         erf(x); erfc(x)
    dot_product_attention:  attention(q, k, v, mask=None, scale=None); attention_reference(same);
                            split_heads(x, n_heads) (B, T, C) -> (B, H, T, D); merge_heads(x) (B, H, T, D) -> (B, T, C)
    masks:                  causal_mask(T, S, xp) -> (T, S); padding_mask(attention_mask) -> (B, 1, 1, S);
                            causal_padding_mask(attention_mask, T) -> (B, 1, T, S);
                            position_ids_from_attention_mask(attention_mask) -> (B, S)
    rope:                   ROPE_TYPES; rope_inv_freq(head_dim, theta=10000.0, scaling=None, *, xp=None, dtype=None)
                            -> (D/2,); rope_cos_sin(inv_freq, positions, dtype=None) -> cos, sin (B, 1, T, D);
                            apply_rope(x, cos, sin, layout="half"|"interleaved"); permute_for_half_layout(w, n_heads)
    kv_cache:               KVCache(xp, n_layers, batch_size, n_kv_heads, max_length, head_dim, dtype="float32")
                            with .length, .update(layer, k_new, v_new) -> (k, v), .advance(T), .get(layer),
                            .reorder(indices), .crop(length), .reset(), .nbytes, .bytes_per_token();
                            kv_bytes_per_token(n_layers, Hkv, D, bytes)

One decoder step with a cache (T new tokens; the model owns the loop, the cache owns `length`):
    offset = cache.length                                  # positions of the new tokens start here
    cos, sin = rope_cos_sin(inv_freq, positions)           # positions = offset + arange(T), or from the mask
    for i, layer in enumerate(layers):
        q, k, v = ... split_heads(linear(...)) ...; q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = cache.update(i, k, v)                       # (B, Hkv, offset + T, D)
        y = attention(q, k, v, mask=causal_mask(T, offset + T, xp))   # or causal_padding_mask(mask, T)
    cache.advance(T)
"""
from scratch.nn.dot_product_attention import attention, attention_reference, merge_heads, split_heads
from scratch.nn.error_function import erf, erfc
from scratch.nn.functional import (
    ACTIVATIONS,
    activation,
    embedding,
    gelu,
    gelu_tanh,
    layer_norm,
    linear,
    log_softmax,
    relu,
    rms_norm,
    silu,
    softmax,
)
from scratch.nn.kv_cache import KVCache, kv_bytes_per_token
from scratch.nn.masks import causal_mask, causal_padding_mask, padding_mask, position_ids_from_attention_mask
from scratch.nn.rope import ROPE_TYPES, apply_rope, permute_for_half_layout, rope_cos_sin, rope_inv_freq

__all__ = [
    "linear", "embedding", "layer_norm", "rms_norm", "gelu", "gelu_tanh", "relu", "silu", "softmax",
    "log_softmax", "ACTIVATIONS", "activation", "erf", "erfc",
    "attention", "attention_reference", "split_heads", "merge_heads",
    "causal_mask", "padding_mask", "causal_padding_mask", "position_ids_from_attention_mask",
    "ROPE_TYPES", "rope_inv_freq", "rope_cos_sin", "apply_rope", "permute_for_half_layout",
    "KVCache", "kv_bytes_per_token",
]
