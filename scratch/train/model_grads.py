"""Whole-model gradients of GPT-2 and Llama: one training forward, the mean cross-entropy, and the backward through
every block in reverse -- by hand, from the layer pairs, with gradient checkpointing as an option.

    loss, grads = loss_and_grads(model, input_ids, targets)      # grads: {checkpoint name: array}

Without checkpointing, each block's forward keeps its cache (the activations its backward reads) until the backward
reaches it. With `checkpointing=True` only each block's INPUT is kept, and the backward runs the block's forward
again to rebuild its cache just before using it (Chen et al. 2016, "Training deep nets with sublinear memory
cost"): one extra forward per step for activation memory of one block instead of all of them. The recomputation
repeats the same operations on the same arrays, so the gradients are bit-identical.
Not here: the layers' backward passes (layers.py), the blocks (gpt2.py, llama.py), optimizers (optim.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import backends
from scratch.models.gpt2 import GPT2
from scratch.models.inputs import check_length, token_ids
from scratch.models.llama import Llama
from scratch.train import gpt2 as gpt2_grads
from scratch.train import llama as llama_grads
from scratch.train.decoder import ADAPTERS, Gradients
from scratch.train.layers import ACTIVATIONS, cross_entropy_backward, cross_entropy_forward

__all__ = ["named_parameters", "trainable_parameters", "loss_and_grads", "forward", "backward", "Tape"]

IGNORE_INDEX = -100  # targets equal to it add nothing to the loss (torch's cross_entropy default)


def architecture_of(model):
    """The module with the model's training forward/backward (same function names in each): scratch.train.gpt2 or
    scratch.train.llama."""
    if isinstance(model, GPT2):
        return gpt2_grads
    if isinstance(model, Llama):
        return llama_grads
    raise TypeError(f"no training gradients for {type(model).__name__}; supported: GPT2, Llama")


def named_parameters(model) -> dict:
    """Every parameter of a GPT-2 or Llama as {Hugging Face checkpoint name: array}, in the order torch's
    named_parameters() lists them (a tied head appears once, as the embedding).

    The arrays are the model's own, or views of them where the model stores a tensor fused or transposed (Llama's
    q/k/v and gate/up, the (C, V) vocabulary matrix): writing into one changes the model, which is how an optimizer
    updates it. Shapes are the checkpoint's: GPT-2's Conv1D (in, out), Llama's nn.Linear (out, in).
    """
    return architecture_of(model).named_parameters(model)


def trainable_parameters(obj) -> dict:
    """The {name: array} an optimizer updates and loss_and_grads differentiates: a dict is returned as it is; an
    object with a `trainable_parameters()` method gives that method's dict; a GPT-2 or Llama model with LoRA
    adapters (scratch.train.lora.add_lora) gives only the adapters' A and B, under PEFT's names; any other GPT-2 or
    Llama gives `named_parameters(model)` (full fine-tuning: every parameter)."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, (GPT2, Llama)) and obj in ADAPTERS:
        return ADAPTERS[obj].parameters()
    hook = getattr(obj, "trainable_parameters", None)
    if callable(hook):
        params = hook()
        if not isinstance(params, dict):
            raise TypeError(f"{type(obj).__name__}.trainable_parameters() must return a dict {{name: array}}, "
                            f"got {type(params).__name__}")
        return params
    if isinstance(obj, (GPT2, Llama)):
        return named_parameters(obj)
    raise TypeError(f"trainable_parameters: expected a dict {{name: array}}, a GPT2 or Llama model, or an object "
                    f"with a trainable_parameters() method, got {type(obj).__name__}")


def _targets(backend: backends.Backend, targets, shape: tuple[int, int]):
    """(B, T) int64 targets on the backend, the shape of the ids (values are checked by the cross-entropy)."""
    if isinstance(targets, (list, tuple)) or backends.array_kind(targets) in (None, "numpy"):
        host = np.asarray(targets)
        if host.size and not np.issubdtype(host.dtype, np.integer):
            raise ValueError(f"targets must hold integers, got dtype {host.dtype}")
        targets = backend.asarray(host, dtype="int64")
    else:
        backend.check_owned(targets)
        xp = backend.xp
        if not xp.isdtype(targets.dtype, "integral"):
            raise ValueError(f"targets must hold integers, got dtype {targets.dtype}")
        targets = targets if targets.dtype == xp.int64 else xp.astype(targets, xp.int64)
    if tuple(targets.shape) != shape:
        raise ValueError(f"targets must have the shape of input_ids {shape}, got {tuple(targets.shape)}")
    return targets


@dataclass
class Tape:
    """What the backward needs from one training forward: per block its cache, or only its input (checkpointing)."""

    model: Any
    architecture: Any           # gpt2_grads or llama_grads
    context: Any                # what every block shares (Llama: RoPE's cos, sin)
    embed_cache: Any
    kept: list                  # per block: its cache, or (checkpointing) its input x (B, T, C)
    head_cache: Any
    checkpointing: bool


def forward(model, ids, *, checkpointing: bool = False):
    """The training forward: logits (B, T, V) -- what model(ids) computes -- and the Tape for `backward`.
    ids: (B, T) int64 on the model's backend (loss_and_grads checks and converts its input)."""
    architecture = architecture_of(model)
    context = architecture.prepare(model, ids.shape[1])
    x, embed_cache = architecture.embed_forward(model, ids)                 # (B, T, C)
    kept = []
    for i in range(len(model.layers)):
        if checkpointing:
            kept.append(x)
            x = architecture.block_forward(model, i, x, context)[0]         # the cache is dropped at once
        else:
            x, cache = architecture.block_forward(model, i, x, context)
            kept.append(cache)
    logits, head_cache = architecture.head_forward(model, x)                 # (B, T, V)
    return logits, Tape(model, architecture, context, embed_cache, kept, head_cache, checkpointing)


def backward(tape: Tape, dlogits, grads: Gradients) -> None:
    """The forward's steps in reverse, from dL/dlogits (B, T, V); parameter gradients go into `grads`. Each
    block's cache is freed once its backward is done (so is the tape: it can be used once)."""
    model, architecture = tape.model, tape.architecture
    dx = architecture.head_backward(model, dlogits, tape.head_cache, grads)     # (B, T, C)
    tape.head_cache = None
    for i in reversed(range(len(model.layers))):
        if tape.checkpointing:           # rebuild the block's cache from its input: the same forward, once more
            cache = architecture.block_forward(model, i, tape.kept[i], tape.context)[1]
        else:
            cache = tape.kept[i]
        tape.kept[i] = None
        dx = architecture.block_backward(model, i, dx, cache, grads)
        del cache
    architecture.embed_backward(model, dx, tape.embed_cache, grads)
    tape.embed_cache = None


def loss_and_grads(model, input_ids, targets, *, checkpointing: bool = False, loss_scale: float = 1.0):
    """(loss, grads) of the mean cross-entropy of `targets` given `input_ids` under a GPT-2 or Llama model.

    input_ids, targets: (B, T) integers, host or backend arrays; targets[b, t] is the token expected after
    input_ids[b, :t+1] (the caller shifts; no shift happens here), IGNORE_INDEX (-100) where nothing is expected.
    loss: a Python float, the mean over the non-ignored targets (torch's F.cross_entropy), unscaled (NaN when all
    are ignored, as torch). grads: {checkpoint name: array} for every trainable parameter (trainable_parameters),
    in that order, each with its parameter's shape, dtype and backend. loss_scale multiplies dloss (dynamic loss
    scaling: the gradients come out scaled by it). checkpointing: recompute each block's activations in the
    backward instead of keeping them (same gradients, bit for bit; less memory, one more forward per step).
    """
    _check_trainable(model)
    ids = token_ids(model.backend, input_ids, model.n_vocab)                 # (B, T) int64 on the backend
    B, T = ids.shape
    check_length(0, T, model.max_length, type(model).__name__)
    targets = _targets(model.backend, targets, (B, T))
    grads = Gradients(trainable_parameters(model))

    adapters = ADAPTERS.get(model)
    if adapters is not None:
        adapters.draw_dropout_masks((B, T))       # LoRA dropout > 0: this step's masks (a recomputation reuses them)
    try:
        logits, tape = forward(model, ids, checkpointing=checkpointing)
        loss, loss_cache = cross_entropy_forward(logits, targets, ignore_index=IGNORE_INDEX)
        del logits                                # the loss cache holds the softmax, which becomes dlogits
        backward(tape, cross_entropy_backward(loss_scale, loss_cache), grads)
    finally:
        if adapters is not None:
            adapters.masks = {}                   # any later forward (evaluation) runs without dropout

    missing = [name for name in grads.wanted if name not in grads.arrays]
    if missing:
        raise RuntimeError(f"loss_and_grads: no gradient was produced for {missing[:5]} (trainable, but not "
                           f"a parameter this backward knows)")
    return float(loss), {name: grads.arrays[name] for name in grads.wanted}


def _check_trainable(model) -> None:
    """TypeError for a model without a training backward here, ValueError for an activation without one or for
    merged LoRA adapters."""
    architecture_of(model)
    if model in ADAPTERS and ADAPTERS[model].merged:
        raise ValueError("the model's LoRA adapters are merged into its weights: unmerge_lora(model) before training")
    config = model.config
    name = config.activation if isinstance(model, GPT2) else config.hidden_act
    if name not in ACTIVATIONS:
        raise ValueError(f"no backward for the activation {name!r} of {type(model).__name__}; "
                         f"known: {', '.join(ACTIVATIONS)}")
