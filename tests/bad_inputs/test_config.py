"""Bad-input catalogue, config.json: a model folder whose config.json is malformed, hostile or inconsistent is
refused by scratch.models.load with the promised type of error and a message naming the field or the file."""
from __future__ import annotations

import json
import os
import re

import pytest

import scratch.models
import scratch.safe_read

from .conftest import finishes


def edited(copy_of, name, **changes):
    """load() of a copy of model `name` whose config.json has `changes` (a value None deletes the key)."""
    folder = copy_of(name)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return lambda: scratch.models.load(folder)


def written(copy_of, name, data: bytes):
    folder = copy_of(name)
    (folder / "config.json").write_bytes(data)
    return lambda: scratch.models.load(folder)


def fifo_config(copy_of):
    folder = copy_of("gpt2")
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    return lambda: scratch.models.load(folder)


def huge_config(copy_of, monkeypatch):
    monkeypatch.setitem(scratch.safe_read.LIMITS, "config.json", 64)
    return edited(copy_of, "gpt2")


def a_file_as_model(copy_of):
    path = copy_of("gpt2") / "config.json"
    return lambda: scratch.models.load(path)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
          "original_max_position_embeddings": 32}

CASES = {
    "not JSON": (lambda c, m: written(c, "gpt2", b'{"model_type": gpt2}'), ValueError, "config.json: not valid JSON"),
    "nested 100k deep": (lambda c, m: written(c, "gpt2", b"[" * 100_000 + b"]" * 100_000), ValueError,
                         "config.json: JSON nested too deeply"),
    "not UTF-8": (lambda c, m: written(c, "gpt2", b'{"model_type": "gpt\xe9"}'), ValueError,
                  r"config.json: not UTF-8 text \(byte 0xe9 at offset 19\)"),
    "a list": (lambda c, m: written(c, "gpt2", b"[1, 2]"), ValueError, "config.json must hold a JSON object, got list"),
    "too large": (lambda c, m: huge_config(c, m), ValueError, "config.json: .* bytes is more than any config.json"),
    "a FIFO": (lambda c, m: fifo_config(c), ValueError, "config.json: is a FIFO"),
    "no config.json": (lambda c, m: (lambda folder: ((folder / "config.json").unlink(),
                                                     lambda: scratch.models.load(folder))[1])(c("gpt2")),
                       FileNotFoundError, "no config.json in"),
    "a file, not a folder": (lambda c, m: a_file_as_model(c), ValueError,
                             "config.json is neither a model folder .* nor a GGUF file"),
    "unknown model_type": (lambda c, m: edited(c, "gpt2", model_type="mamba", architectures=None), ValueError,
                           "unsupported model_type 'mamba'"),
    "model_type a list": (lambda c, m: edited(c, "gpt2", model_type=[1]), ValueError, r"unsupported model_type \[1\]"),
    "unknown architecture": (lambda c, m: edited(c, "gpt2", architectures=["GPTNeoXForCausalLM"]), ValueError,
                             "unsupported architecture 'GPTNeoXForCausalLM'"),
    "architectures a string": (lambda c, m: edited(c, "gpt2", architectures="GPT2LMHeadModel"), ValueError,
                               "'architectures' must be a list of names, got 'GPT2LMHeadModel'"),
    "architectures disagree with model_type": (lambda c, m: edited(c, "llama", architectures=["GPT2LMHeadModel"]),
                                               ValueError, "architectures names 'GPT2LMHeadModel' but model_type is "
                                                           "'llama'"),
    "rope_parameters a string": (lambda c, m: edited(c, "llama", rope_parameters="yarn"), ValueError,
                                 "LlamaConfig.rope_parameters must be a JSON object .*, got 'yarn'"),
    "rope_scaling a list": (lambda c, m: edited(c, "llama", rope_parameters=None, rope_scaling=[8.0]), ValueError,
                            r"LlamaConfig.rope_scaling must be a JSON object .*, got \[8.0\]"),
    "unknown rope_type": (lambda c, m: edited(c, "llama", rope_parameters={"rope_type": "yarn", "factor": 2.0}),
                          ValueError, "RopeScaling.rope_type 'yarn' is not supported"),
    "rope factor a string": (lambda c, m: edited(c, "llama", rope_parameters={"rope_type": "linear", "factor": "2"}),
                             ValueError, "RopeScaling.factor must be a positive finite number, got '2'"),
    "rope_theta a string": (lambda c, m: edited(c, "llama", rope_parameters={"rope_theta": "1e4"}), ValueError,
                            "LlamaConfig.rope_theta must be a positive finite number, got '1e4'"),
    "llama3 frequency factors reversed": (lambda c, m: edited(c, "llama", rope_parameters=LLAMA3), ValueError,
                                          r"RopeScaling.high_freq_factor \(1.0\) must be greater than low_freq_factor"),
    "vocab_size a float": (lambda c, m: edited(c, "llama", vocab_size=300.0), ValueError,
                           "LlamaConfig.vocab_size must be a positive integer, got 300.0"),
    "vocab_size zero": (lambda c, m: edited(c, "gpt2", vocab_size=0), ValueError,
                        "GPT2Config.vocab_size must be a positive integer, got 0"),
    "hidden_size not divisible by heads": (lambda c, m: edited(c, "llama", num_attention_heads=3), ValueError,
                                           r"LlamaConfig.hidden_size \(16\) must be divisible by num_attention_heads"),
    "kv heads do not divide heads": (lambda c, m: edited(c, "llama", num_attention_heads=4, num_key_value_heads=3),
                                     ValueError, r"num_attention_heads \(4\) must be divisible by num_key_value_heads"),
    "odd head_dim": (lambda c, m: edited(c, "llama", head_dim=7), ValueError, r"LlamaConfig.head_dim \(7\) must be even"),
    "eos_token_id a string": (lambda c, m: edited(c, "llama", eos_token_id="2"), ValueError,
                              "LlamaConfig.eos_token_id must be a non-negative integer .*, got '2'"),
    "eos_token_id an empty list": (lambda c, m: edited(c, "llama", eos_token_id=[]), ValueError,
                                   r"LlamaConfig.eos_token_id .*, got \(\)"),
    "hidden_act a list": (lambda c, m: edited(c, "llama", hidden_act=["silu"]), ValueError,
                          r"LlamaConfig.hidden_act \['silu'\] is not supported"),
    "required size missing": (lambda c, m: edited(c, "llama", intermediate_size=None), ValueError,
                              "config.json for LlamaConfig is missing 'intermediate_size'"),
    "a flag that is a string": (lambda c, m: edited(c, "llama", tie_word_embeddings="yes"), ValueError,
                                "LlamaConfig.tie_word_embeddings must be true or false, got 'yes'"),
    "unknown GPT-2 activation": (lambda c, m: edited(c, "gpt2", activation_function="swish2"), ValueError,
                                 "GPT2Config.activation 'swish2' is not supported"),
    "negative epsilon": (lambda c, m: edited(c, "gpt2", layer_norm_epsilon=-1e-5), ValueError,
                         "GPT2Config.layer_norm_epsilon must be a positive finite number, got -1e-05"),
    "GPT-2 feature never used": (lambda c, m: edited(c, "gpt2", scale_attn_by_inverse_layer_idx=True), ValueError,
                                 "scale_attn_by_inverse_layer_idx .* not supported"),
    "no folder at all": (lambda c, m: (lambda: scratch.models.load(c("gpt2") / "nope")), FileNotFoundError,
                         "nope does not exist"),
}


@pytest.mark.parametrize("case", CASES)
def test_refused_naming_the_culprit(case, copy_of, monkeypatch):
    build, kind, message = CASES[case]
    error = finishes(build(copy_of, monkeypatch))
    assert isinstance(error, kind), f"{case}: expected {kind.__name__}, got {error!r}"
    assert re.search(message, str(error)), f"{case}: {error}"
