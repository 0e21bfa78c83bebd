"""The famous model sizes as configs, and the arithmetic they imply: parameters, weight memory, KV cache, training.

Presets hold the published config.json values of GPT-2 (124M to 1.5B), Llama 2 (7B to 70B), Llama 3.1 (8B to 405B),
Llama 3.2 (1B, 3B) and BERT (base, large). The counts are computed from the architecture, matrix by matrix, and
tested equal to transformers' `num_parameters()`. Memory figures count weights and caches only, not activations,
framework overhead or quantization scales; they are lower bounds, the numbers to start a budget from.
"""
from __future__ import annotations

from scratch.models.config import BertConfig, Config, GPT2Config, LlamaConfig, RopeScaling

# --- the presets ---------------------------------------------------------------------------------------------------

_LLAMA2 = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
               bos_token_id=1, eos_token_id=2)
# Llama 3.x: a 128,256-token tiktoken vocabulary, RoPE base 500,000 and context 131,072 reached by the "llama3"
# frequency scaling of a model pre-trained at 8,192 tokens.
_LLAMA3 = dict(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
               bos_token_id=128000, eos_token_id=128001)
_LLAMA31_ROPE = RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=8192)
# Llama 3.2 1B/3B were distilled at a context of 8192 too, but stretch it with a larger factor (32).
_LLAMA32_ROPE = RopeScaling(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=8192)


def _llama(c: int, f: int, layers: int, heads: int, kv_heads: int, common: dict, **extra) -> LlamaConfig:
    return LlamaConfig(hidden_size=c, intermediate_size=f, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv_heads, **common, **extra)


PRESETS: dict[str, Config] = {
    "gpt2": GPT2Config(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
    # Llama 2: multi-head attention at 7B and 13B; 70B shares 8 key/value heads among 64 query heads (GQA).
    "llama-2-7b": _llama(4096, 11008, 32, 32, 32, _LLAMA2),
    "llama-2-13b": _llama(5120, 13824, 40, 40, 40, _LLAMA2),
    "llama-2-70b": _llama(8192, 28672, 80, 64, 8, _LLAMA2),
    "llama-3.1-8b": _llama(4096, 14336, 32, 32, 8, _LLAMA3, rope_scaling=_LLAMA31_ROPE),
    "llama-3.1-70b": _llama(8192, 28672, 80, 64, 8, _LLAMA3, rope_scaling=_LLAMA31_ROPE),
    "llama-3.1-405b": _llama(16384, 53248, 126, 128, 8, _LLAMA3, rope_scaling=_LLAMA31_ROPE),
    # The small ones tie the output head to the embeddings: at V = 128,256 an untied head would be 20-25% of them.
    "llama-3.2-1b": _llama(2048, 8192, 16, 32, 8, _LLAMA3, rope_scaling=_LLAMA32_ROPE, tie_word_embeddings=True),
    "llama-3.2-3b": _llama(3072, 8192, 28, 24, 8, _LLAMA3, rope_scaling=_LLAMA32_ROPE, tie_word_embeddings=True),
    "bert-base-uncased": BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072),
    "bert-large-uncased": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     intermediate_size=4096),
}

# Where each preset's config.json is published (Hugging Face Hub ids), for `describe`.
SOURCES: dict[str, str] = {
    "gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf", "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B", "llama-3.1-405b": "meta-llama/Llama-3.1-405B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B", "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "bert-base-uncased": "google-bert/bert-base-uncased", "bert-large-uncased": "google-bert/bert-large-uncased",
}


def list_presets() -> list[str]:
    """The preset names, smallest family first (the order of PRESETS)."""
    return list(PRESETS)


def _spelling_key(name: str) -> str:
    """A name with case and punctuation ignored: llama2-7b, Llama-2-7B and llama_2_7b all read llama27b."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def canonical_name(name: str) -> str:
    """The preset a user means: its exact name, any spelling of it that differs only in case, dashes, dots or
    underscores (llama2-7b, Llama-3.1-8B), or its Hugging Face id (meta-llama/Llama-2-7b-hf). ValueError naming
    the input and listing the presets otherwise."""
    if name in PRESETS:
        return name
    wanted = _spelling_key(name)
    for preset, source in SOURCES.items():
        if wanted in (_spelling_key(preset), _spelling_key(source)):
            return preset
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")


def get_preset(name: str) -> Config:
    """The config of a preset (any spelling `canonical_name` accepts); ValueError naming it and listing the known
    names if there is none."""
    return PRESETS[canonical_name(name)]


# --- parameters ----------------------------------------------------------------------------------------------------

def parameter_breakdown(config: Config) -> dict[str, int]:
    """Parameters per part of the model, counted matrix by matrix (weights + biases + norm gains/biases).

    GPT-2 and Llama: the causal LM (GPT2LMHeadModel / LlamaForCausalLM); a tied head adds nothing. BERT: the encoder
    with its pooler (BertModel), which is what the famous "110M" / "340M" count; heads for a task come on top.
    """
    if isinstance(config, GPT2Config):
        c, f, v = config.n_embd, config.n_inner, config.vocab_size
        layer = (2 * c                 # ln_1 gain + bias
                 + c * 3 * c + 3 * c   # c_attn: q, k, v in one (C, 3C) matrix
                 + c * c + c           # attention c_proj
                 + 2 * c               # ln_2
                 + c * f + f           # mlp c_fc
                 + f * c + c)          # mlp c_proj
        return {"embeddings": v * c + config.n_positions * c, "layers": config.n_layer * layer,
                "final_norm": 2 * c, "lm_head": 0 if config.tie_word_embeddings else v * c}
    if isinstance(config, LlamaConfig):
        c, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
        q = config.num_attention_heads * config.head_dim     # H * D
        kv = config.num_key_value_heads * config.head_dim    # Hkv * D: GQA shrinks only k_proj and v_proj
        attention = c * q + 2 * c * kv + q * c + (q + 2 * kv + c if config.attention_bias else 0)
        mlp = 3 * c * f + (2 * f + c if config.mlp_bias else 0)  # gate, up (C -> F) and down (F -> C)
        layer = attention + mlp + 2 * c                          # two RMSNorm gains, no biases
        return {"embeddings": v * c, "layers": config.num_hidden_layers * layer, "final_norm": c,
                "lm_head": 0 if config.tie_word_embeddings else v * c}
    if isinstance(config, BertConfig):
        c, f = config.hidden_size, config.intermediate_size
        layer = (4 * (c * c + c)       # query, key, value, attention output dense
                 + 2 * c               # LayerNorm after attention (post-norm)
                 + c * f + f + f * c + c
                 + 2 * c)              # LayerNorm after the MLP
        embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * c + 2 * c
        return {"embeddings": embeddings, "layers": config.num_hidden_layers * layer, "pooler": c * c + c}
    raise TypeError(f"not a model config: {config!r}")


def parameter_count(config: Config) -> int:
    """Total parameters (see parameter_breakdown for what is counted)."""
    return sum(parameter_breakdown(config).values())


# --- memory --------------------------------------------------------------------------------------------------------

# Bits per stored value. int8/int4 count the weights alone: real quantized formats add a scale (and maybe a zero
# point) per group of 32-128 weights, a few percent more.
DTYPE_BITS: dict[str, int] = {"float32": 32, "bfloat16": 16, "float16": 16, "int8": 8, "int4": 4}

# Adam training, bytes per parameter (activations and temporary buffers not included):
#   "fp32":  weights 4 + gradients 4 + Adam first moment 4 + second moment 4 = 16.
#   "mixed": bf16 weights 2 + bf16 gradients 2 + fp32 master weights 4 + moments 4 + 4 = 16 (the ZeRO paper's
#            count). Mixed precision saves activation memory and time, not weight and optimizer memory.
ADAM_BYTES_PER_PARAMETER: dict[str, int] = {"fp32": 16, "mixed": 16}


def _bits(dtype: str) -> int:
    if dtype not in DTYPE_BITS:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BITS)}")
    return DTYPE_BITS[dtype]


def weight_bytes(config: Config, dtype: str = "bfloat16") -> int:
    """Bytes to hold every weight in `dtype` (int4 packs two weights per byte, rounded up)."""
    return -(-parameter_count(config) * _bits(dtype) // 8)


def context_length(config: Config) -> int:
    """The longest sequence the model is configured for (learned positions or RoPE with its scaling)."""
    return config.n_positions if isinstance(config, GPT2Config) else config.max_position_embeddings


def kv_cache_bytes_per_token(config: Config, dtype: str = "bfloat16") -> int:
    """Bytes the KV cache grows by per token per sequence: K and V, in every layer, for every kv head:
    2 * layers * Hkv * D * bytes. (GPT-2 is multi-head: Hkv = H. GQA divides this by H / Hkv.)"""
    if isinstance(config, BertConfig):
        raise ValueError("BERT is an encoder: it reads the whole input at once and keeps no KV cache")
    if isinstance(config, GPT2Config):
        layers, kv_heads, head_dim = config.n_layer, config.n_head, config.head_dim
    else:
        layers, kv_heads, head_dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    return 2 * layers * kv_heads * head_dim * _bits(dtype) // 8


def kv_cache_bytes(config: Config, tokens: int | None = None, dtype: str = "bfloat16", batch: int = 1) -> int:
    """Bytes of KV cache for `batch` sequences of `tokens` tokens each (default: the full context length)."""
    tokens = context_length(config) if tokens is None else tokens
    if tokens < 0 or batch < 1:
        raise ValueError(f"tokens must be >= 0 and batch >= 1, got tokens={tokens}, batch={batch}")
    return batch * tokens * kv_cache_bytes_per_token(config, dtype)


def training_bytes(config: Config, recipe: str = "fp32") -> int:
    """Bytes of weights + gradients + Adam states (see ADAM_BYTES_PER_PARAMETER); activations not included."""
    if recipe not in ADAM_BYTES_PER_PARAMETER:
        raise ValueError(f"unknown training recipe {recipe!r}; known: {', '.join(ADAM_BYTES_PER_PARAMETER)}")
    return parameter_count(config) * ADAM_BYTES_PER_PARAMETER[recipe]


def format_bytes(n: int) -> str:
    """Binary units, as GPU memory is sized: 1 GiB = 2**30 bytes."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_count(n: int) -> str:
    """A parameter count the way papers say it: 124.44M, 6.74B."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


# --- describe ------------------------------------------------------------------------------------------------------

def _attention(config: Config) -> str:
    if isinstance(config, GPT2Config):
        return f"{config.n_head} heads x {config.head_dim} (multi-head)"
    if isinstance(config, BertConfig):
        return f"{config.num_attention_heads} heads x {config.head_dim} (multi-head, bidirectional)"
    h, kv = config.num_attention_heads, config.num_key_value_heads
    kind = "multi-head" if kv == h else "multi-query" if kv == 1 else f"grouped-query, {h // kv} per kv head"
    return f"{h} query / {kv} kv heads x {config.head_dim} ({kind})"


def _position(config: Config) -> str:
    if not isinstance(config, LlamaConfig):
        return "learned absolute"
    text = f"RoPE, theta {config.rope_theta:g}"
    scaling = config.rope_scaling
    if scaling is not None:
        text += f", {scaling.rope_type} scaling x{scaling.factor:g}"
        if scaling.original_max_position_embeddings is not None:
            text += f" of {scaling.original_max_position_embeddings:,} pre-training positions"
    return text


def describe(name: str) -> str:
    """A readable summary of a preset, as `scratch info NAME` prints it."""
    name = canonical_name(name)
    config = get_preset(name)
    count = parameter_count(config)
    if isinstance(config, GPT2Config):
        layers, width, mlp = config.n_layer, config.n_embd, config.n_inner
    else:
        layers, width, mlp = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    tied = getattr(config, "tie_word_embeddings", None)
    rows = [
        (name, f"{type(config).__name__.removesuffix('Config')}, config.json of {SOURCES[name]}"),
        ("parameters", f"{count:,} ({format_count(count)})"),
    ]
    rows += [(f"  {part}", f"{n:,}") for part, n in parameter_breakdown(config).items()
             if n or part != "lm_head"]
    if tied:
        rows.append(("  lm_head", "0 (tied to the token embeddings)"))
    rows += [
        ("context", f"{context_length(config):,} tokens"),
        ("vocabulary", f"{config.vocab_size:,}"),
        ("layers", f"{layers}, width {width}, MLP {mlp}"),
        ("attention", _attention(config)),
        ("positions", _position(config)),
        ("weights", " | ".join(f"{d} {format_bytes(weight_bytes(config, d))}" for d in DTYPE_BITS)),
    ]
    if isinstance(config, BertConfig):
        rows.append(("KV cache", "none (an encoder reads its input at once)"))
    else:
        per_token = kv_cache_bytes_per_token(config, "bfloat16")
        rows.append(("KV cache bf16", f"{format_bytes(per_token)} per token, "
                                      f"{format_bytes(kv_cache_bytes(config))} at {context_length(config):,} tokens"))
    rows.append(("training Adam", f"{format_bytes(training_bytes(config))} (16 B/parameter: weights, gradients, "
                                  "2 moments; activations not included)"))
    width_name = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width_name}}  {value}" for label, value in rows)
