"""Llama's training forward and backward, block by block, from the layer pairs of layers.py.

What changes from gpt2.py is what changes in the model: RMSNorm, RoPE on queries and keys (its backward is the
rotation back), grouped-query attention (each kv head's gradient sums over its G query heads, inside
attention_backward), a gated MLP (SwiGLU for hidden_act "silu"), optional biases, and a head that is tied to the
embedding or not. The model keeps q/k/v and gate/up fused and every matrix (in, out); parameters and gradients are
handed out under LlamaForCausalLM.named_parameters() names and (out, in) shapes, as views of that storage.
Not here: the loop over blocks and gradient checkpointing (model_grads.py), KV caches and padding masks.
Shapes: B batch, T time, C channels, H heads, Hkv kv heads, D head dim, V vocab, F intermediate_size.
"""
from __future__ import annotations

import backends
from scratch.nn import merge_heads, split_heads
from scratch.train.decoder import (
    Gradients,
    Projection,
    causal_attention_backward,
    causal_attention_forward,
    merge_qkv_grads,
    project,
    project_backward,
    split_qkv,
    with_adapters,
)
from scratch.train.layers import (
    ACTIVATIONS,
    embedding_backward,
    embedding_forward,
    rms_norm_backward,
    rms_norm_forward,
    rope_backward,
    rope_forward,
    swiglu_backward,
    swiglu_forward,
)

__all__ = ["named_parameters", "prepare", "embed_forward", "embed_backward", "block_forward", "block_backward",
           "head_forward", "head_backward"]

EMBED = "model.embed_tokens.weight"


def _columns(matrix):
    """A (V, C) vocabulary matrix (a view) -> (C, V), the models' C-contiguous layout the head multiplies by."""
    return backends.namespace_of(matrix).permute_dims(matrix, (1, 0))


def head_projection(model) -> Projection:
    """logits = h @ W^T, W the untied lm_head or, when tied, embed_tokens."""
    V = model.config.vocab_size
    if model.lm_head is None:
        return Projection(_columns(model.embed), None, (("model.embed_tokens", 0, V),), torch_layout=True)
    return Projection(_columns(model.lm_head), None, (("lm_head", 0, V),), torch_layout=True)


def layer_projections(model, i: int) -> dict[str, Projection]:
    """Block i's four stored matrices and the checkpoint tensors inside them (nn.Linear's (out, in) layout), with
    the model's LoRA adapters in the parts they wrap."""
    config, layer = model.config, model.layers[i]
    C, F, D = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * D, config.num_key_value_heads * D        # q width H D, k/v width Hkv D
    prefix = f"model.layers.{i}."
    return with_adapters(model, {
        "qkv": Projection(layer.qkv_w, layer.qkv_b, ((prefix + "self_attn.q_proj", 0, q),
                                                     (prefix + "self_attn.k_proj", q, q + kv),
                                                     (prefix + "self_attn.v_proj", q + kv, q + 2 * kv)), True),
        "o": Projection(layer.o_w, layer.o_b, ((prefix + "self_attn.o_proj", 0, C),), True),
        "gate_up": Projection(layer.gate_up_w, layer.gate_up_b, ((prefix + "mlp.gate_proj", 0, F),
                                                                 (prefix + "mlp.up_proj", F, 2 * F)), True),
        "down": Projection(layer.down_w, layer.down_b, ((prefix + "mlp.down_proj", 0, C),), True),
    })


def named_parameters(model) -> dict:
    """{checkpoint name: the model's array or a view of it}, in LlamaForCausalLM.named_parameters() order."""
    params = {EMBED: model.embed}
    for i, layer in enumerate(model.layers):
        prefix = f"model.layers.{i}."
        for projection in layer_projections(model, i).values():
            params.update(projection.parameters())
        params[prefix + "input_layernorm.weight"] = layer.attn_norm_w
        params[prefix + "post_attention_layernorm.weight"] = layer.mlp_norm_w
    params["model.norm.weight"] = model.norm_w
    if model.lm_head is not None:
        params.update(head_projection(model).parameters())
    return params


def prepare(model, T: int):
    """What every block of a T-token batch shares: RoPE's cos, sin (1, 1, T, D)."""
    return model.rope_cos_sin(0, T)


# --- input: token embeddings ---------------------------------------------------------------------------------------

def embed_forward(model, ids):
    """ids (B, T) -> x (B, T, C) = embed_tokens[ids]."""
    return embedding_forward(ids, _columns(model.embed), token_axis=1)


def embed_backward(model, dx, cache, grads: Gradients) -> None:
    """embed_tokens' gradient; when the head is tied it is added IN PLACE to the head's (already in grads)."""
    if not grads.wants(EMBED):
        return
    xp = backends.namespace_of(dx)
    tied = model.lm_head is None
    dhead = xp.permute_dims(grads.arrays[EMBED], (1, 0)) if tied else None    # (C, V) or a fresh one
    dcolumns = embedding_backward(dx, cache, dtable=dhead)                     # x = embed_tokens[ids]
    grads.put(EMBED, xp.permute_dims(dcolumns, (1, 0)))                        # (V, C)


# --- one block -----------------------------------------------------------------------------------------------------

def gated_forward(gate, up, hidden_act: str):
    """h = act(gate) * up. SwiGLU (swiglu_forward, one sigmoid for both gradients) for "silu", the same product
    with the config's activation otherwise. gate, up (..., F)."""
    if hidden_act == "silu":
        return swiglu_forward(gate, up)
    act_forward, _ = ACTIVATIONS[hidden_act]
    a, act_cache = act_forward(gate)
    return a * up, (act_cache, a, up)


def gated_backward(dh, cache, hidden_act: str):
    """-> (dgate, dup)."""
    if hidden_act == "silu":
        return swiglu_backward(dh, cache)
    act_cache, a, up = cache
    _, act_backward = ACTIVATIONS[hidden_act]
    # h = a * up, a = act(gate)
    return act_backward(dh * up, act_cache), dh * a


def block_forward(model, i: int, x, context):
    """Block i: x + attn(RMSNorm(x)), then + gated MLP(RMSNorm(x)). x (B, T, C) -> (B, T, C), cache."""
    config, layer = model.config, model.layers[i]
    H, Hkv, D, F = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.intermediate_size
    cos, sin = context
    projections = layer_projections(model, i)
    h, attn_norm = rms_norm_forward(x, layer.attn_norm_w, config.rms_norm_eps)
    qkv, qkv_proj = project(h, projections["qkv"])                       # (B, T, (H + 2 Hkv) D)
    q, k, v = split_qkv(qkv, H, Hkv, D)                                  # (B, H, T, D), (B, Hkv, T, D) x 2
    q, rope_q = rope_forward(q, cos, sin, layout="half")
    k, rope_k = rope_forward(k, cos, sin, layout="half")
    y, attn = causal_attention_forward(q, k, v)                          # (B, H, T, D), causal
    a, o_proj = project(merge_heads(y), projections["o"])                # (B, T, C)
    x = x + a
    h, mlp_norm = rms_norm_forward(x, layer.mlp_norm_w, config.rms_norm_eps)
    gate_up, gate_up_proj = project(h, projections["gate_up"])           # (B, T, 2F)
    m, gated = gated_forward(gate_up[..., :F], gate_up[..., F:], config.hidden_act)
    out, down_proj = project(m, projections["down"])                     # (B, T, C)
    return x + out, (attn_norm, qkv_proj, rope_q, rope_k, attn, o_proj, mlp_norm, gate_up_proj, gated, down_proj)


def block_backward(model, i: int, dout, cache, grads: Gradients):
    """dL/d(block input) from dL/d(block output); the block's parameter gradients go into `grads`."""
    attn_norm, qkv_proj, rope_q, rope_k, attn, o_proj, mlp_norm, gate_up_proj, gated, down_proj = cache
    config = model.config
    xp = backends.namespace_of(dout)
    prefix = f"model.layers.{i}."
    # out = x + down(act(gate) * up),  [gate | up] = gate_up(rms_norm(x))
    dm = project_backward(dout, down_proj, grads)
    dgate, dup = gated_backward(dm, gated, config.hidden_act)
    dh = project_backward(xp.concat([dgate, dup], axis=-1), gate_up_proj, grads)
    dx, dweight = rms_norm_backward(dh, mlp_norm)
    grads.put(prefix + "post_attention_layernorm.weight", dweight)
    dx += dout                                                           # the residual path
    # x = x_in + o(merge_heads(attention(rope(q), rope(k), v))),  [q | k | v] = qkv(rms_norm(x_in))
    dy = split_heads(project_backward(dx, o_proj, grads), config.num_attention_heads)   # (B, H, T, D)
    dq, dk, dv = causal_attention_backward(dy, attn)
    dq, dk = rope_backward(dq, rope_q), rope_backward(dk, rope_k)
    dh = project_backward(merge_qkv_grads(dq, dk, dv), qkv_proj, grads)  # (B, T, C)
    dx_in, dweight = rms_norm_backward(dh, attn_norm)
    grads.put(prefix + "input_layernorm.weight", dweight)
    dx_in += dx
    return dx_in


# --- output: final RMSNorm and the head ----------------------------------------------------------------------------

def head_forward(model, x):
    """x (B, T, C) -> logits (B, T, V) = RMSNorm(x) @ W^T, cache."""
    h, norm = rms_norm_forward(x, model.norm_w, model.config.rms_norm_eps)
    logits, head = project(h, head_projection(model))
    return logits, (norm, head)


def head_backward(model, dlogits, cache, grads: Gradients):
    norm, head = cache
    dh = project_backward(dlogits, head, grads)
    dx, dweight = rms_norm_backward(dh, norm)
    grads.put("model.norm.weight", dweight)
    return dx
