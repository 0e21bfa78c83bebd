"""Configs: resolution of derived sizes, validation errors that name the field, config.json round trips, and
interop with transformers 5 (it loads what we write; we read what it writes, in its current and older forms)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import transformers

from scratch.models.config import (
    BertConfig,
    GPT2Config,
    LlamaConfig,
    RopeScaling,
    config_from_hf,
    load_config,
    save_config,
)

LLAMA3 = RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_position_embeddings=64)


def tiny_llama(**overrides) -> LlamaConfig:
    kwargs = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


CONFIGS = {
    "gpt2": GPT2Config(),
    "gpt2-tiny-untied": GPT2Config(vocab_size=99, n_positions=16, n_embd=32, n_layer=2, n_head=4, n_inner=40,
                                   tie_word_embeddings=False, activation="gelu"),
    "llama-plain": tiny_llama(num_key_value_heads=None, rms_norm_eps=1e-5),
    "llama-gqa-llama3": tiny_llama(rope_theta=500000.0, rope_scaling=LLAMA3, bos_token_id=7,
                                   eos_token_id=(8, 9), tie_word_embeddings=True),
    "llama-linear-headdim": tiny_llama(head_dim=16, rope_scaling=RopeScaling(rope_type="linear", factor=2.0),
                                       attention_bias=True, mlp_bias=True),
    "bert": BertConfig(),
    "bert-tiny": BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=40, type_vocab_size=3, pad_token_id=1),
}


# --- derived sizes -------------------------------------------------------------------------------------------------

def test_derived_sizes_are_stored_resolved():
    assert GPT2Config().n_inner == 3072
    assert GPT2Config() == GPT2Config(n_inner=3072)
    assert GPT2Config().head_dim == 64
    plain = tiny_llama(num_key_value_heads=None)
    assert plain.num_key_value_heads == 4 and plain.head_dim == 8
    assert plain == tiny_llama(num_key_value_heads=4, head_dim=8)
    assert BertConfig().head_dim == 64


def test_configs_are_frozen_and_hashable():
    config = tiny_llama(eos_token_id=(1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 64
    assert hash(config) == hash(tiny_llama(eos_token_id=(1, 2)))


def test_head_dim_may_differ_from_hidden_over_heads():
    # Some models project to H * D != C (transformers 5 still wants C divisible by H).
    config = tiny_llama(hidden_size=32, num_attention_heads=4, head_dim=16)
    assert config.head_dim == 16


# --- validation ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, field", [
    (lambda: GPT2Config(n_embd=100, n_head=12), "n_embd"),
    (lambda: GPT2Config(n_layer=0), "n_layer"),
    (lambda: GPT2Config(vocab_size=-5), "vocab_size"),
    (lambda: GPT2Config(n_head=True), "n_head"),
    (lambda: GPT2Config(activation="swish"), "activation"),
    (lambda: GPT2Config(layer_norm_epsilon=0.0), "layer_norm_epsilon"),
    (lambda: GPT2Config(eos_token_id=-1), "eos_token_id"),
    (lambda: tiny_llama(hidden_size=30), "hidden_size"),
    (lambda: tiny_llama(hidden_size=30, head_dim=8), "hidden_size"),
    (lambda: tiny_llama(num_key_value_heads=3), "num_attention_heads"),
    (lambda: tiny_llama(head_dim=7), "head_dim"),
    (lambda: tiny_llama(num_key_value_heads=0), "num_key_value_heads"),
    (lambda: tiny_llama(max_position_embeddings=0), "max_position_embeddings"),
    (lambda: tiny_llama(rope_theta=-1.0), "rope_theta"),
    (lambda: tiny_llama(rms_norm_eps=float("nan")), "rms_norm_eps"),
    (lambda: tiny_llama(hidden_act="tanh"), "hidden_act"),
    (lambda: tiny_llama(rope_scaling={"rope_type": "linear"}), "rope_scaling"),
    (lambda: tiny_llama(intermediate_size=2.5), "intermediate_size"),
    (lambda: tiny_llama(mlp_bias="no"), "mlp_bias"),
    (lambda: GPT2Config(tie_word_embeddings=1), "tie_word_embeddings"),
    (lambda: RopeScaling(rope_type="yarn"), "rope_type"),
    (lambda: RopeScaling(rope_type="linear", factor=0.0), "factor"),
    (lambda: RopeScaling(rope_type="llama3", factor=8.0), "original_max_position_embeddings"),
    (lambda: RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=4.0,
                         original_max_position_embeddings=8192), "high_freq_factor"),
    (lambda: BertConfig(hidden_size=100), "hidden_size"),
    (lambda: BertConfig(type_vocab_size=0), "type_vocab_size"),
    (lambda: BertConfig(hidden_act="gelu_fast"), "hidden_act"),
])
def test_invalid_values_name_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_unknown_rope_type_lists_known_ones():
    with pytest.raises(ValueError, match=r"'dynamic' is not supported; known: default, linear, llama3"):
        LlamaConfig.from_hf({**tiny_llama().to_hf(), "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}})


def test_from_hf_names_missing_required_key():
    d = tiny_llama().to_hf()
    del d["intermediate_size"]
    with pytest.raises(ValueError, match="missing 'intermediate_size'"):
        LlamaConfig.from_hf(d)


def test_gpt2_features_we_do_not_compute_are_refused():
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        GPT2Config.from_hf({"scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(ValueError, match="scale_attn_weights"):
        GPT2Config.from_hf({"scale_attn_weights": False})
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_hf({"position_embedding_type": "relative_key"})


# --- config.json round trips ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_hf_dict_round_trip(name):
    config = CONFIGS[name]
    d = config.to_hf()
    assert json.loads(json.dumps(d)) == d  # plain JSON: no tuples or dataclasses inside
    assert type(config).from_hf(d) == config
    assert config_from_hf(d) == config


@pytest.mark.parametrize("name", CONFIGS)
def test_save_and_load_config(name, tmp_path):
    path = save_config(CONFIGS[name], tmp_path / "model")
    assert path.name == "config.json"
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left behind
    assert load_config(tmp_path / "model") == CONFIGS[name]


def test_from_hf_ignores_unrelated_keys():
    d = {**GPT2Config().to_hf(), "resid_pdrop": 0.1, "id2label": {"0": "A"}, "summary_type": "cls_index"}
    assert GPT2Config.from_hf(d) == GPT2Config()


def test_llama_reads_transformers_4_rope_forms():
    expected = tiny_llama(rope_theta=500000.0, rope_scaling=LLAMA3)
    base = {k: v for k, v in expected.to_hf().items()
            if k not in ("rope_parameters", "rope_theta", "rope_scaling", "head_dim")}
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    v4 = {**base, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **scaling}}
    legacy = {**base, "rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **scaling}}
    assert LlamaConfig.from_hf(v4) == expected
    assert LlamaConfig.from_hf(legacy) == expected
    # No RoPE keys at all (a Llama 1 / 2 config written by transformers 4): plain RoPE with theta 10000.
    plain = LlamaConfig.from_hf({**base, "rope_scaling": None})
    assert plain.rope_scaling is None and plain.rope_theta == 10000.0
    linear = LlamaConfig.from_hf({**base, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert linear.rope_scaling == RopeScaling(rope_type="linear", factor=4.0)


def test_llama_writes_both_rope_spellings():
    d = CONFIGS["llama-gqa-llama3"].to_hf()
    assert d["rope_parameters"] == {**d["rope_scaling"], "rope_theta": d["rope_theta"]}
    assert d["rope_theta"] == 500000.0 and d["rope_scaling"]["rope_type"] == "llama3"
    plain = CONFIGS["llama-plain"].to_hf()
    assert plain["rope_scaling"] is None and plain["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e4}
    v4_only = {k: v for k, v in d.items() if k != "rope_parameters"}
    assert LlamaConfig.from_hf(v4_only) == CONFIGS["llama-gqa-llama3"]


def test_llama3_scaling_without_original_uses_max_positions():
    # transformers fills original_max_position_embeddings from max_position_embeddings when it is absent.
    d = {**tiny_llama().to_hf(), "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}}
    assert LlamaConfig.from_hf(d).rope_scaling.original_max_position_embeddings == 128


def test_eos_list_becomes_tuple_and_back():
    d = {**tiny_llama().to_hf(), "eos_token_id": [128001, 128008, 128009]}
    config = LlamaConfig.from_hf(d)
    assert config.eos_token_id == (128001, 128008, 128009)
    assert config.to_hf()["eos_token_id"] == [128001, 128008, 128009]
    assert LlamaConfig.from_hf({**d, "eos_token_id": [5]}).eos_token_id == 5


def test_config_from_hf_unknown_model_type():
    with pytest.raises(ValueError, match=r"unsupported model_type 'mistral'; known: gpt2, llama, bert"):
        config_from_hf({"model_type": "mistral"})
    with pytest.raises(ValueError, match="model_type None"):
        config_from_hf({})


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(tmp_path)


# --- transformers 5 interop ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_loads_what_we_write_and_we_read_what_it_writes(name, tmp_path):
    config = CONFIGS[name]
    save_config(config, tmp_path)
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert theirs.model_type == config.to_hf()["model_type"]
    assert theirs.architectures == config.to_hf()["architectures"]
    assert config_from_hf(theirs.to_dict()) == config
    # And after transformers writes it back in its own layout.
    theirs.save_pretrained(tmp_path / "again")
    assert load_config(tmp_path / "again") == config


def test_transformers_sees_our_llama_values():
    config = CONFIGS["llama-gqa-llama3"]
    d = config.to_hf()
    theirs = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    assert isinstance(theirs, transformers.LlamaConfig)
    assert theirs.num_key_value_heads == 2 and theirs.head_dim == 8
    assert theirs.tie_word_embeddings is True
    assert theirs.rope_parameters == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                      "rope_theta": 500000.0}
    assert list(theirs.eos_token_id) == [8, 9]


def test_transformers_defaults_match_ours():
    assert GPT2Config.from_hf(transformers.GPT2Config().to_dict()) == GPT2Config()
    assert BertConfig.from_hf(transformers.BertConfig().to_dict()) == BertConfig()
    theirs = transformers.LlamaConfig().to_dict()  # a Llama-1-7B-like default
    ours = LlamaConfig.from_hf(theirs)
    assert (ours.rms_norm_eps, ours.rope_theta, ours.rope_scaling) == (1e-6, 10000.0, None)
    assert ours.rms_norm_eps == LlamaConfig(**{**_sizes(ours)}).rms_norm_eps


def _sizes(config: LlamaConfig) -> dict:
    return {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "max_position_embeddings")}
