"""Fine-tuning from scratch: gradients written by hand and the optimizers that use them, on NumPy, array-api-strict
and CuPy alike.

`layers`: a forward/backward pair for every layer GPT-2 and Llama use (embedding with scatter-add, linear, LayerNorm,
RMSNorm, GELU exact and tanh, SiLU/SwiGLU, causal attention with GQA/MQA, RoPE in both layouts, softmax +
cross-entropy with ignore_index); each forward equals scratch.nn's and each backward is checked against finite
differences and torch autograd. `optim`: AdamW and SGD with torch.optim's exact update rules, global-norm clipping, the
warmup + cosine schedule, gradient accumulation and weight-decay groups. Derivations: docs/backprop.md.
`model_grads`: whole-model gradients of GPT-2 and Llama (blocks in gpt2.py / llama.py, shared plumbing in
decoder.py), with gradient checkpointing.

Public API
    layers:  x_forward(...) -> (out, cache) and x_backward(dout, cache) -> grads in the forward's argument order, for
             x in embedding, linear, layer_norm, rms_norm, gelu, gelu_tanh, silu, swiglu, mlp_gelu, mlp_swiglu, rope,
             attention, cross_entropy; ACTIVATIONS (config name -> pair); index_add, segment_sums (scatter-add).
             Tied embedding: embedding_backward(dout, cache, dtable=dhead) adds the lookup's gradient to the head's.
    optim:   trainable_parameters(obj); AdamW(params, lr, betas, eps, weight_decay, decay_rule); SGD(params, lr,
             momentum, dampening, weight_decay, nesterov, decay_rule) with .step(grads), .lr, .state_dict(),
             .load_state_dict(); default_decay_rule, decay_groups; clip_grad_norm(grads, max_norm);
             warmup_cosine_lr(step, max_lr, total_steps, warmup_steps, min_lr); GradientAccumulator.
    model_grads: named_parameters(model) -> {checkpoint name: array or view}; trainable_parameters(obj);
             loss_and_grads(model, input_ids, targets, *, checkpointing=False, loss_scale=1.0) -> (float, grads).
    amp:     GradScaler (torch.amp.GradScaler's rules: get_scale, unscale_, step, update, state_dict);
             MixedPrecision(model) -- float16 compute copy, float32 master, .loss_and_grads, .step.
    data:    write_tokens, read_tokens -> TokenFile (memory-mapped uint16/uint32 ids + JSON), tokenize_files,
             random_batch(ids, rng, B, T) -> (input_ids, targets).
    loop:    TrainSettings, Trainer(model, train_file, val_file, settings, out_dir).run() / .resume(),
             TrainResult, NonFiniteLossError, save_model, latest_checkpoint.
    memory:  model_states, zero_per_gpu, lora_parameters, activation_bytes_per_token, training_report
             (what `scratch info NAME --training` prints).
    lora:    add_lora(model, r, lora_alpha, target_modules, lora_dropout, seed, use_rslora) -> LoraState;
             save_adapter(model, out_dir) / load_adapter(model, folder) in PEFT's format; merge_lora, unmerge_lora,
             remove_lora, lora_state, adapter_parameters, lora.logits (the adapted forward), LoraTrainer.
             decoder: lora_forward / lora_backward (the adapter's pair, hooked into every projection).
"""
from scratch.train.amp import GradScaler, MixedPrecision
from scratch.train.data import TokenFile, read_tokens, tokenize_files, write_tokens
from scratch.train.layers import (
    ACTIVATIONS,
    CrossEntropyCache,
    attention_backward,
    attention_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    gelu_tanh_backward,
    gelu_tanh_forward,
    index_add,
    layer_norm_backward,
    layer_norm_forward,
    linear_backward,
    linear_forward,
    mlp_gelu_backward,
    mlp_gelu_forward,
    mlp_swiglu_backward,
    mlp_swiglu_forward,
    rms_norm_backward,
    rms_norm_forward,
    rope_backward,
    rope_forward,
    segment_sums,
    silu_backward,
    silu_forward,
    swiglu_backward,
    swiglu_forward,
)
from scratch.train.decoder import lora_backward, lora_forward
from scratch.train.lora import (
    LoraConfig,
    LoraState,
    LoraTrainer,
    adapter_parameters,
    add_lora,
    load_adapter,
    lora_state,
    merge_lora,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from scratch.train.loop import NonFiniteLossError, Trainer, TrainResult, TrainSettings, save_model
from scratch.train.model_grads import loss_and_grads, named_parameters
from scratch.train.optim import (
    EMBEDDING_NAMES,
    SGD,
    AdamW,
    GradientAccumulator,
    Optimizer,
    clip_grad_norm,
    decay_groups,
    default_decay_rule,
    trainable_parameters,
    warmup_cosine_lr,
)

__all__ = [
    "embedding_forward", "embedding_backward", "linear_forward", "linear_backward",
    "layer_norm_forward", "layer_norm_backward", "rms_norm_forward", "rms_norm_backward",
    "gelu_forward", "gelu_backward", "gelu_tanh_forward", "gelu_tanh_backward",
    "silu_forward", "silu_backward", "swiglu_forward", "swiglu_backward", "ACTIVATIONS",
    "mlp_gelu_forward", "mlp_gelu_backward", "mlp_swiglu_forward", "mlp_swiglu_backward",
    "rope_forward", "rope_backward", "attention_forward", "attention_backward",
    "cross_entropy_forward", "cross_entropy_backward", "CrossEntropyCache", "index_add", "segment_sums",
    "named_parameters", "loss_and_grads",
    "trainable_parameters", "EMBEDDING_NAMES", "default_decay_rule", "decay_groups",
    "Optimizer", "AdamW", "SGD", "clip_grad_norm", "warmup_cosine_lr", "GradientAccumulator",
    "GradScaler", "MixedPrecision", "TokenFile", "write_tokens", "read_tokens", "tokenize_files",
    "TrainSettings", "Trainer", "TrainResult", "NonFiniteLossError", "save_model",
    "lora_forward", "lora_backward", "LoraConfig", "LoraState", "LoraTrainer", "add_lora", "lora_state",
    "adapter_parameters", "merge_lora", "unmerge_lora", "remove_lora", "save_adapter", "load_adapter",
]
