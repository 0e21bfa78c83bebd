"""Training memory, computed: where the bytes of a fine-tuning run go, and what LoRA, gradient checkpointing, mixed
precision and ZeRO each take away.

Model states (Rajbhandari et al. 2019, "ZeRO", section 3.1): Adam with mixed precision keeps, per parameter, 16-bit
weights (2 B) and gradients (2 B), plus float32 master weights, first and second moments (K = 12 B): 16 B. In float32
it is 4 + 4 + 8 (no master copy) = 16 B too. With LoRA (Hu et al. 2021) only the adapters have gradients and
optimizer states; the frozen base is weights alone. ZeRO over N data-parallel GPUs divides the optimizer states by N
(stage 1), the gradients too (stage 2), and the weights too (stage 3).
Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", section 4.1):
per layer, s*b*h*(34 + 5*a*s/h) bytes for 16-bit activations, sequence length s, micro-batch b, width h, a heads --
34 h + 5 a s bytes per token; full recomputation (gradient checkpointing) keeps 2 h bytes per layer per token (each
block's input) plus one block's activations while that block is recomputed. Parameter counts come from
scratch.models.presets. Not here: temporary buffers, allocator fragmentation, framework overhead.
"""
from __future__ import annotations

from dataclasses import dataclass

from scratch.models.config import BertConfig, Config, GPT2Config, LlamaConfig
from scratch.models.presets import context_length, format_bytes, format_count, parameter_count
from scratch.train.decoder import ATTENTION_BLOCK

__all__ = ["PRECISIONS", "LORA_DEFAULT_TARGETS", "lora_module_shapes", "lora_parameters", "ModelStates",
           "model_states", "zero_per_gpu", "deepspeed_estimate", "korthikanti_bytes_per_token",
           "activation_bytes_per_token", "stored_bytes_per_token", "measured_tape_bytes", "training_report",
           "tricks_table"]

# Bytes per parameter: (weights, gradients, float32 master weights, optimizer moments) for AdamW.
PRECISIONS: dict[str, tuple[int, int, int, int]] = {
    "mixed": (2, 2, 4, 8),   # 16-bit weights and gradients, float32 master + two float32 moments (ZeRO's 2+2+12)
    "fp32": (4, 4, 0, 8),    # float32 throughout: the weights are their own master copy
}

# PEFT's default target modules when none are named (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
LORA_DEFAULT_TARGETS: dict[type, tuple[str, ...]] = {
    GPT2Config: ("c_attn",), LlamaConfig: ("q_proj", "v_proj"), BertConfig: ("query", "value"),
}


def _layers(config: Config) -> int:
    return config.n_layer if isinstance(config, GPT2Config) else config.num_hidden_layers


def _width(config: Config) -> int:
    return config.n_embd if isinstance(config, GPT2Config) else config.hidden_size


def _heads(config: Config) -> int:
    return config.n_head if isinstance(config, GPT2Config) else config.num_attention_heads


def lora_module_shapes(config: Config) -> dict[str, tuple[int, int]]:
    """(in, out) features of every projection of one layer that a LoRA adapter can wrap, by its module path in
    the Hugging Face model (under model.layers.{i} / transformer.h.{i} / encoder.layer.{i})."""
    if isinstance(config, GPT2Config):
        C, F = config.n_embd, config.n_inner
        return {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, F), "mlp.c_proj": (F, C)}
    if isinstance(config, LlamaConfig):
        C, F, D = config.hidden_size, config.intermediate_size, config.head_dim
        q, kv = config.num_attention_heads * D, config.num_key_value_heads * D
        return {"self_attn.q_proj": (C, q), "self_attn.k_proj": (C, kv), "self_attn.v_proj": (C, kv),
                "self_attn.o_proj": (q, C), "mlp.gate_proj": (C, F), "mlp.up_proj": (C, F), "mlp.down_proj": (F, C)}
    if isinstance(config, BertConfig):
        C, F = config.hidden_size, config.intermediate_size
        return {"attention.self.query": (C, C), "attention.self.key": (C, C), "attention.self.value": (C, C),
                "attention.output.dense": (C, C), "intermediate.dense": (C, F), "output.dense": (F, C)}
    raise TypeError(f"not a model config: {config!r}")


def lora_parameters(config: Config, r: int, targets: tuple[str, ...] | None = None) -> int:
    """Trainable parameters of rank-r LoRA adapters: r * (in + out) per wrapped projection (A is (r, in), B is
    (out, r)), in every layer. targets: module names matched as PEFT matches them -- a module is wrapped when its
    path is the name or ends with "." + name, so GPT-2's "c_proj" wraps both output projections (default: PEFT's
    defaults for the architecture, GPT-2 c_attn, Llama q_proj and v_proj, BERT query and value)."""
    if not (isinstance(r, int) and r > 0):
        raise ValueError(f"LoRA rank must be a positive int, got {r!r}")
    shapes = lora_module_shapes(config)
    targets = LORA_DEFAULT_TARGETS[type(config)] if targets is None else tuple(targets)
    if not targets:
        raise ValueError("LoRA needs at least one target module")
    per_layer = 0
    for target in targets:
        matched = [shape for path, shape in shapes.items() if path == target or path.endswith("." + target)]
        if not matched:
            raise ValueError(f"LoRA target {target!r} matches no module of {type(config).__name__}; its modules: "
                             f"{', '.join(shapes)}")
        per_layer += sum(r * (fan_in + fan_out) for fan_in, fan_out in matched)
    return per_layer * _layers(config)


@dataclass(frozen=True)
class ModelStates:
    """Bytes of the model states of one training setup (not activations), before any ZeRO division."""

    parameters: int          # every parameter of the model
    trainable: int           # those with gradients and optimizer states (all of them, or the LoRA adapters)
    precision: str           # "mixed" or "fp32"
    weights: int             # every weight (frozen base + adapters), in the compute precision
    gradients: int           # trainable parameters only
    master: int              # float32 master weights (mixed precision), trainable only
    moments: int             # AdamW's two float32 moments, trainable only

    @property
    def optimizer(self) -> int:
        """What ZeRO calls the optimizer states (K per parameter): master weights and moments."""
        return self.master + self.moments

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def model_states(config: Config, precision: str = "mixed", lora_r: int | None = None,
                 lora_targets: tuple[str, ...] | None = None) -> ModelStates:
    """Weights, gradients, master weights and AdamW moments of full fine-tuning (lora_r None) or of LoRA."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    weight_b, grad_b, master_b, moment_b = PRECISIONS[precision]
    base = parameter_count(config)
    adapters = 0 if lora_r is None else lora_parameters(config, lora_r, lora_targets)
    trainable = base if lora_r is None else adapters
    return ModelStates(parameters=base + adapters, trainable=trainable, precision=precision,
                       weights=weight_b * (base + adapters), gradients=grad_b * trainable,
                       master=master_b * trainable, moments=moment_b * trainable)


def zero_per_gpu(states: ModelStates, gpus: int, stage: int) -> dict[str, int]:
    """Model-state bytes on each of `gpus` data-parallel GPUs under ZeRO `stage` (0: plain data parallel, every GPU
    holds everything; 1: optimizer states / N; 2: + gradients / N; 3: + weights / N). A shard rounds up."""
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"gpus must be a positive int, got {gpus!r}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")

    def part(nbytes: int, divided: bool) -> int:
        return -(-nbytes // gpus) if divided else nbytes

    out = {"weights": part(states.weights, stage >= 3), "gradients": part(states.gradients, stage >= 2),
           "optimizer": part(states.optimizer, stage >= 1)}
    out["total"] = sum(out.values())
    return out


def deepspeed_estimate(states: ModelStates, gpus: int, stage: int, largest_layer_parameters: int = 0) -> int:
    """What DeepSpeed's estimators print per GPU (no offload): ZeRO-2 4 P + 16 P / N, ZeRO-3 4 L + 18 P / N (L = the
    largest layer's parameters). They count working buffers the paper's formulas leave out; full fine-tuning only."""
    params = states.trainable
    if stage == 2:
        return 4 * params + int(16 * params / gpus)
    if stage == 3:
        return 4 * largest_layer_parameters + int(18 * params / gpus)
    raise ValueError(f"DeepSpeed's estimators cover ZeRO stages 2 and 3, got {stage}")


def korthikanti_bytes_per_token(config: Config, seq_len: int, checkpointing: bool = False) -> int:
    """Activation bytes per token of the whole stack of layers, by Korthikanti et al. 2022 (16-bit activations,
    dropout masks 1 byte): per layer 34 h + 5 a s (attention scores grow with s). With full recomputation: 2 h per
    layer (each block's input) + one layer's 34 h + 5 a s, rebuilt while its backward runs."""
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    h, a, layers = _width(config), _heads(config), _layers(config)
    per_layer = 34 * h + 5 * a * seq_len
    return 2 * h * layers + per_layer if checkpointing else per_layer * layers


def activation_bytes_per_token(config: Config, seq_len: int, checkpointing: bool = False) -> dict[str, int]:
    """Korthikanti's transformer layers plus the output head's float32 logits (4 V bytes per token, which the
    cross-entropy reads; Korthikanti et al. count them as 4 s b v): {"layers", "logits", "total"}."""
    layers = korthikanti_bytes_per_token(config, seq_len, checkpointing)
    logits = 4 * config.vocab_size
    return {"layers": layers, "logits": logits, "total": layers + logits}


# --- what our backward actually keeps ------------------------------------------------------------------------------

def stored_bytes_per_token(config: Config, seq_len: int, dtype: str = "float32",
                           checkpointing: bool = False) -> dict[str, int]:
    """The bytes per token that scratch.train's training forward keeps for its backward (the Tape of
    model_grads.forward, plus the cross-entropy's probabilities), for a model computing in `dtype`.

    Per layer, b = bytes of dtype, h width, q = H D, kv = Hkv D, f MLP width, a heads, k the keys a query's
    softmax row holds (attention runs in causal query blocks, each against the keys up to its last row: k = s for
    s <= 64, (s + 64) / 2 for a multiple of 64; `_keys_per_query`):
      GPT-2:  8 h + 8 + 7 b h + 2 b f + 4 f + b a k    each LayerNorm keeps its input in float32 (4 h) and its
                                                  normalized output (b h) and 1/std (4); attention keeps q (b h),
                                                  the fused qkv (3 b h), the softmax (b a k) and the merged heads
                                                  (b h); the MLP its two activations (2 b f) and GELU's tanh in
                                                  float32 (4 f). No dropout masks.
      Llama:  4 b h + 8 + 3 b q + 3 b kv + 3 b f + b a k    RMSNorm keeps input and output in dtype; attention
                                                  the rotated q and k, the fused qkv, the softmax, the merged
                                                  heads; the SwiGLU MLP gate|up (2 b f) and its product (b f).
    Head: the final norm (as above), the ids (8), and the float32 softmax probabilities (4 V) that become
    dL/dlogits. With checkpointing each layer keeps only its input (b h), and one layer's cache is rebuilt at a
    time in the backward. Not counted: RoPE's cos/sin tables and the mask (shared, not per token), temporaries.
    """
    b = {"float16": 2, "float32": 4, "float64": 8}[dtype]
    h, a, layers = _width(config), _heads(config), _layers(config)
    k = _keys_per_query(seq_len)
    if isinstance(config, GPT2Config):
        per_layer = 8 * h + 8 + 7 * b * h + 2 * b * config.n_inner + max(b, 4) * config.n_inner + b * a * k
        final_norm = 4 * h + 4 + b * h
    elif isinstance(config, LlamaConfig):
        q, kv = a * config.head_dim, config.num_key_value_heads * config.head_dim
        per_layer = 4 * b * h + 8 + 3 * b * q + 3 * b * kv + 3 * b * config.intermediate_size + b * a * k
        final_norm = 2 * b * h + 4
    else:
        raise ValueError(f"scratch.train trains GPT-2 and Llama, not {type(config).__name__}")
    stack = b * h * layers + per_layer if checkpointing else per_layer * layers
    head = final_norm + 8 + 4 * config.vocab_size
    return {"layers": stack, "head": head, "total": stack + head}


def _keys_per_query(seq_len: int):
    """Keys per query in the softmax the backward keeps, averaged over s queries: blocks of ATTENTION_BLOCK query
    rows each keep their scores against the keys up to their last row (an int when it divides evenly)."""
    total = sum((min(start + ATTENTION_BLOCK, seq_len) - start) * min(start + ATTENTION_BLOCK, seq_len)
                for start in range(0, seq_len, ATTENTION_BLOCK))
    return total // seq_len if total % seq_len == 0 else total / seq_len


def _root(array):
    while getattr(array, "base", None) is not None and not isinstance(array.base, (bytes, memoryview)):
        array = array.base
    return array


def measured_tape_bytes(model, batch: int, seq_len: int, checkpointing: bool = False, seed: int = 0) -> dict:
    """Run model_grads' training forward on random ids and count the bytes its Tape holds -- every distinct
    buffer reachable from it that is not a parameter: {"layers", "head", "shared"} (head: the final norm and the
    ids, without the cross-entropy's 4 V per token, which it computes later; shared: the mask and RoPE tables every
    block reads). The check that stored_bytes_per_token says what the code does."""
    import dataclasses

    import numpy as np

    from scratch.train import model_grads

    parameters = {id(_root(p)) for p in model_grads.named_parameters(model).values()}
    ids = np.random.default_rng(seed).integers(0, model.n_vocab, size=(batch, seq_len))
    _, tape = model_grads.forward(model, model.backend.asarray(ids), checkpointing=checkpointing)

    def buffers(obj, found: dict, seen: set) -> dict:
        if id(obj) in seen or obj is model:
            return found
        seen.add(id(obj))
        if hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "nbytes"):
            root = _root(obj)
            if id(root) not in parameters:
                found[id(root)] = root.nbytes
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                buffers(item, found, seen)
        elif isinstance(obj, dict):
            for item in obj.values():
                buffers(item, found, seen)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                buffers(getattr(obj, f.name), found, seen)
        return found

    shared = buffers(tape.context, {}, set())                        # the mask, RoPE's cos/sin: once per batch
    layers = {key: n for key, n in buffers(tape.kept, {}, set()).items() if key not in shared}
    head = {key: n for key, n in buffers((tape.head_cache, tape.embed_cache), {}, set()).items()
            if key not in shared and key not in layers}
    return {"layers": sum(layers.values()), "head": sum(head.values()), "shared": sum(shared.values())}


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def training_report(name: str, config: Config, lora_r: int | None = None, lora_targets: tuple[str, ...] | None = None,
                    checkpointing: bool = False, precision: str = "mixed", seq_len: int | None = None,
                    gpus: int = 1, zero: int = 0) -> str:
    """The text `scratch info NAME --training ...` prints: model states, activations per token, ZeRO division.
    seq_len (s in the activation formulas) defaults to the context length, at most 2048."""
    seq_len = min(context_length(config), 2048) if seq_len is None else seq_len
    states = model_states(config, precision, lora_r, lora_targets)
    weight_b, grad_b, master_b, moment_b = PRECISIONS[precision]
    targets = lora_targets or LORA_DEFAULT_TARGETS[type(config)]
    what = "full fine-tuning" if lora_r is None else f"LoRA r={lora_r} on {', '.join(targets)}"
    recipe = ("mixed precision: 16-bit weights and gradients, float32 master weights and moments"
              if precision == "mixed" else "float32 weights, gradients and moments")
    rows = [
        ("parameters", f"{format_count(states.parameters)}",
         f"{states.parameters:,}; trainable {states.trainable:,} ({_share(states.trainable, states.parameters)})"),
        ("weights", format_bytes(states.weights),
         f"{weight_b} B x every parameter" + (" (the frozen base included)" if lora_r else "")),
        ("gradients", format_bytes(states.gradients), f"{grad_b} B x trainable"),
    ]
    if states.master:
        rows.append(("master weights", format_bytes(states.master), f"{master_b} B x trainable (float32)"))
    rows += [
        ("AdamW moments", format_bytes(states.moments), f"{moment_b} B x trainable (m and v, float32)"),
        ("model states", format_bytes(states.total), f"{states.total / states.parameters:.2f} B per parameter"),
    ]
    h, a, layers = _width(config), _heads(config), _layers(config)
    paper = activation_bytes_per_token(config, seq_len, checkpointing)
    formula = (f"2h x {layers} + one layer's 34h + 5as" if checkpointing else f"(34h + 5as) x {layers} layers")
    rows += [
        ("activations", f"{format_bytes(paper['total'])}/token",
         f"Korthikanti et al. 2022, 16-bit: {formula} + 4V logits; h={h} a={a} s={seq_len}"),
    ]
    if isinstance(config, (GPT2Config, LlamaConfig)):
        compute = "float16" if precision == "mixed" else "float32"
        ours = stored_bytes_per_token(config, seq_len, compute, checkpointing)
        rows.append(("  scratch.train", f"{format_bytes(ours['total'])}/token",
                     f"what our backward keeps ({compute} compute, no dropout)"))
    rows.append((f"  x {seq_len} tokens", format_bytes(paper["total"] * seq_len),
                 "one sequence (Korthikanti)"))
    if gpus > 1 or zero:
        shard = zero_per_gpu(states, gpus, zero)
        rows.append((f"ZeRO-{zero}, {gpus} GPUs", f"{format_bytes(shard['total'])}/GPU",
                     (f"model states: weights {format_bytes(shard['weights'])}, gradients "
                      f"{format_bytes(shard['gradients'])}, optimizer {format_bytes(shard['optimizer'])}")))
    label_width = max(len(label) for label, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines = [f"{name}: training memory, {what}, AdamW, {recipe}"]
    lines += [f"{label:<{label_width}}  {value:>{value_width}}  {note}" for label, value, note in rows]
    return "\n".join(lines)


def tricks_table(config: Config, seq_len: int, lora_r: int = 8, gpus: int = 8) -> str:
    """A markdown table of what each trick saves for one model (docs/finetuning.md): model states, and activations
    of one seq_len-token sequence by Korthikanti et al. (16-bit) and by what scratch.train keeps (its compute dtype),
    for full fine-tuning in float32 and mixed precision, with checkpointing, with LoRA, and with ZeRO-3."""
    full, lora = model_states(config, "mixed"), model_states(config, "mixed", lora_r)
    fp32 = model_states(config, "fp32")
    ours = isinstance(config, (GPT2Config, LlamaConfig))

    def acts(checkpointing: bool, dtype: str | None) -> tuple[str, str]:
        paper = "-" if dtype == "float32" else format_bytes(
            activation_bytes_per_token(config, seq_len, checkpointing)["total"] * seq_len)
        mine = format_bytes(stored_bytes_per_token(config, seq_len, dtype or "float16", checkpointing)["total"]
                            * seq_len) if ours else "-"
        return paper, mine

    rows = [
        ("full, float32", fp32.trainable, format_bytes(fp32.total), *acts(False, "float32")),
        ("full, mixed precision", full.trainable, format_bytes(full.total), *acts(False, None)),
        ("full, mixed, checkpointing", full.trainable, format_bytes(full.total), *acts(True, None)),
        (f"full, mixed, ZeRO-3 on {gpus} GPUs", full.trainable,
         f"{format_bytes(zero_per_gpu(full, gpus, 3)['total'])} per GPU", *acts(False, None)),
        (f"LoRA r={lora_r}, mixed", lora.trainable, format_bytes(lora.total), *acts(False, None)),
        (f"LoRA r={lora_r}, mixed, checkpointing", lora.trainable, format_bytes(lora.total), *acts(True, None)),
    ]
    header = (f"| setup | trainable | model states | activations, {seq_len} tokens (Korthikanti) | "
              "activations (scratch.train) |")
    lines = [header, "|---|---:|---:|---:|---:|"]
    lines += [f"| {setup} | {format_count(trainable)} | {states} | {paper} | {mine} |"
              for setup, trainable, states, paper, mine in rows]
    return "\n".join(lines)
