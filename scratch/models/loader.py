"""Load a model from a Hugging Face folder (config.json + safetensors), or build a random one from a config.

`load(folder)` reads config.json, picks the model family from its "architectures" entry (falling back to
"model_type"), reads the weights with scratch's own safetensors reader (sharded folders included) and hands them to
that family's `from_weights`: GPT2LMHeadModel / GPT2Model -> gpt2, LlamaForCausalLM / LlamaModel -> llama,
BertModel / BertForMaskedLM / BertForPreTraining -> bert. `from_config(config)` builds a randomly initialised model
of the config's family (same seed, same weights on every backend). A GGUF file (llama.cpp's format, quantised or
not) is handed to scratch.models.gguf. `load(folder, adapter=DIR)` merges a PEFT LoRA adapter into the weights as
they are read (scratch.models.adapter). Not here: PyTorch .bin files.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from scratch.formats.gguf import is_gguf
from scratch.formats.hub import resolve_model_id
from scratch.models.adapter import merge_adapter, read_adapter
from scratch.models.config import BertConfig, GPT2Config, LlamaConfig, config_from_hf, read_config_json
from scratch.models.safetensors import load_folder

__all__ = ["ARCHITECTURES", "load", "from_config", "architecture_of"]

# Hugging Face architecture name -> our module (each provides from_weights and from_config).
ARCHITECTURES: dict[str, str] = {
    "GPT2LMHeadModel": "scratch.models.gpt2",
    "GPT2Model": "scratch.models.gpt2",
    "LlamaForCausalLM": "scratch.models.llama",
    "LlamaModel": "scratch.models.llama",
    "BertModel": "scratch.models.bert",
    "BertForMaskedLM": "scratch.models.bert",
    "BertForPreTraining": "scratch.models.bert",
}
# What a config.json without "architectures" most likely holds.
_DEFAULT_ARCHITECTURE = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "bert": "BertForMaskedLM"}
_CONFIG_MODULES = {GPT2Config: "scratch.models.gpt2", LlamaConfig: "scratch.models.llama",
                   BertConfig: "scratch.models.bert"}


def architecture_of(d: dict) -> str:
    """The architecture a config.json dict names: its first "architectures" entry, else model_type's default."""
    names = d.get("architectures")
    if names:
        if not isinstance(names, list) or not isinstance(names[0], str):
            raise ValueError(f"config.json 'architectures' must be a list of names, got {names!r}")
        name = names[0]
    else:
        model_type = d.get("model_type")
        name = _DEFAULT_ARCHITECTURE.get(model_type) if isinstance(model_type, str) else None
        if name is None:
            raise ValueError(f"config.json names no architecture and an unsupported model_type "
                             f"{d.get('model_type')!r}; supported architectures: {', '.join(ARCHITECTURES)}")
    if name not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {name!r}; supported: {', '.join(ARCHITECTURES)}")
    return name


def load(folder, backend="numpy", dtype="float32", adapter=None):
    """The model in a Hugging Face folder (config.json + model.safetensors or its sharded index), or in a GGUF file
    (recognised by its magic bytes; scratch.models.gguf), on `backend`. A Hugging Face model id "owner/name" that is
    not a local path is read from the hub cache (scratch.formats.hub; fetched there first when online).

    Weights are memory-mapped, checked tensor by tensor (a missing tensor or a wrong shape raises ValueError naming
    it), converted to `dtype` and moved to the backend once. An unknown architecture raises ValueError naming it.
    adapter: a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) trained on this base; each adapted
    weight becomes W + scaling * B A (computed in float64, then cast to `dtype`) before the model is built.
    """
    folder = Path(folder)
    if not folder.exists():  # "owner/name": a Hugging Face model id, from (or fetched into) the hub cache
        folder = resolve_model_id(folder)
    if is_gguf(folder):
        if adapter is not None:
            raise ValueError(f"adapter=: LoRA adapters merge into safetensors checkpoints, not into the GGUF file "
                             f"{folder}")
        from scratch.models.gguf import load_gguf_model

        return load_gguf_model(folder, backend=backend, dtype=dtype)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is neither a model folder (config.json + safetensors) nor a GGUF file")
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    d = read_config_json(folder)
    architecture = architecture_of(d)
    config = config_from_hf(d)
    if _CONFIG_MODULES[type(config)] != ARCHITECTURES[architecture]:
        raise ValueError(f"{folder / 'config.json'}: architectures names {architecture!r} but model_type is "
                         f"{d.get('model_type')!r}")
    module = importlib.import_module(ARCHITECTURES[architecture])
    weights = load_folder(folder)   # memory-mapped host arrays; the model casts each to `dtype` on transfer
    if adapter is not None:
        weights = merge_adapter(weights, read_adapter(adapter))          # the adapted matrices, W + scaling B A
    return module.from_weights(config, weights, backend=backend, dtype=dtype)


def from_config(config, backend="numpy", seed: int | None = 0, dtype="float32"):
    """A randomly initialised model of `config`'s family (GPT2Config, LlamaConfig or BertConfig), drawn from the
    host generator `backends.rng(seed)`: the same seed gives the same weights on every backend."""
    name = _CONFIG_MODULES.get(type(config))
    if name is None:
        raise ValueError(f"from_config wants a GPT2Config, LlamaConfig or BertConfig, got {type(config).__name__}")
    return importlib.import_module(name).from_config(config, backend=backend, seed=seed, dtype=dtype)
