"""LoRA adapters in PEFT's file format: read, write, and merge into a checkpoint's weights at load time.

A LoRA adapter (Hu et al. 2021) on a weight W (out, in) is two matrices, A (r, in) and B (out, r); the adapted layer
computes W x + scaling * B (A x), with scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora, Kalajdzievski
2023). Merging adds scaling * B A to W once, so the merged model runs at the base model's speed. A PEFT folder holds
adapter_config.json (peft_type "LORA", r, lora_alpha, target_modules, ...) and adapter_model.safetensors, whose
tensors are named "base_model.model.<checkpoint module>.lora_A.weight" and "...lora_B.weight" (PEFT drops the adapter
name when it saves). "fan_in_fan_out": true says the base stores W as (in, out) -- GPT-2's Conv1D -- and then the
merge adds (B A)^T. Used by `scratch.models.load(folder, adapter=DIR)` and by scratch.train.lora (which trains them).
Not here: training (scratch.train.lora), DoRA, LoRA biases, per-module rank/alpha patterns, modules_to_save, adapters
on embeddings.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratch.atomic import atomic_write
from scratch.models.safetensors import load_file, save_file
from scratch.safe_read import read_json

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "PEFT_PREFIX", "peft_tensor_names", "lora_scaling", "adapter_config",
           "LoraFile", "read_adapter", "write_adapter", "merge_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."      # PeftModelForCausalLM.base_model (LoraModel) .model (the transformers model)
_A, _B = ".lora_A.weight", ".lora_B.weight"


def peft_tensor_names(module: str) -> tuple[str, str]:
    """The saved names of a checkpoint module's A and B, e.g. "model.layers.0.self_attn.q_proj" ->
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "...lora_B.weight")."""
    return PEFT_PREFIX + module + _A, PEFT_PREFIX + module + _B


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """What B A x is multiplied by: alpha / r, or alpha / sqrt(r) (rsLoRA keeps the update's size as r grows)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def adapter_config(r: int, lora_alpha: float, target_modules, lora_dropout: float = 0.0, fan_in_fan_out=False,
                   use_rslora: bool = False, base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json as PEFT writes it for a plain LoRA adapter of a causal language model (the fields PEFT's
    LoraConfig reads; every feature we do not implement is written in its 'off' state)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "revision": None, "inference_mode": True,
        "r": int(r), "lora_alpha": lora_alpha, "lora_dropout": float(lora_dropout), "use_rslora": bool(use_rslora),
        "target_modules": sorted(target_modules), "fan_in_fan_out": bool(fan_in_fan_out), "bias": "none",
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "lora_bias": False,
    }


@dataclass(frozen=True)
class LoraFile:
    """A PEFT LoRA folder, read and checked. modules: {checkpoint module: (A (r, in), B (out, r))} host arrays."""

    folder: Path
    config: dict
    modules: dict
    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.lora_alpha, self.use_rslora)


# PEFT features that change what the tensors mean: refused with their name rather than merged wrongly.
_UNSUPPORTED = {"use_dora": (False, None), "lora_bias": (False, None), "bias": ("none", None),
                "modules_to_save": (None,), "rank_pattern": ({}, None), "alpha_pattern": ({}, None),
                "layer_replication": (None,)}


def read_adapter(folder) -> LoraFile:
    """Read adapter_config.json + adapter_model.safetensors from `folder`, checking that it is a plain LoRA adapter
    (ValueError naming the offending field or tensor otherwise)."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: {path.name} is missing")
    config = read_json(config_path, "config.json")        # an adapter from the hub is a stranger's file
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type {config.get('peft_type')!r} is not supported (only 'LORA')")
    for key, allowed in _UNSUPPORTED.items():
        if config.get(key, allowed[0]) not in allowed:
            raise ValueError(f"{config_path}: {key}={config[key]!r} is not supported (plain LoRA adapters only)")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(r, int) and r > 0):
        raise ValueError(f"{config_path}: r must be a positive integer, got {r!r}")
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"{config_path}: lora_alpha must be a positive number, got {alpha!r}")

    tensors = load_file(weights_path)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        suffix = _A if name.endswith(_A) else _B if name.endswith(_B) else None
        if suffix is None or not name.startswith(PEFT_PREFIX):
            raise ValueError(f"{weights_path}: tensor {name!r} is not a LoRA weight "
                             f"('{PEFT_PREFIX}<module>{_A}' or '...{_B}')")
        pairs.setdefault(name[len(PEFT_PREFIX):-len(suffix)], {})[suffix] = array
    if not pairs:
        raise ValueError(f"{weights_path} holds no LoRA tensors")
    modules = {}
    for module, pair in pairs.items():
        if set(pair) != {_A, _B}:
            raise ValueError(f"{weights_path}: module {module!r} has only {next(iter(pair))[1:]}, not both A and B")
        A, B = pair[_A], pair[_B]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            raise ValueError(f"{weights_path}: module {module!r} has A {tuple(A.shape)} and B {tuple(B.shape)}; "
                             f"rank r={r} wants A (r, in) and B (out, r)")
        modules[module] = (A, B)
    return LoraFile(folder, config, modules, r, alpha, bool(config.get("use_rslora", False)),
                    bool(config.get("fan_in_fan_out", False)))


def write_adapter(folder, config: dict, tensors: dict) -> Path:
    """Write a PEFT folder: adapter_model.safetensors (`tensors`, host arrays by PEFT name), then adapter_config.json.
    Each file is written atomically (a kill leaves the old file or the new one, never half of one); the config
    last, so a folder whose config is new has its tensors already in place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / WEIGHTS_NAME, {"format": "pt"})
    with atomic_write(folder / CONFIG_NAME) as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    return folder


def _base_name(weights: dict, module: str) -> str | None:
    """The checkpoint's name of `module`'s weight: "<module>.weight", or that without its first component when the
    checkpoint is the bare model (GPT2Model's "h.0...", LlamaModel's "layers.0...")."""
    for name in (module + ".weight", module.partition(".")[2] + ".weight"):
        if name in weights:
            return name
    return None


def merge_adapter(weights: dict, adapter: LoraFile) -> dict:
    """A copy of `weights` ({checkpoint name: host array}) with every adapted weight replaced by W + scaling * B A
    (transposed when fan_in_fan_out), computed in float64 -- the model's dtype is applied when it is built. A module
    the checkpoint lacks, or a base weight whose shape disagrees with A and B, raises ValueError naming it."""
    merged = dict(weights)
    for module, (A, B) in adapter.modules.items():
        name = _base_name(weights, module)
        if name is None:
            raise ValueError(f"adapter {adapter.folder}: the base checkpoint has no weight for module {module!r} "
                             f"(looked for {module + '.weight'!r})")
        base = weights[name]
        delta = (B.astype(np.float64) @ A.astype(np.float64)) * adapter.scaling       # (out, in)
        if adapter.fan_in_fan_out:
            delta = delta.T                                                          # (in, out): Conv1D's layout
        if tuple(base.shape) != delta.shape:
            raise ValueError(f"adapter {adapter.folder}: module {module!r} has A {tuple(A.shape)} and B "
                             f"{tuple(B.shape)} (fan_in_fan_out={adapter.fan_in_fan_out}), which do not fit the "
                             f"base weight {name!r} of shape {tuple(base.shape)}")
        merged[name] = np.asarray(base, dtype=np.float64) + delta
    return merged
