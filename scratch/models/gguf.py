"""GGUF checkpoints <-> our Llama and GPT-2: llama.cpp's tensor names and metadata keys mapped to Hugging Face's.

llama.cpp's converter (convert_hf_to_gguf.py) renames every tensor (`model.layers.0.self_attn.q_proj.weight` ->
`blk.0.attn_q.weight`), stores the config as `{arch}.*` metadata (`llama.embedding_length`, ...) and reorders the
rows of Llama's Q and K projections from the rotate-half layout of Hugging Face checkpoints to the interleaved
pairs its RoPE kernel rotates (Meta's original layout). Loading undoes all three -- `permute_for_half_layout` is the
inverse of that reordering -- and hands a LlamaConfig / GPT2Config plus Hugging Face-named host weights to the
models' own `from_weights`; saving does the reverse. Tensors are dequantized one at a time as the model asks for
them (scratch.formats.quants), so peak host memory is the float32 model plus one tensor. Not here: other
architectures (Qwen, Mistral's sliding window, MoE), YaRN rope scaling, reading tokenizers (scratch.tokenizer).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from scratch.formats.byte_alphabet import bytes_to_token
from scratch.formats.gguf import GGUFError, GGUFFile, read_gguf, write_gguf
from scratch.formats.quants import TYPES
from scratch.models import gpt2, llama
from scratch.models.config import GPT2Config, LlamaConfig, RopeScaling
from scratch.nn import permute_for_half_layout, rope_inv_freq

__all__ = ["load_gguf_model", "config_from_gguf", "weights_from_gguf", "save_gguf", "SAVE_DTYPES"]

# save_gguf's dtype -> (ggml type of the weight matrices, llama.cpp's general.file_type: enum llama_ftype).
# The k-quant files are llama.cpp's "_S" (small) variants: every matrix in the one type.
SAVE_DTYPES: dict[str, tuple[str, int]] = {
    "f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2),
    "q4_1": ("Q4_1", 3), "q5_0": ("Q5_0", 8), "q5_1": ("Q5_1", 9), "q2_k": ("Q2_K", 10), "q3_k": ("Q3_K", 11),
    "q4_k": ("Q4_K", 14), "q5_k": ("Q5_K", 16), "q6_k": ("Q6_K", 18),
}
QUANTIZATION_VERSION = 2  # ggml's current block formats (general.quantization_version)

# GGUF name under blk.{i}. -> Hugging Face name under model.layers.{i}. (Llama) / transformer.h.{i}. (GPT-2).
LLAMA_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.weight": "mlp.down_proj.weight", "ffn_down.bias": "mlp.down_proj.bias",
}
LLAMA_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
GPT2_LAYER_NAMES = {
    "attn_norm.weight": "ln_1.weight", "attn_norm.bias": "ln_1.bias",
    "attn_qkv.weight": "attn.c_attn.weight", "attn_qkv.bias": "attn.c_attn.bias",
    "attn_output.weight": "attn.c_proj.weight", "attn_output.bias": "attn.c_proj.bias",
    "ffn_norm.weight": "ln_2.weight", "ffn_norm.bias": "ln_2.bias",
    "ffn_up.weight": "mlp.c_fc.weight", "ffn_up.bias": "mlp.c_fc.bias",
    "ffn_down.weight": "mlp.c_proj.weight", "ffn_down.bias": "mlp.c_proj.bias",
}
GPT2_NAMES = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
              "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias"}
# GPT-2's Conv1D stores matrices (C_in, C_out); GGUF stores them as torch's Linear does, (C_out, C_in).
_GPT2_CONV1D = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")

ARCHITECTURES = ("llama", "gpt2")


# --- config --------------------------------------------------------------------------------------------------------

def _float32_value(value: float) -> float:
    """A FLOAT32 metadata value as the decimal it was written from: 1e-05, not 9.999999747378752e-06."""
    return float(str(np.float32(value)))


class _Metadata:
    """Typed access to `{arch}.*` keys; a missing or mistyped key raises GGUFError naming it."""

    def __init__(self, gguf: GGUFFile, arch: str):
        self.gguf, self.arch = gguf, arch

    def positive_int(self, key: str, default: int | None = None) -> int | None:
        name = f"{self.arch}.{key}"
        if name not in self.gguf.metadata:
            return default
        value = self.gguf.metadata[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise GGUFError(f"{self.gguf.path}: metadata {name} must be a positive integer, got {value!r}")
        return value

    def required_int(self, key: str) -> int:
        name = f"{self.arch}.{key}"
        if name not in self.gguf.metadata:
            raise GGUFError(f"{self.gguf.path}: metadata {name} is missing (needed to build the model)")
        return self.positive_int(key)

    def positive_float(self, key: str, default: float | None = None) -> float | None:
        name = f"{self.arch}.{key}"
        value = self.gguf.metadata.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise GGUFError(f"{self.gguf.path}: metadata {name} must be a positive number, got {value!r}")
        return _float32_value(value) if self.gguf.metadata_types.get(name) == "FLOAT32" else float(value)

    def token_id(self, key: str) -> int | None:
        value = self.gguf.metadata.get(f"tokenizer.ggml.{key}")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GGUFError(f"{self.gguf.path}: metadata tokenizer.ggml.{key} must be a token id, got {value!r}")
        return value


def _architecture(gguf: GGUFFile) -> str:
    arch = gguf.metadata.get("general.architecture")
    if arch is None:
        raise GGUFError(f"{gguf.path}: metadata general.architecture is missing")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{gguf.path}: general.architecture {arch!r} is not supported; "
                        f"supported: {', '.join(ARCHITECTURES)}")
    return arch


def _vocab_size(gguf: GGUFFile, meta: _Metadata) -> int:
    """`{arch}.vocab_size`, else the length of the token list, else the embedding's rows (what llama.cpp uses)."""
    size = meta.positive_int("vocab_size")
    if size is None and isinstance(gguf.metadata.get("tokenizer.ggml.tokens"), list):
        size = len(gguf.metadata["tokenizer.ggml.tokens"])
    if size is None and "token_embd.weight" in gguf.tensors:
        size = gguf.tensors["token_embd.weight"].shape[0]
    if not size:
        raise GGUFError(f"{gguf.path}: no vocabulary size ({meta.arch}.vocab_size, tokenizer.ggml.tokens and "
                        f"token_embd.weight are all missing)")
    return size


def _rope_scaling(gguf: GGUFFile, meta: _Metadata, head_dim: int, theta: float) -> RopeScaling | None:
    """llama.cpp writes linear scaling as metadata, but Llama 3's schedule as a (D/2,) tensor of per-frequency
    divisors, `rope_freqs.weight`. We recognise the tensor when it equals Llama 3's formula for the published
    parameters (low/high frequency factors 1 and 4, and the largest divisor as `factor`)."""
    kind = gguf.metadata.get(f"{meta.arch}.rope.scaling.type", "none")
    factor = meta.positive_float("rope.scaling.factor", 1.0)
    if kind == "linear" and factor != 1.0:
        scaling = RopeScaling(rope_type="linear", factor=factor)
    elif kind in ("none", "linear"):
        scaling = None
    else:
        raise GGUFError(f"{gguf.path}: {meta.arch}.rope.scaling.type {kind!r} is not supported (none, linear)")
    if "rope_freqs.weight" not in gguf.tensors:
        return scaling
    divisors = gguf.tensors["rope_freqs.weight"].to_numpy().astype(np.float64)
    if divisors.shape != (head_dim // 2,):
        raise GGUFError(f"{gguf.path}: tensor 'rope_freqs.weight' has shape {divisors.shape}, expected "
                        f"({head_dim // 2},) for head dim {head_dim}")
    if np.all(divisors == 1.0):
        return scaling
    if scaling is not None:
        raise GGUFError(f"{gguf.path}: both {meta.arch}.rope.scaling.type linear and rope_freqs.weight are set")
    plain = rope_inv_freq(head_dim, theta, None, dtype=np.float64)
    originals = [meta.positive_int("rope.scaling.original_context_length"), 8192, meta.positive_int("context_length")]
    for original in dict.fromkeys(o for o in originals if o):
        candidate = RopeScaling(rope_type="llama3", factor=_float32_value(divisors.max()), low_freq_factor=1.0,
                                high_freq_factor=4.0, original_max_position_embeddings=original)
        expected = plain / rope_inv_freq(head_dim, theta, candidate, dtype=np.float64)
        if np.allclose(expected, divisors, rtol=1e-6, atol=0):
            return candidate
    raise GGUFError(f"{gguf.path}: tensor 'rope_freqs.weight' is not Llama 3's rope scaling schedule "
                    f"(factor {divisors.max():g}, low/high frequency factors 1 and 4); other schedules are not "
                    f"supported")


def config_from_gguf(gguf: GGUFFile) -> LlamaConfig | GPT2Config:
    """The model config a GGUF's metadata describes (llama.cpp's keys), checked against its tensors' shapes."""
    arch = _architecture(gguf)
    meta = _Metadata(gguf, arch)
    try:
        if arch == "llama":
            hidden = meta.required_int("embedding_length")
            heads = meta.required_int("attention.head_count")
            head_dim = meta.positive_int("attention.key_length")  # None: C // H, resolved by the config
            theta = meta.positive_float("rope.freq_base", 10000.0)
            config = LlamaConfig(
                vocab_size=_vocab_size(gguf, meta), hidden_size=hidden,
                intermediate_size=meta.required_int("feed_forward_length"),
                num_hidden_layers=meta.required_int("block_count"), num_attention_heads=heads,
                num_key_value_heads=meta.positive_int("attention.head_count_kv", heads),
                head_dim=head_dim, max_position_embeddings=meta.required_int("context_length"),
                rms_norm_eps=meta.positive_float("attention.layer_norm_rms_epsilon", 1e-5), rope_theta=theta,
                tie_word_embeddings="output.weight" not in gguf.tensors,
                attention_bias="blk.0.attn_q.bias" in gguf.tensors,
                mlp_bias="blk.0.ffn_up.bias" in gguf.tensors,
                bos_token_id=meta.token_id("bos_token_id"), eos_token_id=meta.token_id("eos_token_id"))
            head_dim = config.head_dim
            rotated = meta.positive_int("rope.dimension_count")
            if rotated is not None and rotated != head_dim:
                raise GGUFError(f"{gguf.path}: {arch}.rope.dimension_count {rotated} differs from the head dim "
                                f"{head_dim}: partial rotary embeddings are not supported")
            if meta.positive_int("attention.value_length", head_dim) != head_dim:
                raise GGUFError(f"{gguf.path}: {arch}.attention.value_length differs from the key length {head_dim}")
            scaling = _rope_scaling(gguf, meta, head_dim, theta)
            if scaling is not None:
                config = dataclasses.replace(config, rope_scaling=scaling)
        else:
            config = GPT2Config(
                vocab_size=_vocab_size(gguf, meta), n_positions=meta.required_int("context_length"),
                n_embd=meta.required_int("embedding_length"), n_layer=meta.required_int("block_count"),
                n_head=meta.required_int("attention.head_count"), n_inner=meta.positive_int("feed_forward_length"),
                layer_norm_epsilon=meta.positive_float("attention.layer_norm_epsilon", 1e-5),
                bos_token_id=meta.token_id("bos_token_id"), eos_token_id=meta.token_id("eos_token_id"))
    except GGUFError:
        raise
    except ValueError as error:  # the config's own checks (divisibility, ...) name the config field
        raise GGUFError(f"{gguf.path}: the metadata describes an invalid {arch} model: {error}") from None
    _check_tensors(gguf, config)
    return config


def _expected_shapes(config: LlamaConfig | GPT2Config) -> tuple[dict[str, tuple[int, ...]], set[str], str]:
    """(GGUF name -> NumPy shape every file must have, optional names, the metadata the shapes come from)."""
    if isinstance(config, LlamaConfig):
        C, F, V, D = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
        H, Hkv = config.num_attention_heads, config.num_key_value_heads
        layer = {"attn_norm.weight": (C,), "attn_q.weight": (H * D, C), "attn_k.weight": (Hkv * D, C),
                 "attn_v.weight": (Hkv * D, C), "attn_output.weight": (C, H * D), "ffn_norm.weight": (C,),
                 "ffn_gate.weight": (F, C), "ffn_up.weight": (F, C), "ffn_down.weight": (C, F)}
        if config.attention_bias:
            layer.update({"attn_q.bias": (H * D,), "attn_k.bias": (Hkv * D,), "attn_v.bias": (Hkv * D,),
                          "attn_output.bias": (C,)})
        if config.mlp_bias:
            layer.update({"ffn_gate.bias": (F,), "ffn_up.bias": (F,), "ffn_down.bias": (C,)})
        shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,)}
        if not config.tie_word_embeddings:
            shapes["output.weight"] = (V, C)
        layers, optional = config.num_hidden_layers, {"rope_freqs.weight"}
        fields = (f"llama.embedding_length={C}, llama.feed_forward_length={F}, llama.attention.head_count={H}, "
                  f"llama.attention.head_count_kv={Hkv}, head dim {D}, vocab {V}")
    else:
        C, F, V, P = config.n_embd, config.n_inner, config.vocab_size, config.n_positions
        layer = {"attn_norm.weight": (C,), "attn_norm.bias": (C,), "attn_qkv.weight": (3 * C, C),
                 "attn_qkv.bias": (3 * C,), "attn_output.weight": (C, C), "attn_output.bias": (C,),
                 "ffn_norm.weight": (C,), "ffn_norm.bias": (C,), "ffn_up.weight": (F, C), "ffn_up.bias": (F,),
                 "ffn_down.weight": (C, F), "ffn_down.bias": (C,)}
        shapes = {"token_embd.weight": (V, C), "position_embd.weight": (P, C), "output_norm.weight": (C,),
                  "output_norm.bias": (C,)}
        layers, optional = config.n_layer, {"output.weight"}
        fields = f"gpt2.embedding_length={C}, gpt2.feed_forward_length={F}, gpt2.context_length={P}, vocab {V}"
    for i in range(layers):
        shapes.update({f"blk.{i}.{name}": shape for name, shape in layer.items()})
    return shapes, optional, fields


def _check_tensors(gguf: GGUFFile, config: LlamaConfig | GPT2Config) -> None:
    """Every tensor the config needs is there with the shape it implies; nothing else is (an unknown tensor means a
    model we would compute wrongly, e.g. Qwen's Q/K norms in a file that says llama)."""
    shapes, optional, fields = _expected_shapes(config)
    for name, shape in shapes.items():
        if name not in gguf.tensors:
            raise GGUFError(f"{gguf.path}: missing tensor {name!r} (the metadata says {fields}, "
                            f"{_layer_count_field(config)})")
        found = gguf.tensors[name].shape
        if found != shape:
            raise GGUFError(f"{gguf.path}: tensor {name!r} has shape {found}, but the metadata ({fields}) "
                            f"needs {shape}")
    if isinstance(config, GPT2Config) and "output.weight" in gguf.tensors:
        if gguf.tensors["output.weight"].shape != shapes["token_embd.weight"]:
            raise GGUFError(f"{gguf.path}: tensor 'output.weight' has shape {gguf.tensors['output.weight'].shape}, "
                            f"expected {shapes['token_embd.weight']}")
    unexpected = [name for name in gguf.tensors if name not in shapes and name not in optional]
    if unexpected:
        shown = ", ".join(repr(n) for n in unexpected[:6]) + (", ..." if len(unexpected) > 6 else "")
        raise GGUFError(f"{gguf.path}: tensors this {type(config).__name__} does not use: {shown} "
                        f"(more layers than {_layer_count_field(config)}, or another architecture)")


def _layer_count_field(config) -> str:
    if isinstance(config, LlamaConfig):
        return f"llama.block_count={config.num_hidden_layers}"
    return f"gpt2.block_count={config.n_layer}"


# --- weights -------------------------------------------------------------------------------------------------------

class _GGUFWeights(Mapping):
    """Hugging Face name -> host float32 array, dequantized (and un-permuted / transposed) when first asked for.

    A Mapping, so `from_weights` reads it like a safetensors dict while only one tensor is decoded at a time.
    """

    def __init__(self, gguf: GGUFFile, config: LlamaConfig | GPT2Config):
        self.gguf, self.config = gguf, config
        self.sources: dict[str, str] = {}  # HF name -> GGUF name
        if isinstance(config, LlamaConfig):
            top, per_layer, layers, prefix = LLAMA_NAMES, LLAMA_LAYER_NAMES, config.num_hidden_layers, "model.layers"
        else:
            top, per_layer, layers, prefix = GPT2_NAMES, GPT2_LAYER_NAMES, config.n_layer, "transformer.h"
        for gguf_name, hf_name in top.items():
            if gguf_name in gguf.tensors and not (gguf_name == "output.weight" and isinstance(config, GPT2Config)):
                self.sources[hf_name] = gguf_name
        for i in range(layers):
            for gguf_name, hf_name in per_layer.items():
                if f"blk.{i}.{gguf_name}" in gguf.tensors:
                    self.sources[f"{prefix}.{i}.{hf_name}"] = f"blk.{i}.{gguf_name}"

    def __getitem__(self, hf_name: str) -> np.ndarray:
        gguf_name = self.sources[hf_name]
        array = self.gguf.tensors[gguf_name].to_numpy()  # float32, owned (quantized) or a read-only view (F32)
        kind = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else gguf_name
        if isinstance(self.config, LlamaConfig):
            # llama.cpp interleaved Q and K's rows (pairs 2i, 2i+1 of each head); rotate-half wants them split
            # into halves. permute_for_half_layout works on the last axis of an (in, out) matrix or a bias.
            heads = {"attn_q.weight": self.config.num_attention_heads, "attn_q.bias": self.config.num_attention_heads,
                     "attn_k.weight": self.config.num_key_value_heads,
                     "attn_k.bias": self.config.num_key_value_heads}.get(kind)
            if heads is not None:
                array = permute_for_half_layout(array.T, heads).T if array.ndim == 2 else \
                    permute_for_half_layout(array, heads)
        elif kind in _GPT2_CONV1D:
            array = array.T  # (C_out, C_in) -> Conv1D's (C_in, C_out)
        return array

    def __contains__(self, hf_name) -> bool:  # Mapping's default would decode the tensor to answer
        return hf_name in self.sources

    def __iter__(self):
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)


def weights_from_gguf(gguf: GGUFFile, config: LlamaConfig | GPT2Config | None = None) -> Mapping[str, np.ndarray]:
    """The GGUF's tensors under Hugging Face names (LlamaForCausalLM / GPT2LMHeadModel), as float32 host arrays
    dequantized on access. GPT-2's `output.weight` (llama.cpp writes a copy of the tied embedding) must equal
    `token_embd.weight`: our GPT-2 is always tied."""
    config = config_from_gguf(gguf) if config is None else config
    if isinstance(config, GPT2Config) and "output.weight" in gguf.tensors:
        output, embedding = gguf.tensors["output.weight"], gguf.tensors["token_embd.weight"]
        same = (output.type_name == embedding.type_name and np.array_equal(output.raw(), embedding.raw())) or \
            np.array_equal(output.to_numpy(), embedding.to_numpy())
        if not same:
            raise GGUFError(f"{gguf.path}: tensor 'output.weight' differs from 'token_embd.weight': GPT-2 with an "
                            f"untied output head is not supported")
    return _GGUFWeights(gguf, config)


def load_gguf_model(path, backend="numpy", dtype="float32"):
    """Our Llama or GPT-2 from a GGUF file (`general.architecture` "llama" or "gpt2"), weights dequantized to
    float32 on the host and moved to `backend` in `dtype`. Malformed files and metadata that disagree with the
    tensors raise GGUFError (a ValueError) naming the field or tensor."""
    gguf = read_gguf(path)
    config = config_from_gguf(gguf)
    module = llama if isinstance(config, LlamaConfig) else gpt2
    return module.from_weights(config, weights_from_gguf(gguf, config), backend=backend, dtype=dtype)


# --- writing -------------------------------------------------------------------------------------------------------

def _host(model, array) -> np.ndarray:
    return np.asarray(model.backend.to_numpy(array), dtype=np.float32)


def _hf_weights(model) -> dict[str, np.ndarray]:
    """A Llama's or GPT-2's weights under Hugging Face names (torch layouts), as float32 host arrays, read from
    the model's fields: the fused QKV and gate/up matrices are split again and (in, out) transposed back."""
    config = model.config
    if isinstance(config, LlamaConfig):
        H, Hkv, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        sizes = [H * D, H * D + Hkv * D]  # split points of the fused [q | k | v] columns
        weights = {"model.embed_tokens.weight": _host(model, model.embed), "model.norm.weight": _host(model, model.norm_w)}
        if model.lm_head is not None:
            weights["lm_head.weight"] = _host(model, model.lm_head)
        for i, layer in enumerate(model.layers):
            prefix = f"model.layers.{i}."
            q, k, v = np.split(_host(model, layer.qkv_w), sizes, axis=1)  # each (C, out)
            gate, up = np.split(_host(model, layer.gate_up_w), 2, axis=1)
            weights.update({
                prefix + "input_layernorm.weight": _host(model, layer.attn_norm_w),
                prefix + "self_attn.q_proj.weight": q.T, prefix + "self_attn.k_proj.weight": k.T,
                prefix + "self_attn.v_proj.weight": v.T, prefix + "self_attn.o_proj.weight": _host(model, layer.o_w).T,
                prefix + "post_attention_layernorm.weight": _host(model, layer.mlp_norm_w),
                prefix + "mlp.gate_proj.weight": gate.T, prefix + "mlp.up_proj.weight": up.T,
                prefix + "mlp.down_proj.weight": _host(model, layer.down_w).T})
            if layer.qkv_b is not None:
                q_b, k_b, v_b = np.split(_host(model, layer.qkv_b), sizes)
                weights.update({prefix + "self_attn.q_proj.bias": q_b, prefix + "self_attn.k_proj.bias": k_b,
                                prefix + "self_attn.v_proj.bias": v_b,
                                prefix + "self_attn.o_proj.bias": _host(model, layer.o_b)})
            if layer.gate_up_b is not None:
                gate_b, up_b = np.split(_host(model, layer.gate_up_b), 2)
                weights.update({prefix + "mlp.gate_proj.bias": gate_b, prefix + "mlp.up_proj.bias": up_b,
                                prefix + "mlp.down_proj.bias": _host(model, layer.down_b)})
        return weights
    if isinstance(config, GPT2Config):
        weights = {"transformer.wte.weight": _host(model, model.wte), "transformer.wpe.weight": _host(model, model.wpe),
                   "transformer.ln_f.weight": _host(model, model.ln_f_w),
                   "transformer.ln_f.bias": _host(model, model.ln_f_b)}
        for i, layer in enumerate(model.layers):
            for field, name in gpt2.LAYER_NAMES.items():
                weights[f"transformer.h.{i}.{name}"] = _host(model, getattr(layer, field))
        return weights
    raise TypeError(f"save_gguf writes Llama and GPT-2 models, got {type(model).__name__}")


def _to_interleaved(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Rotate-half -> interleaved row order of a Q or K projection (out, in) or bias (out,), per head: the inverse
    of permute_for_half_layout, what llama.cpp's converter does. Row 2i + h of a head is old row h * D/2 + i."""
    out = rows.shape[0]
    split = rows.reshape(n_heads, 2, out // n_heads // 2, *rows.shape[1:])  # (H, half, D/2, ...)
    return np.swapaxes(split, 1, 2).reshape(rows.shape)                     # (H, D/2, pair member, ...)


def _gguf_tensors(config, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face weights -> GGUF names and layouts (float32 host arrays, NumPy order)."""
    tensors = {}
    if isinstance(config, LlamaConfig):
        top, per_layer, layers, prefix = LLAMA_NAMES, LLAMA_LAYER_NAMES, config.num_hidden_layers, "model.layers"
    else:
        top, per_layer, layers, prefix = GPT2_NAMES, GPT2_LAYER_NAMES, config.n_layer, "transformer.h"
    for gguf_name, hf_name in top.items():
        if hf_name in weights:
            tensors[gguf_name] = weights[hf_name]
    for i in range(layers):
        for gguf_name, hf_name in per_layer.items():
            array = weights.get(f"{prefix}.{i}.{hf_name}")
            if array is None:
                continue
            if isinstance(config, LlamaConfig) and gguf_name.startswith(("attn_q.", "attn_k.")):
                heads = config.num_attention_heads if gguf_name.startswith("attn_q.") else config.num_key_value_heads
                array = _to_interleaved(array, heads)
            elif isinstance(config, GPT2Config) and gguf_name in _GPT2_CONV1D:
                array = array.T
            tensors[f"blk.{i}.{gguf_name}"] = array
    if isinstance(config, LlamaConfig) and config.rope_scaling is not None \
            and config.rope_scaling.rope_type == "llama3":
        plain = rope_inv_freq(config.head_dim, config.rope_theta, None, dtype=np.float64)
        scaled = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling, dtype=np.float64)
        tensors["rope_freqs.weight"] = (plain / scaled).astype(np.float32)
    return tensors


def _storage_type(name: str, array: np.ndarray, matrix_type: str) -> str:
    """llama.cpp's rule: vectors (norms, biases, rope factors) and GPT-2's position table stay F32; matrices take the
    file's type, or F16 where a row is not a whole number of blocks (F32 in an f32 file)."""
    if array.ndim == 1 or name == "position_embd.weight" or matrix_type == "F32":
        return "F32"
    if array.shape[-1] % TYPES[matrix_type].block_size:
        return "F16"
    return matrix_type


def _u32(value: int) -> np.uint32:
    return np.uint32(value)


def _config_metadata(config) -> dict:
    """llama.cpp's `{arch}.*` keys, with the exact value types its loader checks (u32 sizes, f32 epsilons)."""
    if isinstance(config, LlamaConfig):
        metadata = {
            "general.architecture": "llama",
            "llama.context_length": _u32(config.max_position_embeddings),
            "llama.embedding_length": _u32(config.hidden_size),
            "llama.block_count": _u32(config.num_hidden_layers),
            "llama.feed_forward_length": _u32(config.intermediate_size),
            "llama.rope.dimension_count": _u32(config.head_dim),
            "llama.attention.head_count": _u32(config.num_attention_heads),
            "llama.attention.head_count_kv": _u32(config.num_key_value_heads),
            "llama.attention.layer_norm_rms_epsilon": np.float32(config.rms_norm_eps),
            "llama.rope.freq_base": np.float32(config.rope_theta),
            "llama.vocab_size": _u32(config.vocab_size),
        }
        if config.head_dim != config.hidden_size // config.num_attention_heads:
            metadata["llama.attention.key_length"] = _u32(config.head_dim)
            metadata["llama.attention.value_length"] = _u32(config.head_dim)
        if config.rope_scaling is not None and config.rope_scaling.rope_type == "linear":
            metadata["llama.rope.scaling.type"] = "linear"
            metadata["llama.rope.scaling.factor"] = np.float32(config.rope_scaling.factor)
        return metadata
    return {
        "general.architecture": "gpt2",
        "gpt2.context_length": _u32(config.n_positions),
        "gpt2.embedding_length": _u32(config.n_embd),
        "gpt2.feed_forward_length": _u32(config.n_inner),
        "gpt2.block_count": _u32(config.n_layer),
        "gpt2.attention.head_count": _u32(config.n_head),
        "gpt2.attention.layer_norm_epsilon": np.float32(config.layer_norm_epsilon),
    }


# llama.cpp's `tokenizer.ggml.pre` name for each of our pre-tokenizer pattern names.
_PRE_NAMES = {"gpt2": "gpt-2", "gpt4": "llama-bpe", "cl100k": "llama-bpe", "llama3": "llama-bpe", "o200k": "gpt-4o"}
# llama.cpp's token types (SentencePiece's numbering).
_NORMAL, _CONTROL, _UNUSED = 1, 3, 5


def _tokenizer_metadata(tokenizer, config) -> dict:
    """A byte-level BPE tokenizer (vocab id -> bytes, merges as id pairs, special tokens by name) as llama.cpp's
    gpt2-style vocabulary: tokens in GPT-2's byte alphabet, "left right" merge strings in rank order, token types,
    the pre-tokenizer's name and the special ids."""
    for needed in ("vocab", "merges", "special_tokens", "pattern"):
        if not hasattr(tokenizer, needed):
            raise TypeError(f"save_gguf writes byte-level BPE tokenizers (vocab, merges, special_tokens, pattern); "
                            f"{type(tokenizer).__name__} has no {needed!r}")
    pattern = tokenizer.pattern
    if not isinstance(pattern, str) or pattern not in _PRE_NAMES:
        raise ValueError(f"save_gguf: llama.cpp has no pre-tokenizer name for pattern {pattern!r}; "
                         f"known: {', '.join(_PRE_NAMES)}")
    V = config.vocab_size
    tokens = [f"[PAD{i}]" for i in range(V)]  # holes in the id space, as llama.cpp's converter fills them
    types = [_UNUSED] * V
    for token_id, token in tokenizer.vocab.items():
        if token_id >= V:
            raise ValueError(f"save_gguf: token id {token_id} is outside the model's vocabulary of {V}")
        tokens[token_id], types[token_id] = bytes_to_token(token), _NORMAL
    for text, token_id in tokenizer.special_tokens.items():
        if token_id >= V:
            raise ValueError(f"save_gguf: special token {text!r} id {token_id} is outside the vocabulary of {V}")
        tokens[token_id], types[token_id] = text, _CONTROL
    ranked = sorted(tokenizer.merges, key=tokenizer.pair_ranks.__getitem__)  # GGUF ranks merges by position
    merges = [f"{bytes_to_token(tokenizer.vocab[left])} {bytes_to_token(tokenizer.vocab[right])}"
              for left, right in ranked]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _PRE_NAMES[pattern],
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.asarray(types, dtype=np.int32),
        "tokenizer.ggml.merges": merges,
    }
    # Llama prompts start with BOS (our generate's --bos auto); GPT-2's do not.
    metadata["tokenizer.ggml.add_bos_token"] = isinstance(config, LlamaConfig) and config.bos_token_id is not None
    return metadata


def _special_ids(config) -> dict:
    """The config's BOS / EOS ids as llama.cpp's tokenizer keys (written even without a vocabulary, so the config
    round-trips); GGUF has one EOS id, so a config listing several keeps the first."""
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, tuple) else config.eos_token_id
    ids = {}
    if config.bos_token_id is not None:
        ids["tokenizer.ggml.bos_token_id"] = _u32(config.bos_token_id)
    if eos is not None:
        ids["tokenizer.ggml.eos_token_id"] = _u32(eos)
    return ids


def save_gguf(model, tokenizer, path, dtype: str = "f32", name: str | None = None) -> Path:
    """Write our Llama or GPT-2 as a GGUF file llama.cpp and transformers can load (atomically).

    dtype: "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", or a k-quant "q2_k".."q6_k" -- the type of
    the weight matrices (vectors stay F32, as llama.cpp writes them; a matrix whose rows are not whole blocks is
    written F16). `tokenizer`: None for a weights-only file, or a byte-level BPE tokenizer
    (BPETokenizer) written as llama.cpp's "gpt2" vocabulary. Returns the path.
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save_gguf dtype must be one of {', '.join(SAVE_DTYPES)}, got {dtype!r}")
    matrix_type, file_type = SAVE_DTYPES[dtype]
    config = getattr(model, "config", None)
    if not isinstance(config, (LlamaConfig, GPT2Config)):
        raise TypeError(f"save_gguf writes Llama and GPT-2 models, got {type(model).__name__}")
    weights = _hf_weights(model)
    metadata = {**_config_metadata(config), "general.file_type": _u32(file_type)}
    if name is not None:
        metadata["general.name"] = name
    if matrix_type not in ("F32", "F16", "BF16"):
        metadata["general.quantization_version"] = _u32(QUANTIZATION_VERSION)
    if tokenizer is not None:
        metadata.update(_tokenizer_metadata(tokenizer, config))
    metadata.update(_special_ids(config))
    tensors = {name: (_storage_type(name, array, matrix_type), array)
               for name, array in _gguf_tensors(config, weights).items()}
    path = Path(path)
    write_gguf(path, metadata, tensors)
    return path
