"""What the GPT-2 and Llama gradients share: named gradients, the projection every matmul of a block goes through (and
the LoRA adapters that hook into it), and the split of a fused Q/K/V activation into heads (and its gradient back).

A model stores some checkpoint tensors fused or transposed (GPT-2's c_attn is one (C, 3C) matrix; Llama's q/k/v and
gate/up are fused and every matrix is kept (in, out)); a `Projection` names the checkpoint tensors that live inside
one stored matrix, so parameters and their gradients are handed out as views with the checkpoint's names and shapes.
Not here: the blocks themselves (gpt2.py, llama.py), the loop over them (model_grads.py), the layer pairs (layers.py),
attaching, merging and saving adapters (lora.py).
Shapes: B batch, T time, C channels, H heads, Hkv kv heads, D head dim, N = B*T rows, r LoRA rank.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any

import backends
from scratch.nn import causal_mask
from scratch.train.layers import attention_backward, attention_forward, linear_backward, linear_forward

__all__ = ["Gradients", "Projection", "project", "project_backward", "LoraAdapter", "ADAPTERS", "with_adapters",
           "lora_forward", "lora_backward", "split_qkv", "merge_qkv_grads",
           "ATTENTION_BLOCK", "causal_attention_forward", "causal_attention_backward"]


class Gradients:
    """The gradients one backward pass produces, by checkpoint name. Only names in `wanted` (the trainable
    parameters) are kept, and `wants(name)` lets a backward skip the work for the others (a frozen weight still
    passes its input gradient through)."""

    def __init__(self, wanted):
        self.wanted = dict.fromkeys(wanted)                   # an ordered set: the parameters' order
        self.arrays: dict = {}

    def wants(self, name: str) -> bool:
        return name in self.wanted

    def put(self, name: str, array) -> None:
        if name in self.wanted:
            self.arrays[name] = array


@dataclass(frozen=True)
class Projection:
    """One stored matrix of a model, y = x @ weight + bias, and the checkpoint tensors it holds.

    weight (C_in, C_out) is the model's own array; bias (C_out,) or None. `parts` lists (checkpoint name, first
    output column, end column): e.g. Llama's fused qkv holds "model.layers.0.self_attn.q_proj" in columns [0, H D).
    torch_layout: the checkpoint stores each part (out, in), as torch's nn.Linear (Llama, the vocabulary matrix);
    False for GPT-2's Conv1D, stored (in, out) as we do.
    """

    weight: Any
    bias: Any
    parts: tuple[tuple[str, int, int], ...]
    torch_layout: bool
    # LoRA: (first column, end column, LoraAdapter, dropout mask or None) per part that has an adapter
    adapters: tuple = ()

    @property
    def names(self) -> list[str]:
        """The checkpoint names of the tensors inside: "<part>.weight" (and "<part>.bias")."""
        suffixes = (".weight",) if self.bias is None else (".weight", ".bias")
        return [part + suffix for part, _, _ in self.parts for suffix in suffixes]

    def views(self, weight, bias) -> dict:
        """{checkpoint name: view} of `weight` (C_in, C_out) and `bias` -- the model's arrays or their gradients,
        which have the same layout. Views, not copies: writing into one writes into `weight`."""
        xp = backends.namespace_of(weight)
        out = {}
        for part, start, end in self.parts:
            columns = weight[:, start:end]                                    # (C_in, end - start)
            out[part + ".weight"] = xp.permute_dims(columns, (1, 0)) if self.torch_layout else columns
            if bias is not None:
                out[part + ".bias"] = bias[start:end]
        return out

    def parameters(self) -> dict:
        return self.views(self.weight, self.bias)


# --- LoRA's hook -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraAdapter:
    """A rank-r LoRA adapter (Hu et al. 2021) beside one checkpoint module: y += scaling * (x @ A^T) @ B^T.

    A (r, C_in) and B (out, r) are arrays the optimizer updates in place, in PEFT's layout (nn.Linear weights) for
    every base layout. peft_module: "base_model.model." + the module's checkpoint name; `names` are PEFT's saved
    names of A and B, the keys of their gradients."""

    peft_module: str
    A: Any
    B: Any
    scaling: float

    @property
    def names(self) -> tuple[str, str]:
        return self.peft_module + ".lora_A.weight", self.peft_module + ".lora_B.weight"


# The side table LoRA lives in: model -> its scratch.train.lora.LoraState, which has `modules` ({checkpoint module:
# LoraAdapter}), `merged` (adapters already added into the weights) and `masks` ({checkpoint module: the dropout
# mask of the training forward in progress}). The models are frozen; a weak table lets an adapter die with its model.
ADAPTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def with_adapters(model, projections: dict[str, Projection]) -> dict[str, Projection]:
    """`projections` with the model's unmerged LoRA adapters put into the parts they wrap (unchanged without any)."""
    state = ADAPTERS.get(model)
    if state is None or state.merged:
        return projections
    out = {}
    for key, projection in projections.items():
        adapters = tuple((start, end, state.modules[part], state.masks.get(part))
                         for part, start, end in projection.parts if part in state.modules)
        out[key] = replace(projection, adapters=adapters) if adapters else projection
    return out


def lora_forward(x, A, B, scaling: float, mask=None):
    """The adapter's path: y = scaling * (dropout(x) @ A^T) @ B^T. x (..., C_in), A (r, C_in), B (out, r) ->
    y (..., out). mask: None, or dropout's (..., C_in) mask of 0 and 1/(1-p). cache: (x_in, u, A, B, scaling, mask)."""
    xp = backends.namespace_of(x, A, B)
    x_in = x if mask is None else x * mask                           # dropout on the adapter's input only
    u = xp.matmul(x_in, xp.permute_dims(A, (1, 0)))                  # (..., r): the low-rank code
    y = xp.matmul(u, xp.permute_dims(B, (1, 0))) * scaling           # (..., out), PEFT's order: B(A(x)) * scaling
    return y, (x_in, u, A, B, scaling, mask)


def lora_backward(dy, cache):
    """-> (dx, dA, dB): dx like x, dA (r, C_in), dB (out, r)."""
    x_in, u, A, B, scaling, mask = cache
    xp = backends.namespace_of(dy, A, B)
    r = A.shape[0]
    dy2 = xp.reshape(dy, (-1, B.shape[0])) * scaling                 # (N, out): y = scaling * (u @ B^T)
    u2 = xp.reshape(u, (-1, r))                                      # (N, r)
    dB = xp.matmul(xp.permute_dims(dy2, (1, 0)), u2)                 # dB = (scaling dy)^T @ u
    du = xp.matmul(dy2, B)                                           # du = scaling dy @ B, (N, r)
    dA = xp.matmul(xp.permute_dims(du, (1, 0)), xp.reshape(x_in, (-1, A.shape[1])))   # u = x_in @ A^T: dA = du^T x_in
    dx = xp.reshape(xp.matmul(du, A), tuple(x_in.shape))             # dx_in = du @ A
    return (dx if mask is None else dx * mask), dA, dB               # x_in = x * mask


# --- the projection: every matmul of a block -------------------------------------------------------------------------

# Every matmul of a block goes through these two functions, so an adapter has one place to hook in. LoRA: for each
# part with an adapter, `project` adds lora_forward's scaling * (x @ A^T) @ B^T to y[..., start:end] and keeps its
# cache; `project_backward` puts dA and dB under PEFT's names and adds the adapter's path to dx. The frozen base
# weight costs no dW: its names are not trainable, so grads.wants(...) is False and linear_backward skips the product.

def project(x, projection: Projection):
    """y = x @ weight + bias (+ each adapter's path into its columns). x (..., C_in) -> y (..., C_out), cache."""
    y, linear_cache = linear_forward(x, projection.weight, projection.bias)
    lora_caches = []
    for start, end, adapter, mask in projection.adapters:
        y_adapter, lora_cache = lora_forward(x, adapter.A, adapter.B, adapter.scaling, mask)
        y[..., start:end] += y_adapter                                # y is fresh: linear_forward's own result
        lora_caches.append(lora_cache)
    return y, (linear_cache, projection, lora_caches)


def project_backward(dy, cache, grads: Gradients):
    """-> dx; the weight and bias gradients (or the adapters') go into `grads` under their checkpoint/PEFT names."""
    linear_cache, projection, lora_caches = cache
    trainable = any(grads.wants(name) for name in projection.names)
    # y = x @ weight + bias
    dx, dweight, dbias = linear_backward(dy, linear_cache, weight_grads=trainable)
    if trainable:
        for name, grad in projection.views(dweight, dbias).items():
            grads.put(name, grad)
    for (start, end, adapter, _), lora_cache in zip(projection.adapters, lora_caches):
        # y[..., start:end] += scaling * (x @ A^T) @ B^T
        dx_adapter, dA, dB = lora_backward(dy[..., start:end], lora_cache)
        dx += dx_adapter
        grads.put(adapter.names[0], dA)
        grads.put(adapter.names[1], dB)
    return dx


def split_qkv(qkv, H: int, Hkv: int, D: int):
    """A fused projection (B, T, (H + 2 Hkv) D), columns [q | k | v], -> q (B, H, T, D), k and v (B, Hkv, T, D).

    Views (no copy). GPT-2 is the case Hkv = H: its (B, T, 3, H, D) split is the same memory read the same way.
    """
    xp = backends.namespace_of(qkv)
    B, T, _ = qkv.shape
    heads = xp.permute_dims(xp.reshape(qkv, (B, T, H + 2 * Hkv, D)), (0, 2, 1, 3))   # (B, H + 2 Hkv, T, D)
    return heads[:, :H, ...], heads[:, H:H + Hkv, ...], heads[:, H + Hkv:, ...]


def merge_qkv_grads(dq, dk, dv):
    """The inverse of split_qkv for gradients: dq (B, H, T, D), dk, dv (B, Hkv, T, D) -> (B, T, (H + 2 Hkv) D),
    written once into a fresh buffer."""
    xp = backends.namespace_of(dq, dk, dv)
    B, H, T, D = dq.shape
    Hkv = dk.shape[1]
    dqkv = xp.empty((B, T, H + 2 * Hkv, D), dtype=dq.dtype)
    dqkv[:, :, :H, :] = xp.permute_dims(dq, (0, 2, 1, 3))
    dqkv[:, :, H:H + Hkv, :] = xp.permute_dims(dk, (0, 2, 1, 3))
    dqkv[:, :, H + Hkv:, :] = xp.permute_dims(dv, (0, 2, 1, 3))
    return xp.reshape(dqkv, (B, T, (H + 2 * Hkv) * D))


# --- causal attention in query blocks ------------------------------------------------------------------------------

# Query rows per attention call. Query block [i, i+64) may attend keys 0 .. i+63 only, so it is computed against
# those alone: at T = 256 that is 62% of the T x T scores (and of the softmax the backward keeps), and each block's
# (B, H, 64, S) scores stay in the CPU's cache, where 128-row blocks no longer fit. The causal skipping of
# FlashAttention (Dao et al. 2022), without its key tiling. On a GPU at small sizes one call is faster (each block
# is a few more kernel launches); the blocks pay off there at long T, in memory above all.
ATTENTION_BLOCK = 64


def causal_attention_forward(q, k, v, block: int = ATTENTION_BLOCK):
    """Causal attention (query t sees keys 0..t) as layers.attention_forward on query blocks, each against only the
    keys it may see. q (B, H, T, D), k and v (B, Hkv, T, D) -> (B, H, T, D), cache (one per block). Equal to one
    attention_forward call with a causal mask, up to float rounding (the skipped keys would add exp(-inf) = 0)."""
    xp = backends.namespace_of(q, k, v)
    T = q.shape[2]
    outs, caches = [], []
    for start in range(0, T, block):
        end = min(start + block, T)                                       # this block sees keys 0 .. end-1
        out, cache = attention_forward(q[:, :, start:end, :], k[:, :, :end, :], v[:, :, :end, :],
                                       mask=causal_mask(end - start, end, xp))
        outs.append(out)                                                  # (B, H, end - start, D)
        caches.append(cache)
    return (outs[0] if len(outs) == 1 else xp.concat(outs, axis=2)), (caches, block)


def causal_attention_backward(dout, cache):
    """-> (dq, dk, dv): each block's attention_backward; a key's gradient sums over the blocks that saw it."""
    caches, block = cache
    xp = backends.namespace_of(dout)
    if len(caches) == 1:
        return attention_backward(dout, caches[0])
    T = dout.shape[2]
    dq_blocks = []
    dk = dv = None
    for index in reversed(range(len(caches))):          # last block first: it saw every key
        start = index * block
        end = min(start + block, T)
        dq, dk_seen, dv_seen = attention_backward(dout[:, :, start:end, :], caches[index])   # dk_seen (B, Hkv, end, D)
        dq_blocks.append(dq)
        if dk is None:
            dk, dv = dk_seen, dv_seen                   # (B, Hkv, T, D): a fresh buffer the others add into
        else:
            dk[:, :, :end, :] += dk_seen
            dv[:, :, :end, :] += dv_seen
    return xp.concat(dq_blocks[::-1], axis=2), dk, dv
