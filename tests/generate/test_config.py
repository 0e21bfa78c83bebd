"""GenerationConfig: transformers' names and defaults, frozen, and a clear ValueError for every bad value."""
from __future__ import annotations

import dataclasses

import pytest
import transformers

from scratch.generate import GenerationConfig

SHARED_WITH_TRANSFORMERS = [
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "temperature", "top_k", "top_p",
    "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "repetition_penalty", "no_repeat_ngram_size",
    "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "num_beams", "num_beam_groups",
    "diversity_penalty", "length_penalty", "early_stopping", "num_return_sequences", "eos_token_id",
    "pad_token_id", "bos_token_id", "stop_strings", "penalty_alpha", "output_scores", "output_logits",
]


def test_names_are_transformers_names():
    ours = set(GenerationConfig.field_names())
    theirs = transformers.GenerationConfig()
    for name in SHARED_WITH_TRANSFORMERS:
        assert name in ours
        assert hasattr(theirs, name), f"{name} is not a transformers GenerationConfig attribute"
    assert {"frequency_penalty", "presence_penalty", "seed"} <= ours


def test_defaults_are_transformers_resolved_defaults():
    defaults = transformers.GenerationConfig._get_default_generation_params()
    ours = GenerationConfig()
    for name, value in defaults.items():
        if name in ("max_length",):  # None here: resolved_max_length() supplies transformers' 20
            continue
        if hasattr(ours, name):
            assert getattr(ours, name) == value, name
    assert ours.resolved_max_length(prompt_length=5) == 20
    assert GenerationConfig(max_new_tokens=7).resolved_max_length(prompt_length=5) == 12


def test_frozen_and_normalised():
    config = GenerationConfig(eos_token_id=[2, 3], bad_words_ids=[[1], [4, 5]], suppress_tokens=[7],
                              sequence_bias={(1, 2): -1, (3,): 2.5}, stop_strings="\n\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 3
    assert config.eos_token_ids == (2, 3) and config.eos_token_id == (2, 3)
    assert config.bad_words_ids == ((1,), (4, 5))
    assert config.sequence_bias == (((1, 2), -1.0), ((3,), 2.5))
    assert config.stop_strings == ("\n\n",)
    assert GenerationConfig(eos_token_id=2).eos_token_ids == (2,)
    assert hash(config) == hash(GenerationConfig(**{f: getattr(config, f) for f in config.field_names()}))
    assert config.replace(top_k=3).top_k == 3
    with pytest.raises(ValueError, match="top_k"):
        config.replace(top_k=-1)


@pytest.mark.parametrize("kwargs, mode", [
    ({}, "greedy_search"),
    ({"do_sample": True}, "sample"),
    ({"do_sample": True, "temperature": 0.0}, "greedy_search"),
    ({"num_beams": 4}, "beam_search"),
    ({"num_beams": 4, "do_sample": True}, "beam_sample"),
    ({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5}, "group_beam_search"),
    ({"penalty_alpha": 0.6, "top_k": 4}, "contrastive_search"),
])
def test_mode(kwargs, mode):
    assert GenerationConfig(**kwargs).mode == mode


def test_temperature_zero_means_greedy():
    config = GenerationConfig(do_sample=True, temperature=0.0)
    assert not config.is_sampling and config.mode == "greedy_search"


BAD = [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"temperature": -0.5}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"num_beams": 0}, "num_beams"), ({"num_beam_groups": 0}, "num_beam_groups"),
    ({"num_beams": 4, "num_beam_groups": 3}, "num_beam_groups"),
    ({"num_return_sequences": 0}, "num_return_sequences"),
    ({"num_return_sequences": 5, "num_beams": 4}, r"num_return_sequences \(5\).*num_beams \(4\)"),
    ({"num_return_sequences": 2}, "num_return_sequences=2"),
    ({"max_new_tokens": 5, "max_length": 10}, "max_new_tokens or max_length"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_length": -3}, "max_length"),
    ({"min_new_tokens": -1}, "min_new_tokens"), ({"min_length": -1}, "min_length"),
    ({"min_new_tokens": 9, "max_new_tokens": 3}, "min_new_tokens"),
    ({"min_p": 1.5}, "min_p"), ({"min_p": -0.1}, "min_p"),
    ({"typical_p": 0.0}, "typical_p"), ({"typical_p": 1.2}, "typical_p"),
    ({"epsilon_cutoff": 1.0}, "epsilon_cutoff"), ({"epsilon_cutoff": -0.1}, "epsilon_cutoff"),
    ({"eta_cutoff": 1.0}, "eta_cutoff"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"presence_penalty": -3}, "presence_penalty"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"bad_words_ids": []}, "bad_words_ids"), ({"bad_words_ids": [1, 2]}, "bad_words_ids"),
    ({"bad_words_ids": [[1, -2]]}, "bad_words_ids"), ({"bad_words_ids": [[]]}, "bad_words_ids"),
    ({"suppress_tokens": [-1]}, "suppress_tokens"), ({"begin_suppress_tokens": ["a"]}, "begin_suppress_tokens"),
    ({"sequence_bias": {}}, "sequence_bias"), ({"sequence_bias": {(1,): "x"}}, "sequence_bias"),
    ({"sequence_bias": {(): 1.0}}, "sequence_bias"), ({"sequence_bias": [[1, 2, 3]]}, "sequence_bias"),
    ({"diversity_penalty": -1.0}, "diversity_penalty"), ({"diversity_penalty": 0.5}, "num_beam_groups"),
    ({"length_penalty": float("nan")}, "length_penalty"),
    ({"early_stopping": "sometimes"}, "early_stopping"), ({"early_stopping": 1}, "early_stopping"),
    ({"eos_token_id": -1}, "eos_token_id"), ({"eos_token_id": []}, "eos_token_id"),
    ({"pad_token_id": -1}, "pad_token_id"), ({"bos_token_id": 1.5}, "bos_token_id"),
    ({"stop_strings": ""}, "stop_strings"), ({"stop_strings": []}, "stop_strings"),
    ({"penalty_alpha": 1.5}, "penalty_alpha"),
    ({"seed": -1}, "seed"), ({"do_sample": "yes"}, "do_sample"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[f"{next(iter(k))}={list(k.values())[0]!r}" for k, _ in BAD])
def test_bad_values_raise_naming_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**kwargs)


def test_error_message_shows_the_value():
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        GenerationConfig(top_p=1.5)


def test_good_edge_values_are_accepted():
    config = GenerationConfig(top_p=1.0, min_p=0.0, temperature=0.0, top_k=0, early_stopping="never", num_beams=4,
                              num_return_sequences=4, length_penalty=-1.0, frequency_penalty=-2, presence_penalty=2)
    assert (config.top_p, config.min_p, config.temperature, config.top_k) == (1.0, 0.0, 0.0, 0)
    assert (config.early_stopping, config.num_beams, config.num_return_sequences) == ("never", 4, 4)
    assert (config.length_penalty, config.frequency_penalty, config.presence_penalty) == (-1.0, -2, 2)
    assert config.mode == "beam_search" and not config.is_sampling     # temperature 0 samples nothing


def test_from_a_hugging_face_generation_config():
    hf = transformers.GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, eos_token_id=[128001, 128009],
                                       bos_token_id=128000, max_length=4096)
    config = GenerationConfig.from_dict(hf.to_dict())
    assert config.is_sampling and config.temperature == 0.6 and config.top_p == 0.9 and config.top_k == 50
    assert config.eos_token_ids == (128001, 128009) and config.bos_token_id == 128000
    assert config.max_length == 4096 and config.mode == "sample"
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig.from_dict({"top_p": 2.0, "transformers_version": "5.0"})


def test_beam_sampling_keeps_one_token_more_than_eos_ids():
    from scratch.generate import build_processors
    procs = build_processors(GenerationConfig(do_sample=True, num_beams=3, eos_token_id=[1, 2], top_p=0.5))
    assert [(type(p).__name__, p.min_tokens_to_keep) for p in procs] == [("TopK", 3), ("TopP", 3)]
