"""GPT-2's training forward and backward, block by block, from the layer pairs of layers.py.

Each forward computes what scratch.models.gpt2 computes (the same operations on the same arrays; tests pin the
logits) and returns a cache; each backward walks the same lines in reverse. The output head is tied to the token
embedding: the head's gradient and the lookup's are summed into one (V, C) gradient, `transformer.wte.weight`.
Parameters and gradients are named as transformers' GPT2LMHeadModel.named_parameters() names them.
Not here: the loop over blocks and gradient checkpointing (model_grads.py), dropout (GPT-2 fine-tunes without it
here), KV caches and padding masks (training batches are full rows).
Shapes: B batch, T time, C channels, H heads, D head dim, V vocab, F MLP width (4C).
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
    layer_norm_backward,
    layer_norm_forward,
)

__all__ = ["named_parameters", "prepare", "embed_forward", "embed_backward", "block_forward", "block_backward",
           "head_forward", "head_backward"]

WTE = "transformer.wte.weight"
WPE = "transformer.wpe.weight"


def _columns(model):
    """The vocabulary matrix as (C, V), C-contiguous in the models' layout: what the head multiplies by."""
    weight = model.token_embedding.weight                                     # (V, C) view
    return backends.namespace_of(weight).permute_dims(weight, (1, 0))


def head_projection(model) -> Projection:
    """logits = h @ wte^T: the tied head, whose checkpoint tensor is the (V, C) token embedding."""
    return Projection(_columns(model), None, (("transformer.wte", 0, model.config.vocab_size),), torch_layout=True)


def layer_projections(model, i: int) -> dict[str, Projection]:
    """Block i's four matrices, stored (in, out) as GPT-2's Conv1D stores them (so torch_layout is False), with the
    model's LoRA adapters in the parts they wrap."""
    layer, C, F = model.layers[i], model.config.n_embd, model.config.n_inner
    prefix = f"transformer.h.{i}."
    return with_adapters(model, {
        "c_attn": Projection(layer.qkv_w, layer.qkv_b, ((prefix + "attn.c_attn", 0, 3 * C),), False),
        "attn_c_proj": Projection(layer.attn_proj_w, layer.attn_proj_b, ((prefix + "attn.c_proj", 0, C),), False),
        "c_fc": Projection(layer.fc_w, layer.fc_b, ((prefix + "mlp.c_fc", 0, F),), False),
        "mlp_c_proj": Projection(layer.proj_w, layer.proj_b, ((prefix + "mlp.c_proj", 0, C),), False),
    })


def named_parameters(model) -> dict:
    """{checkpoint name: the model's array (or a view of it)}, in GPT2LMHeadModel.named_parameters() order."""
    params = {WTE: head_projection(model).parameters()[WTE], WPE: model.wpe}
    for i, layer in enumerate(model.layers):
        prefix = f"transformer.h.{i}."
        projections = layer_projections(model, i)
        params[prefix + "ln_1.weight"], params[prefix + "ln_1.bias"] = layer.ln_1_w, layer.ln_1_b
        params.update(projections["c_attn"].parameters())
        params.update(projections["attn_c_proj"].parameters())
        params[prefix + "ln_2.weight"], params[prefix + "ln_2.bias"] = layer.ln_2_w, layer.ln_2_b
        params.update(projections["c_fc"].parameters())
        params.update(projections["mlp_c_proj"].parameters())
    params["transformer.ln_f.weight"], params["transformer.ln_f.bias"] = model.ln_f_w, model.ln_f_b
    return params


def prepare(model, T: int):
    """What every block of a T-token batch shares: nothing for GPT-2 (its positions were added at the input)."""
    return None


# --- input: token + position embeddings ----------------------------------------------------------------------------

def embed_forward(model, ids):
    """ids (B, T) -> x (B, T, C) = wte[ids] + wpe[:T]."""
    T = ids.shape[1]
    tokens, cache = embedding_forward(ids, _columns(model), token_axis=1)      # (B, T, C)
    return tokens + model.wpe[:T, :], cache


def embed_backward(model, dx, cache, grads: Gradients) -> None:
    """Gradients of wpe and wte; wte's is added IN PLACE to the head's (already in grads): the tie's two uses."""
    xp = backends.namespace_of(dx)
    T = dx.shape[1]
    if grads.wants(WPE):
        # x = tokens + wpe[:T]: each position's row gets the sum over the batch
        dwpe = xp.zeros_like(model.wpe)                                      # (P, C)
        dwpe[:T, :] = xp.sum(dx, axis=0)
        grads.put(WPE, dwpe)
    if grads.wants(WTE):
        # tokens = wte[ids]; the head put wte's (V, C) gradient as a view of a (C, V) array: scatter into that
        dhead = xp.permute_dims(grads.arrays[WTE], (1, 0))                    # (C, V)
        embedding_backward(dx, cache, dtable=dhead)


# --- one block -----------------------------------------------------------------------------------------------------

def block_forward(model, i: int, x, context=None):
    """Block i: x + attn(LN1(x)), then + MLP(LN2(x)). x (B, T, C) -> (B, T, C), cache."""
    config, layer = model.config, model.layers[i]
    H, D, eps = config.n_head, config.head_dim, config.layer_norm_epsilon
    act_forward, _ = ACTIVATIONS[config.activation]
    projections = layer_projections(model, i)
    h, ln_1 = layer_norm_forward(x, layer.ln_1_w, layer.ln_1_b, eps)
    qkv, c_attn = project(h, projections["c_attn"])                   # (B, T, 3C)
    q, k, v = split_qkv(qkv, H, H, D)                                  # each (B, H, T, D)
    y, attn = causal_attention_forward(q, k, v)                        # (B, H, T, D), causal
    a, attn_c_proj = project(merge_heads(y), projections["attn_c_proj"])
    x = x + a
    h, ln_2 = layer_norm_forward(x, layer.ln_2_w, layer.ln_2_b, eps)
    f, c_fc = project(h, projections["c_fc"])                          # (B, T, F)
    g, act = act_forward(f)
    m, mlp_c_proj = project(g, projections["mlp_c_proj"])              # (B, T, C)
    return x + m, (ln_1, c_attn, attn, attn_c_proj, ln_2, c_fc, act, mlp_c_proj)


def block_backward(model, i: int, dout, cache, grads: Gradients):
    """dL/d(block input) from dL/d(block output); the block's parameter gradients go into `grads`."""
    ln_1, c_attn, attn, attn_c_proj, ln_2, c_fc, act, mlp_c_proj = cache
    config = model.config
    _, act_backward = ACTIVATIONS[config.activation]
    prefix = f"transformer.h.{i}."
    # out = x + mlp_c_proj(gelu(c_fc(ln_2(x))))
    dg = project_backward(dout, mlp_c_proj, grads)
    df = act_backward(dg, act)
    dh = project_backward(df, c_fc, grads)
    dx, dweight, dbias = layer_norm_backward(dh, ln_2)
    grads.put(prefix + "ln_2.weight", dweight)
    grads.put(prefix + "ln_2.bias", dbias)
    dx += dout                                                         # the residual path
    # x = x_in + attn_c_proj(merge_heads(attention(split_qkv(c_attn(ln_1(x_in))))))
    dy = split_heads(project_backward(dx, attn_c_proj, grads), config.n_head)    # (B, H, T, D)
    dq, dk, dv = causal_attention_backward(dy, attn)
    dh = project_backward(merge_qkv_grads(dq, dk, dv), c_attn, grads)          # (B, T, C)
    dx_in, dweight, dbias = layer_norm_backward(dh, ln_1)
    grads.put(prefix + "ln_1.weight", dweight)
    grads.put(prefix + "ln_1.bias", dbias)
    dx_in += dx
    return dx_in


# --- output: final LayerNorm and the tied head ----------------------------------------------------------------------

def head_forward(model, x):
    """x (B, T, C) -> logits (B, T, V) = LN_f(x) @ wte^T, cache."""
    h, ln_f = layer_norm_forward(x, model.ln_f_w, model.ln_f_b, model.config.layer_norm_epsilon)
    logits, head = project(h, head_projection(model))
    return logits, (ln_f, head)


def head_backward(model, dlogits, cache, grads: Gradients):
    ln_f, head = cache
    dh = project_backward(dlogits, head, grads)                       # puts wte's head part
    dx, dweight, dbias = layer_norm_backward(dh, ln_f)
    grads.put("transformer.ln_f.weight", dweight)
    grads.put("transformer.ln_f.bias", dbias)
    return dx
