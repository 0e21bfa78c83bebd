"""Presets and their arithmetic: parameter counts equal transformers' `num_parameters()` (models built on the meta
device, so even 405B allocates nothing), the published totals, memory formulas, and `scratch info NAME`."""
from __future__ import annotations

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch import cli
from scratch.models.config import BertConfig, GPT2Config, LlamaConfig, RopeScaling
from scratch.models.presets import (
    PRESETS,
    SOURCES,
    context_length,
    describe,
    format_bytes,
    get_preset,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    list_presets,
    parameter_breakdown,
    parameter_count,
    training_bytes,
    weight_bytes,
)


def transformers_count(config) -> int:
    """transformers' own count for the same config, built on the meta device (shapes only, no memory)."""
    d = config.to_hf()
    theirs = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        # BERT's famous count is the encoder with its pooler; the LMs' is the causal LM (tied head counted once).
        model = (transformers.BertModel(theirs) if isinstance(config, BertConfig)
                 else transformers.AutoModelForCausalLM.from_config(theirs))
    assert all(p.device.type == "meta" for p in model.parameters())
    return model.num_parameters()


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_matches_transformers(name):
    assert parameter_count(PRESETS[name]) == transformers_count(PRESETS[name])


# The totals the model cards and papers quote (exact where they publish exact numbers).
PUBLISHED = {
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200,
    "llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192,
    "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496, "llama-3.1-405b": 405_853_388_800,
    "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824,
    "bert-base-uncased": 109_482_240, "bert-large-uncased": 335_141_888,
}


def test_published_totals():
    assert {name: parameter_count(config) for name, config in PRESETS.items()} == PUBLISHED
    assert list_presets() == list(PUBLISHED) and SOURCES.keys() == PRESETS.keys()


def test_published_config_values():
    llama2_70b, llama31_8b, llama32_1b = PRESETS["llama-2-70b"], PRESETS["llama-3.1-8b"], PRESETS["llama-3.2-1b"]
    assert (llama2_70b.vocab_size, llama2_70b.max_position_embeddings, llama2_70b.num_key_value_heads) == \
        (32000, 4096, 8)
    assert PRESETS["llama-2-7b"].num_key_value_heads == 32  # no GQA below 70B in Llama 2
    assert (llama31_8b.vocab_size, llama31_8b.max_position_embeddings, llama31_8b.rope_theta) == \
        (128256, 131072, 500000.0)
    assert llama31_8b.rope_scaling == RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                  high_freq_factor=4.0, original_max_position_embeddings=8192)
    assert llama32_1b.tie_word_embeddings and llama32_1b.rope_scaling.factor == 32.0 and llama32_1b.head_dim == 64
    assert PRESETS["llama-3.2-3b"].head_dim == 128
    assert PRESETS["gpt2-xl"].head_dim == 64 and PRESETS["gpt2"].tie_word_embeddings
    assert PRESETS["bert-large-uncased"].layer_norm_eps == 1e-12


def test_breakdown_parts():
    gpt2 = parameter_breakdown(PRESETS["gpt2"])
    assert gpt2 == {"embeddings": 50257 * 768 + 1024 * 768, "layers": 12 * 7_087_872, "final_norm": 1536,
                    "lm_head": 0}
    llama = parameter_breakdown(PRESETS["llama-2-7b"])
    assert llama["lm_head"] == llama["embeddings"] == 32000 * 4096
    assert parameter_breakdown(PRESETS["bert-base-uncased"])["pooler"] == 768 * 768 + 768


tiny = st.integers(1, 4)


@st.composite
def small_configs(draw):
    kind = draw(st.sampled_from(["gpt2", "llama", "bert"]))
    heads, d = draw(tiny), 2 * draw(tiny)
    if kind == "gpt2":
        return GPT2Config(vocab_size=draw(st.integers(1, 50)), n_positions=draw(st.integers(1, 20)),
                          n_embd=heads * d, n_layer=draw(tiny), n_head=heads,
                          n_inner=draw(st.none() | st.integers(1, 30)), tie_word_embeddings=draw(st.booleans()),
                          bos_token_id=None, eos_token_id=None)  # ids past a tiny vocabulary make transformers warn
    if kind == "llama":
        kv = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
        return LlamaConfig(vocab_size=draw(st.integers(1, 50)), hidden_size=heads * 2 * draw(tiny),
                           intermediate_size=draw(st.integers(1, 30)), num_hidden_layers=draw(tiny),
                           num_attention_heads=heads, num_key_value_heads=kv, head_dim=d, max_position_embeddings=64,
                           tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()),
                           mlp_bias=draw(st.booleans()), bos_token_id=None, eos_token_id=None)
    return BertConfig(vocab_size=draw(st.integers(1, 50)), hidden_size=heads * d, num_hidden_layers=draw(tiny),
                      num_attention_heads=heads, intermediate_size=draw(st.integers(1, 30)),
                      max_position_embeddings=draw(st.integers(1, 20)), type_vocab_size=draw(tiny))


@settings(deadline=None)
@given(config=small_configs())
def test_parameter_count_matches_transformers_on_random_configs(config):
    assert parameter_count(config) == transformers_count(config)


# --- memory arithmetic ---------------------------------------------------------------------------------------------

def test_weight_bytes():
    n = PUBLISHED["llama-2-7b"]
    config = PRESETS["llama-2-7b"]
    assert weight_bytes(config, "float32") == 4 * n
    assert weight_bytes(config, "bfloat16") == weight_bytes(config, "float16") == 2 * n
    assert weight_bytes(config, "int8") == n and weight_bytes(config, "int4") == n // 2
    assert weight_bytes(PRESETS["gpt2-xl"], "int4") == 1_557_611_200 // 2
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'; known: float32, bfloat16"):
        weight_bytes(config, "fp8")


def test_kv_cache_bytes():
    # 2 (K and V) * layers * kv heads * head dim * bytes
    assert kv_cache_bytes_per_token(PRESETS["llama-2-7b"]) == 2 * 32 * 32 * 128 * 2 == 512 * 1024
    assert kv_cache_bytes_per_token(PRESETS["llama-3.1-8b"]) == 2 * 32 * 8 * 128 * 2 == 128 * 1024  # GQA: 4x less
    assert kv_cache_bytes_per_token(PRESETS["gpt2"], "float32") == 2 * 12 * 12 * 64 * 4
    assert kv_cache_bytes(PRESETS["llama-3.1-8b"]) == 16 * 2**30  # full 131,072-token context
    assert kv_cache_bytes(PRESETS["llama-2-7b"], tokens=4096, batch=8) == 8 * 2 * 2**30
    assert kv_cache_bytes(PRESETS["llama-2-7b"], tokens=0) == 0
    assert context_length(PRESETS["gpt2"]) == 1024
    with pytest.raises(ValueError, match="encoder"):
        kv_cache_bytes_per_token(PRESETS["bert-base-uncased"])
    with pytest.raises(ValueError, match="tokens=-1"):
        kv_cache_bytes(PRESETS["gpt2"], tokens=-1)


def test_training_bytes():
    assert training_bytes(PRESETS["llama-3.1-8b"]) == 16 * PUBLISHED["llama-3.1-8b"]
    assert training_bytes(PRESETS["gpt2"], "mixed") == 16 * PUBLISHED["gpt2"]
    with pytest.raises(ValueError, match="unknown training recipe 'sgd'"):
        training_bytes(PRESETS["gpt2"], "sgd")


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(128 * 1024) == "128.00 KiB"
    assert format_bytes(16 * 2**30) == "16.00 GiB"
    assert format_bytes(3 * 2**40) == "3.00 TiB"


# --- describe and the CLI ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PRESETS))
def test_describe_every_preset(name):
    text = describe(name)
    assert text.startswith(name)
    assert f"{PUBLISHED[name]:,}" in text
    assert f"{context_length(PRESETS[name]):,} tokens" in text
    assert "bfloat16" in text and "int4" in text and "training Adam" in text


def test_describe_llama_3_1_8b():
    text = describe("llama-3.1-8b")
    assert "8,030,261,248 (8.03B)" in text
    assert "32 query / 8 kv heads x 128 (grouped-query, 4 per kv head)" in text
    assert "128.00 KiB per token, 16.00 GiB at 131,072 tokens" in text
    assert "bfloat16 14.96 GiB" in text and "llama3 scaling x8" in text
    assert "0 (tied" in describe("llama-3.2-1b") and "tied" not in text


def test_unknown_preset_names_it_and_lists_known():
    with pytest.raises(ValueError, match=r"unknown model preset 'llama-4'; known: gpt2, gpt2-medium, .*bert-large"):
        describe("llama-4")
    with pytest.raises(ValueError, match="'x'"):
        get_preset("x")


def test_cli_info(capsys):
    assert cli.main(["info", "llama-2-7b"]) == 0
    assert "6,738,415,616" in capsys.readouterr().out
    assert cli.main(["info", "llama-4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model preset 'llama-4'" in err
