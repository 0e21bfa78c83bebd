"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): fine-tune a frozen model through small
rank-r adapters beside chosen projections, with PEFT's initialisation, scaling, names and file format -- so PEFT loads
the adapters we train and we load the ones PEFT trains.

    train.add_lora(model, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    loss, grads = train.loss_and_grads(model, input_ids, targets)   # only A and B, under PEFT's names
    train.AdamW(model, lr=1e-3).step(grads)                          # steps only the adapters
    train.save_adapter(model, "adapter")          # PEFT's folder; scratch.models.load(base, adapter="adapter")

A wrapped projection y = x W gains y += scaling * (x A^T) B^T, A (r, in) and B (out, r), scaling = lora_alpha / r.
A starts as PEFT draws it (kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) and B at zero, so the
model is unchanged until the first step. The base weights are never written, except by merge_lora / unmerge_lora,
which add and subtract scaling * B A. The adapters live in a side table beside the frozen model (decoder.ADAPTERS),
their forward/backward pair is decoder.lora_forward / lora_backward, the file format scratch.models.adapter.
Not here: DoRA, adapters on embeddings or the head, several adapters on one model, a quantised base (QLoRA).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import backends
import scratch.models
from scratch.models.adapter import PEFT_PREFIX, adapter_config, lora_scaling, read_adapter, write_adapter
from scratch.models.gpt2 import GPT2
from scratch.models.inputs import check_length, token_ids
from scratch.train import model_grads
from scratch.train.amp import GradScaler, MixedPrecision
from scratch.train.decoder import ADAPTERS, LoraAdapter
from scratch.train.loop import Trainer, read_trainer_state
from scratch.train.memory import LORA_DEFAULT_TARGETS

__all__ = ["LoraConfig", "LoraState", "add_lora", "lora_state", "adapter_parameters", "merge_lora", "unmerge_lora",
           "remove_lora", "save_adapter", "load_adapter", "logits", "LoraTrainer"]


@dataclass(frozen=True)
class LoraConfig:
    """The hyperparameters of one model's adapters (what adapter_config.json records)."""

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str   # names as PEFT matches them (a module path or its ending), or a regex
    lora_dropout: float = 0.0               # dropout on each adapter's input, training forwards only
    use_rslora: bool = False                # scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski 2023)
    seed: int = 0                           # the host generator of A's initialisation and the dropout masks

    def __post_init__(self):
        if not (isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0):
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.lora_alpha, self.use_rslora)


class LoraState:
    """The adapters of one model: {checkpoint module: LoraAdapter} in the model's order, whether they are merged
    into the weights, and the host generator that drew A and draws the dropout masks (`masks`: those of the
    training forward in progress, by module; empty otherwise)."""

    def __init__(self, model, config: LoraConfig, modules: dict, rng: np.random.Generator):
        self.backend, self.dtype = model.backend, model.dtype
        self.config, self.modules, self.rng = config, modules, rng
        self.fan_in_fan_out = isinstance(model, GPT2)      # GPT-2's Conv1D stores W (in, out): PEFT records it
        self.merged = False
        self.masks: dict = {}

    def parameters(self) -> dict:
        """{PEFT name: array}: each module's A then B, the modules in the model's order (PEFT's order)."""
        params = {}
        for adapter in self.modules.values():
            params[adapter.names[0]], params[adapter.names[1]] = adapter.A, adapter.B
        return params

    def draw_dropout_masks(self, batch_shape: tuple[int, int]) -> None:
        """With lora_dropout p > 0, one mask per module for a (B, T) batch: entries 0 with probability p, else
        1 / (1 - p) (torch's inverted dropout), drawn on the host so every backend drops the same entries."""
        p = self.config.lora_dropout
        if p == 0.0:
            return
        masks = {}
        for module, adapter in self.modules.items():
            keep = self.rng.random((*batch_shape, adapter.A.shape[1])) >= p            # (B, T, C_in)
            masks[module] = self.backend.asarray(keep / (1.0 - p), dtype=self.dtype)
        self.masks = masks


# --- which projections a target names -------------------------------------------------------------------------------

def _architecture(model):
    """model_grads.architecture_of, refusing other models in LoRA's words."""
    try:
        return model_grads.architecture_of(model)
    except TypeError:
        raise TypeError(f"LoRA here wraps GPT2 and Llama models, not {type(model).__name__}") from None


def _slots(model) -> dict:
    """{checkpoint module: (stored weight (C_in, C_out), first column, end column)} of every block projection."""
    architecture = _architecture(model)
    slots = {}
    for i in range(len(model.layers)):
        for projection in architecture.layer_projections(model, i).values():
            for part, start, end in projection.parts:
                slots[part] = (projection.weight, start, end)
    return slots


def _leaf_names(slots: dict) -> list[str]:
    """The distinct last components of the modules (q_proj, ..., or c_attn, c_proj, c_fc): PEFT's "all-linear"."""
    return list(dict.fromkeys(module.rpartition(".")[2] for module in slots))


def _matches(module: str, target: str) -> bool:
    """PEFT's rule for a name: the module's path is the target, or ends with "." + target."""
    return module == target or module.endswith("." + target)


def _targeted(model, slots: dict, target_modules) -> tuple[list[str], tuple[str, ...]]:
    """(modules to wrap, the target names as recorded). Every target must match a projection."""
    if target_modules is None:
        target_modules = LORA_DEFAULT_TARGETS[type(model.config)]
    if target_modules == "all-linear":            # PEFT's shorthand: every linear layer but the output head
        target_modules = _leaf_names(slots)
    if isinstance(target_modules, str) or not target_modules or not all(isinstance(t, str) for t in target_modules):
        raise ValueError(f"target_modules must be a non-empty list of module names or 'all-linear', "
                         f"got {target_modules!r}")
    layer0 = [module for module in slots if ".0." in module]
    for target in target_modules:
        if not any(_matches(module, target) for module in slots):
            known = ", ".join(module.split(".0.", 1)[1] for module in layer0)
            raise ValueError(f"LoRA target module {target!r} matches no projection of {type(model).__name__}; "
                             f"its projections (in every layer): {known}")
    wrapped = [module for module in slots if any(_matches(module, target) for target in target_modules)]
    return wrapped, tuple(target_modules)


# --- attach, merge, detach -------------------------------------------------------------------------------------------

def add_lora(model, r: int = 8, lora_alpha: float = 16, target_modules=None, lora_dropout: float = 0.0,
             seed: int = 0, use_rslora: bool = False) -> LoraState:
    """Attach rank-r adapters to the projections `target_modules` names (default: PEFT's for the architecture,
    Llama q_proj and v_proj, GPT-2 c_attn; "all-linear" wraps every block projection). Llama: q_proj, k_proj,
    v_proj, o_proj, gate_proj, up_proj, down_proj; GPT-2: c_attn (the fused (C, 3C) matrix, one adapter, as PEFT
    does), c_proj (both, or attn.c_proj / mlp.c_proj), c_fc. A is drawn from backends.rng(seed) module by module
    (the same adapters on every backend), B is zero. From now on trainable_parameters(model) -- so loss_and_grads and
    AdamW(model) -- covers only the adapters. Returns the model's LoraState."""
    if model in ADAPTERS:
        raise ValueError(f"{model!r} already has LoRA adapters (remove_lora(model) first)")
    slots = _slots(model)
    wrapped, targets = _targeted(model, slots, target_modules)
    config = LoraConfig(r, lora_alpha, targets, lora_dropout, use_rslora, seed)
    rng = backends.rng(seed)
    modules = {}
    for module in wrapped:
        weight, start, end = slots[module]
        fan_in = weight.shape[0]
        bound = 1.0 / np.sqrt(fan_in)               # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) * sqrt(3 / fan_in)
        A = model.backend.asarray(rng.uniform(-bound, bound, (r, fan_in)), dtype=model.dtype)   # (r, C_in)
        B = model.backend.xp.zeros((end - start, r), dtype=model.backend.dtype(model.dtype))   # (out, r)
        modules[module] = LoraAdapter(PEFT_PREFIX + module, A, B,
                                      config.scaling)
    state = LoraState(model, config, modules, rng)
    ADAPTERS[model] = state
    return state


def lora_state(model) -> LoraState | None:
    """The model's LoraState, or None when it has no adapters."""
    return ADAPTERS.get(model)


def _state(model, what: str) -> LoraState:
    state = ADAPTERS.get(model)
    if state is None:
        raise ValueError(f"{what}: {model!r} has no LoRA adapters (add_lora or load_adapter first)")
    return state


def adapter_parameters(model) -> dict:
    """{PEFT name: array} of the model's adapters (what a LoRA checkpoint saves)."""
    return _state(model, "adapter_parameters").parameters()


def _deltas(model, state: LoraState):
    """(stored weight, first column, end column, scaling * (B A)^T (C_in, out)) per adapter, PEFT's formula."""
    slots = _slots(model)
    for module, adapter in state.modules.items():
        weight, start, end = slots[module]
        xp = backends.namespace_of(adapter.A)
        delta = xp.permute_dims(xp.matmul(adapter.B, adapter.A), (1, 0)) * adapter.scaling   # (C_in, out)
        yield weight, start, end, delta


def merge_lora(model) -> None:
    """W += scaling * B A in every wrapped projection, in place: model(ids) then computes the adapted model at the
    base's speed (for generation). Training needs unmerge_lora first."""
    state = _state(model, "merge_lora")
    if state.merged:
        raise ValueError("merge_lora: the adapters are already merged")
    for weight, start, end, delta in _deltas(model, state):
        weight[:, start:end] += delta
    state.merged = True


def unmerge_lora(model) -> None:
    """W -= scaling * B A: the base weights back, up to float rounding (W + d - d need not be W bit for bit)."""
    state = _state(model, "unmerge_lora")
    if not state.merged:
        raise ValueError("unmerge_lora: the adapters are not merged")
    for weight, start, end, delta in _deltas(model, state):
        weight[:, start:end] -= delta
    state.merged = False


def remove_lora(model) -> LoraState:
    """Detach the adapters and return them. Merged adapters stay in the weights (PEFT's merge_and_unload)."""
    state = _state(model, "remove_lora")
    del ADAPTERS[model]
    return state


# --- the adapted forward ---------------------------------------------------------------------------------------------

def logits(model, input_ids):
    """(B, T, V) logits of the model with its adapters (no dropout): the training forward without a backward.
    Without adapters, or with merged ones, this is model(input_ids)."""
    state = ADAPTERS.get(model)
    if state is None or state.merged:
        return model(input_ids)
    ids = token_ids(model.backend, input_ids, model.n_vocab)                 # (B, T) int64 on the backend
    check_length(0, ids.shape[1], model.max_length, type(model).__name__)
    return model_grads.forward(model, ids, checkpointing=True)[0]            # keeps only each block's input


# --- PEFT's files ----------------------------------------------------------------------------------------------------

def save_adapter(model, out_dir, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapters as PEFT saves them: out_dir/adapter_model.safetensors (A and B by PEFT name, in the model's
    dtype) and out_dir/adapter_config.json, each file atomically. PeftModel.from_pretrained(base, out_dir) and
    scratch.models.load(base_folder, adapter=out_dir) read it."""
    state = _state(model, "save_adapter")
    c = state.config
    config = adapter_config(c.r, c.lora_alpha, c.target_modules, c.lora_dropout, state.fan_in_fan_out, c.use_rslora,
                            None if base_model_name_or_path is None else str(base_model_name_or_path))
    tensors = {name: np.asarray(state.backend.to_numpy(array)) for name, array in state.parameters().items()}
    return write_adapter(out_dir, config, tensors)


def load_adapter(model, folder) -> LoraState:
    """Attach a PEFT LoRA folder's adapters to `model`, unmerged and trainable (to continue training it, or to run
    it with dropout-free `logits`). If the model already has adapters on the same modules with the same rank, their
    arrays are overwritten in place (an optimizer holding them keeps working: a checkpoint's resume). A module the
    model lacks or a shape that disagrees raises ValueError naming it."""
    lora_file = read_adapter(folder)
    slots = _slots(model)
    for module, (A, B) in lora_file.modules.items():
        if module not in slots:
            raise ValueError(f"adapter {folder}: module {module!r} is not a projection of {model!r}")
        weight, start, end = slots[module]
        if tuple(A.shape) != (lora_file.r, weight.shape[0]) or tuple(B.shape) != (end - start, lora_file.r):
            raise ValueError(f"adapter {folder}: module {module!r} has A {tuple(A.shape)} and B {tuple(B.shape)}; "
                             f"the model's {module} wants A ({lora_file.r}, {weight.shape[0]}) and "
                             f"B ({end - start}, {lora_file.r})")
    state = ADAPTERS.get(model)
    if state is None:
        file_config = lora_file.config
        targets = file_config.get("target_modules")
        targets = targets if isinstance(targets, str) else tuple(targets or sorted(lora_file.modules))
        config = LoraConfig(lora_file.r, lora_file.lora_alpha, targets, float(file_config.get("lora_dropout", 0.0)),
                            lora_file.use_rslora)
        modules = {}
        for module in slots:                                                 # the model's order, not the file's
            if module in lora_file.modules:
                A, B = (model.backend.asarray(np.asarray(t), dtype=model.dtype) for t in lora_file.modules[module])
                modules[module] = LoraAdapter(PEFT_PREFIX + module, A, B,
                                              config.scaling)
        state = LoraState(model, config, modules, backends.rng(config.seed))
        ADAPTERS[model] = state
        return state
    if state.merged:
        raise ValueError("load_adapter: the model's adapters are merged; unmerge_lora(model) first")
    if set(state.modules) != set(lora_file.modules) or state.config.scaling != lora_file.scaling:
        raise ValueError(f"adapter {folder} does not match the model's adapters (modules or rank/alpha differ)")
    for module, (A, B) in lora_file.modules.items():
        adapter = state.modules[module]
        adapter.A[...] = state.backend.asarray(np.asarray(A), dtype=state.dtype)
        adapter.B[...] = state.backend.asarray(np.asarray(B), dtype=state.dtype)
    return state


# --- the training loop -------------------------------------------------------------------------------------------

class LoraTrainer(Trainer):
    """scratch.train.Trainer for a model with adapters: AdamW steps only the adapters (and keeps moments only for
    them), each checkpoint holds the adapter in PEFT's format instead of the weights, validation runs the adapted
    forward, and the dropout generator's state is saved with the rest, so a resume is exact. Mixed precision runs
    the adapters on a float16 copy of the base, as Trainer does for the whole model."""

    def __init__(self, model, *args, **kwargs):
        _state(model, "LoraTrainer")
        super().__init__(model, *args, parameters=adapter_parameters, **kwargs)

    def save_weights(self, folder: Path) -> None:
        save_adapter(self.model, folder)

    def load_weights(self, folder: Path) -> None:
        load_adapter(self.model, folder)
        if self.amp is not None:
            self.amp.refresh()

    def logits(self, model, input_ids):
        return logits(model, input_ids)

    def mixed_precision(self, model) -> MixedPrecision:
        """A float16 copy of the base (made once: it is frozen) with the same adapters; the float32 adapters are the
        master weights the optimizer steps."""
        compute = scratch.models.from_config(model.config, backend=model.backend, seed=0, dtype="float16")
        master_weights = model_grads.named_parameters(model)
        for name, target in model_grads.named_parameters(compute).items():
            target[...] = backends.namespace_of(target).astype(master_weights[name], target.dtype)
        c = _state(model, "mixed_precision").config
        add_lora(compute, c.r, c.lora_alpha, c.target_modules, c.lora_dropout, c.seed, c.use_rslora)
        return MixedPrecision(model, scaler=GradScaler(), parameters=adapter_parameters,
                              loss_and_grads=self._loss_and_grads, compute_model=compute)

    def _dropout_rng(self) -> np.random.Generator:
        """The generator that draws the dropout masks: the compute model's with mixed precision."""
        return ADAPTERS[self.amp.compute_model if self.amp is not None else self.model].rng

    def state(self) -> dict:
        return {**super().state(), "lora_rng": self._dropout_rng().bit_generator.state}

    def resume(self, checkpoint=None) -> bool:
        if not super().resume(checkpoint):
            return False
        saved = read_trainer_state(self.result.checkpoint).get("lora_rng")
        if saved is not None:
            self._dropout_rng().bit_generator.state = saved
        return True

