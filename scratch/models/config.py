"""Model configurations: typed, frozen, validated descriptions of GPT-2, Llama (2, 3.x) and BERT.

A config says how big each piece of a model is; it holds no weights and does no arithmetic on arrays. Each class
reads and writes the Hugging Face `config.json` format (`from_hf` / `to_hf`), in the form transformers 5 writes
(RoPE settings in `rope_parameters`) and in the older forms it still reads (`rope_theta` + `rope_scaling`, with
`rope_type` or the legacy `type`). Sizes follow the papers: GPT-2 (Radford et al. 2019), Llama 2 (Touvron et al.
2023), Llama 3 (Grattafiori et al. 2024), BERT (Devlin et al. 2019). Invalid values raise ValueError naming the field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from scratch.atomic import atomic_write
from scratch.safe_read import read_json
from scratch.nn import ACTIVATIONS  # activation names as Hugging Face spells them -> the function (one table)

# RoPE frequency schedules we implement: "default" (theta ** (-2i/D)), "linear" (positions divided by `factor`,
# Chen et al. 2023) and "llama3" (long wavelengths divided by `factor`, short ones kept, a smooth ramp between).
ROPE_TYPES = ("default", "linear", "llama3")


def _check_positive_int(owner: str, name: str, value: Any) -> None:
    # bool is a subclass of int; a size of True is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _check_positive_float(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive finite number, got {value!r}")


def _check_choice(owner: str, name: str, value: Any, known: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in known:
        raise ValueError(f"{owner}.{name} {value!r} is not supported; known: {', '.join(known)}")


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")


def _check_token_id(owner: str, name: str, value: Any) -> None:
    if value is None:
        return
    ids = value if isinstance(value, tuple) else (value,)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"{owner}.{name} must be a non-negative integer (or a tuple of them), got {value!r}")


def _token_id(value: Any) -> int | tuple[int, ...] | None:
    """config.json writes several end-of-sequence ids as a list; a frozen config keeps them as a tuple."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 else tuple(value)
    return value


def _json_token_id(value: int | tuple[int, ...] | None) -> int | list[int] | None:
    return list(value) if isinstance(value, tuple) else value


def _pick(cls: type, d: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of `d` that are fields of `cls`; unrelated keys (dropout rates, id2label, ...) are ignored."""
    missing = [key for key in required if key not in d]
    if missing:
        raise ValueError(f"config.json for {cls.__name__} is missing {', '.join(repr(k) for k in missing)}")
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in d.items() if key in names}


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """How RoPE's frequencies are stretched for contexts longer than the one the model was pre-trained on.

    "llama3" (Llama 3.1 / 3.2): wavelengths longer than original/low_freq_factor are divided by `factor`, those shorter
    than original/high_freq_factor are kept, and the ones between are blended linearly.
    """

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # The context length of pre-training (8192 for Llama 3.1/3.2); only "llama3" uses it. None = not given.
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        _check_choice("RopeScaling", "rope_type", self.rope_type, ROPE_TYPES)
        _check_positive_float("RopeScaling", "factor", self.factor)
        _check_positive_float("RopeScaling", "low_freq_factor", self.low_freq_factor)
        _check_positive_float("RopeScaling", "high_freq_factor", self.high_freq_factor)
        if self.original_max_position_embeddings is not None:
            _check_positive_int("RopeScaling", "original_max_position_embeddings",
                                self.original_max_position_embeddings)
        if self.rope_type == "llama3":
            if self.original_max_position_embeddings is None:
                raise ValueError("RopeScaling.original_max_position_embeddings is required for rope_type 'llama3'")
            # The ramp between the two wavelength bounds divides by (high - low).
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError(f"RopeScaling.high_freq_factor ({self.high_freq_factor!r}) must be greater than "
                                 f"low_freq_factor ({self.low_freq_factor!r}) for rope_type 'llama3'")

    @classmethod
    def from_hf(cls, d: dict[str, Any], max_position_embeddings: int | None = None) -> RopeScaling | None:
        """Read a `rope_parameters` / `rope_scaling` dict; "default" (no scaling) gives None."""
        if not d:
            return None
        # v4 configs before 4.42 spelled the key "type"; both mean the same.
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type == "default":
            return None
        original = d.get("original_max_position_embeddings")
        if rope_type == "llama3" and original is None:
            original = max_position_embeddings  # what transformers assumes when the field is absent
        kwargs = {k: d[k] for k in ("factor", "low_freq_factor", "high_freq_factor") if d.get(k) is not None}
        return cls(rope_type=rope_type, original_max_position_embeddings=original, **kwargs)

    def to_hf(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rope_type": self.rope_type, "factor": float(self.factor)}
        if self.rope_type == "llama3":
            d["low_freq_factor"] = float(self.low_freq_factor)
            d["high_freq_factor"] = float(self.high_freq_factor)
        if self.original_max_position_embeddings is not None:
            d["original_max_position_embeddings"] = self.original_max_position_embeddings
        return d


@dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """GPT-2: learned absolute positions, pre-norm LayerNorm blocks, a 4x GELU MLP, output head tied to wte."""

    vocab_size: int = 50257  # 50,000 BPE merges + 256 byte tokens + <|endoftext|>
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width F; None means 4 * n_embd and is stored resolved
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"  # the tanh approximation of GELU, as OpenAI's TensorFlow code computed it
    tie_word_embeddings: bool = True  # the LM head reuses the token embedding matrix (no separate weights)
    bos_token_id: int | None = 50256  # GPT-2 has one special token, <|endoftext|>, used for both ends
    eos_token_id: int | tuple[int, ...] | None = 50256

    def __post_init__(self) -> None:
        if self.n_inner is None:
            object.__setattr__(self, "n_inner", 4 * self.n_embd)
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"):
            _check_positive_int("GPT2Config", name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT2Config.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        _check_positive_float("GPT2Config", "layer_norm_epsilon", self.layer_norm_epsilon)
        _check_choice("GPT2Config", "activation", self.activation, ACTIVATIONS)
        _check_bool("GPT2Config", "tie_word_embeddings", self.tie_word_embeddings)
        _check_token_id("GPT2Config", "bos_token_id", self.bos_token_id)
        _check_token_id("GPT2Config", "eos_token_id", self.eos_token_id)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> GPT2Config:
        # Features GPT-2 checkpoints never use; refusing them beats computing a different model silently.
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
            raise ValueError("GPT2Config: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
        if d.get("scale_attn_weights") is False:
            raise ValueError("GPT2Config: scale_attn_weights=false (no 1/sqrt(D) scaling) is not supported")
        kwargs = _pick(cls, d)
        if "activation_function" in d:
            kwargs["activation"] = d["activation_function"]
        for key in ("bos_token_id", "eos_token_id"):
            if key in kwargs:
                kwargs[key] = _token_id(kwargs[key])
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation_function": self.activation,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": _json_token_id(self.bos_token_id),
            "eos_token_id": _json_token_id(self.eos_token_id),
        }


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Llama 2 / 3.x: RMSNorm pre-norm blocks, RoPE, grouped-query attention, a SwiGLU MLP, no biases."""

    vocab_size: int
    hidden_size: int  # C
    intermediate_size: int  # F, the SwiGLU width (about 8/3 * C rounded up to a multiple of 256 in Llama 2)
    num_hidden_layers: int
    num_attention_heads: int  # H
    max_position_embeddings: int  # the context length the model is meant to be run at
    num_key_value_heads: int | None = None  # Hkv; None means H (plain multi-head attention), stored resolved
    head_dim: int | None = None  # D; None means C // H, stored resolved (Llama 3.2 3B: 3072 // 24 = 128)
    # transformers' default; every published Llama 2 / 3.x config.json states 1e-5 explicitly (presets set it).
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0  # RoPE base; Llama 3 raised it to 500,000 for longer wavelengths
    rope_scaling: RopeScaling | None = None  # None = plain RoPE with no context extension
    tie_word_embeddings: bool = False  # True only in the small Llama 3.2 models (1B, 3B)
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1  # SentencePiece <s> in Llama 2; 128000 <|begin_of_text|> in Llama 3
    eos_token_id: int | tuple[int, ...] | None = 2  # chat models list several (e.g. <|eot_id|> too)
    hidden_act: str = "silu"  # the gate's activation: SiLU makes the MLP SwiGLU

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            _check_positive_int("LlamaConfig", name, getattr(self, name))
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        _check_positive_int("LlamaConfig", "num_key_value_heads", self.num_key_value_heads)
        # transformers 5 requires this even when head_dim is given (and H * D then need not equal C).
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"LlamaConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _check_positive_int("LlamaConfig", "head_dim", self.head_dim)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"LlamaConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                             f"num_key_value_heads ({self.num_key_value_heads}): each kv head serves a whole group")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim ({self.head_dim}) must be even: RoPE rotates pairs of channels")
        _check_positive_float("LlamaConfig", "rms_norm_eps", self.rms_norm_eps)
        _check_positive_float("LlamaConfig", "rope_theta", self.rope_theta)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"LlamaConfig.rope_scaling must be a RopeScaling or None, got {self.rope_scaling!r}")
        _check_choice("LlamaConfig", "hidden_act", self.hidden_act, ACTIVATIONS)
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            _check_bool("LlamaConfig", name, getattr(self, name))
        _check_token_id("LlamaConfig", "bos_token_id", self.bos_token_id)
        _check_token_id("LlamaConfig", "eos_token_id", self.eos_token_id)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlamaConfig:
        kwargs = _pick(cls, d, required=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "max_position_embeddings"))
        # RoPE settings come in three spellings: transformers 5 `rope_parameters` (theta inside), transformers 4
        # `rope_theta` + `rope_scaling` (with "rope_type", or "type" before 4.42). 5 reads all; so do we.
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            key = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
            raise ValueError(f"LlamaConfig.{key} must be a JSON object (rope_type, factor, ...), got {rope!r}")
        if "rope_theta" in rope:
            kwargs["rope_theta"] = rope["rope_theta"]
        elif d.get("rope_theta") is not None:
            kwargs["rope_theta"] = d["rope_theta"]
        kwargs["rope_scaling"] = RopeScaling.from_hf(rope, d["max_position_embeddings"])
        for key in ("bos_token_id", "eos_token_id"):
            if key in kwargs:
                kwargs[key] = _token_id(kwargs[key])
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """config.json as transformers 5 writes it (`rope_parameters`), plus the transformers 4 RoPE keys."""
        rope: dict[str, Any] = {"rope_type": "default"}
        if self.rope_scaling is not None:
            rope = self.rope_scaling.to_hf()
        rope["rope_theta"] = float(self.rope_theta)
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            # The same settings in transformers 4's spelling, so 4.x (which ignores rope_parameters) reads the
            # right RoPE too; transformers 5 reads both and they agree.
            "rope_theta": float(self.rope_theta),
            "rope_scaling": None if self.rope_scaling is None else self.rope_scaling.to_hf(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": _json_token_id(self.bos_token_id),
            "eos_token_id": _json_token_id(self.eos_token_id),
            "hidden_act": self.hidden_act,
        }


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """BERT: an encoder with post-norm blocks, learned positions and segment (token type) embeddings."""

    vocab_size: int = 30522  # the uncased WordPiece vocabulary
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # segment A / segment B (the two sentences of next-sentence prediction)
    layer_norm_eps: float = 1e-12  # BERT's original TensorFlow code used 1e-12, far below the usual 1e-5
    hidden_act: str = "gelu"  # the exact erf GELU, not GPT-2's tanh approximation
    pad_token_id: int | None = 0  # [PAD] is id 0 in the WordPiece vocabulary

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            _check_positive_int("BertConfig", name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        _check_positive_float("BertConfig", "layer_norm_eps", self.layer_norm_eps)
        _check_choice("BertConfig", "hidden_act", self.hidden_act, ACTIVATIONS)
        _check_token_id("BertConfig", "pad_token_id", self.pad_token_id)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> BertConfig:
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BertConfig: position_embedding_type {d['position_embedding_type']!r} is not "
                             "supported; only 'absolute'")
        return cls(**_pick(cls, d))

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": "bert",
            "architectures": ["BertForMaskedLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "pad_token_id": self.pad_token_id,
        }


Config = GPT2Config | LlamaConfig | BertConfig

# model_type in config.json -> our class.
CONFIG_CLASSES: dict[str, type] = {"gpt2": GPT2Config, "llama": LlamaConfig, "bert": BertConfig}


def config_from_hf(d: dict[str, Any]) -> Config:
    """The config a Hugging Face config.json dict describes, chosen by its "model_type"."""
    model_type = d.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_CLASSES:
        raise ValueError(f"unsupported model_type {model_type!r}; known: {', '.join(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[model_type].from_hf(d)


def load_config(folder: str | Path) -> Config:
    """Read `folder/config.json` (a Hugging Face model folder) into a config."""
    return config_from_hf(read_config_json(folder))


def read_config_json(folder: str | Path) -> dict:
    """The JSON object in `folder/config.json`, with errors that name the file."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {Path(folder)}")
    d = read_json(path, "config.json")  # a regular file of sane size, UTF-8, JSON not nested absurdly deep
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
    return d


def save_config(config: Config, folder: str | Path) -> Path:
    """Write `folder/config.json` atomically (a temp file in the same folder, then os.replace)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    with atomic_write(path) as f:
        json.dump(config.to_hf(), f, indent=2)
        f.write("\n")
    return path
