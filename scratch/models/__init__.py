"""Models: GPT-2, Llama 2 / 3.x and BERT, described by frozen configs and loaded from Hugging Face folders.

`load(folder, backend, dtype)` reads a Hugging Face folder (config.json + safetensors) and picks the architecture;
`from_config(config, backend, seed, dtype)` builds a randomly initialised model. `config` holds the typed configs
(and reads/writes config.json), `safetensors` reads and writes weight files from scratch, `presets` names the
published sizes and does their parameter and memory arithmetic.
"""
from scratch.models.config import (
    BertConfig,
    Config,
    GPT2Config,
    LlamaConfig,
    RopeScaling,
    config_from_hf,
    load_config,
    save_config,
)
from scratch.models.gguf import save_gguf
from scratch.models.loader import from_config, load

__all__ = [
    "BertConfig",
    "Config",
    "GPT2Config",
    "LlamaConfig",
    "RopeScaling",
    "config_from_hf",
    "from_config",
    "load",
    "load_config",
    "save_config",
    "save_gguf",
]
