"""Bad-input catalogue, generation: settings, ids and distributions that cannot give a right token are refused up
front with a message naming the setting -- never a made-up token (sampling from NaN used to return token 0), never a
failure mid-generation that blames something else, never an allocation the memory cannot hold."""
from __future__ import annotations

import re

import numpy as np
import pytest

import scratch.models
import scratch.nn.kv_cache as kv_cache
from scratch.generate import generate, sample, sample_from_probs

from .conftest import V


@pytest.fixture(scope="module")
def gpt2(files):
    return scratch.models.load(files["gpt2"])


@pytest.fixture(scope="module")
def llama(files):
    return scratch.models.load(files["llama"])


def little_memory(monkeypatch, nbytes=1000):
    """Pretend only `nbytes` can be allocated (the check reads kv_cache.available_memory)."""
    monkeypatch.setattr(kv_cache, "available_memory", lambda xp: nbytes)


PROMPT = [[5, 6, 7]]


def run(**kwargs):
    return lambda model, monkeypatch: generate(model, PROMPT, **{"max_new_tokens": 3, **kwargs})


CASES = {
    # ids generation writes or looks for, checked before the first step
    "eos_token_id outside the vocabulary": (run(eos_token_id=V + 5), ValueError,
                                            f"eos_token_id {V + 5} is outside the model's vocabulary \\[0, {V}\\)"),
    "pad_token_id outside the vocabulary": (run(eos_token_id=1, pad_token_id=V), ValueError,
                                            f"pad_token_id {V} is outside the model's vocabulary"),
    "pad_token_id negative": (run(pad_token_id=-1), ValueError,
                              "pad_token_id must be None or a non-negative integer, got -1"),
    "bos_token_id outside the vocabulary": (lambda m, p: generate(m, [[]], bos_token_id=V, max_new_tokens=2),
                                            ValueError, f"bos_token_id {V} is outside the model's vocabulary"),
    "a uint64 id": (lambda m, p: generate(m, np.array([[1, 2 ** 64 - 1]], dtype=np.uint64), max_new_tokens=2),
                    ValueError, "input_ids holds token id 18446744073709551615, outside"),
    "an id past the vocabulary": (lambda m, p: generate(m, [[1, V]], max_new_tokens=2), ValueError,
                                  f"input_ids holds token id {V}, outside the model's vocabulary"),
    "float ids": (lambda m, p: generate(m, np.array([[1.0, 2.0]]), max_new_tokens=2), ValueError,
                  "input_ids must hold integer token ids, got dtype float64"),
    "bad_words_ids outside the vocabulary": (run(bad_words_ids=[[V + 200]]), ValueError,
                                             f"the vocabulary has {V} tokens, but bad_words_ids names token ids "
                                             f"\\[{V + 200}\\]"),
    "sequence_bias outside the vocabulary": (run(sequence_bias={(V + 1,): 1.0}), ValueError,
                                             f"but sequence_bias names token ids \\[{V + 1}\\]"),
    # distributions with nothing to draw from
    "a temperature that overflows float32": (run(do_sample=True, temperature=1e-45), ValueError,
                                             "sampling: row 0 of the next-token probabilities has nothing to draw "
                                             "from .* a temperature so small"),
    "every token suppressed": (run(do_sample=True, suppress_tokens=list(range(V))), ValueError,
                               "sampling: row 0 .* sum to 0.0"),
    "every token suppressed, beam sampling": (run(do_sample=True, num_beams=2, suppress_tokens=list(range(V))),
                                              ValueError, "sampling: row 0 .*nothing to draw from"),
    "NaN probabilities": (lambda m, p: sample_from_probs(np.array([[0.5, 0.5], [np.nan, 1.0]], np.float32),
                                                         np.array([0.3, 0.3], np.float32)),
                          ValueError, r"sampling: row 1 of the next-token probabilities .* \(they sum to nan\)"),
    "scores all -inf": (lambda m, p: sample(np.full((1, 4), -np.inf, np.float32), np.array([0.5], np.float32)),
                        ValueError, "row 0 .* scores are NaN, or -inf for every token"),
    "infinite probability": (lambda m, p: sample_from_probs(np.array([[np.inf, 0.0]], np.float32),
                                                            np.array([0.5], np.float32)),
                             ValueError, r"row 0 .* \(they sum to inf\)"),
    # memory: the cache is checked before it is allocated
    "a cache larger than memory": (lambda m, p: (little_memory(p), generate(m, PROMPT, max_new_tokens=60))[1],
                                   ValueError, "max_new_tokens=60: the KV cache of 1 sequence\\(s\\) x 63 positions "
                                               ".* needs .* but only 0.00 GiB of memory is available; lower "
                                               "max_new_tokens"),
    "beams larger than memory": (lambda m, p: (little_memory(p, 5000),
                                               generate(m, PROMPT, num_beams=4, max_new_tokens=20))[1],
                                 ValueError, "max_new_tokens=20: the KV cache of 4 sequence\\(s\\)"),
    "contrastive larger than memory": (lambda m, p: (little_memory(p, 5000), generate(
        m, PROMPT, penalty_alpha=0.6, top_k=8, max_new_tokens=20))[1], ValueError, "of 8 sequence\\(s\\)"),
    "a KVCache larger than memory": (lambda m, p: (little_memory(p), m.new_cache(4, 60))[1], ValueError,
                                     r"a KV cache of 4 row\(s\) x max_length=60 positions needs .* only"),
    # settings
    "past the context": (run(max_new_tokens=80), ValueError, "exceed the model's context of 64; lower max_new_tokens"),
    "no new token": (run(max_new_tokens=0), ValueError, "max_new_tokens"),
    "unknown setting": (run(temprature=0.5), ValueError, r"unknown generation parameter\(s\) temprature"),
    "more sequences than beams": (run(num_beams=2, num_return_sequences=3), ValueError,
                                  r"num_return_sequences \(3\) must be <= num_beams \(2\)"),
    "top_p above 1": (run(do_sample=True, top_p=1.5), ValueError, "top_p must be in \\(0, 1\\], got 1.5"),
    "negative temperature": (run(do_sample=True, temperature=-1.0), ValueError, "temperature must be .* got -1.0"),
    "no beams": (run(num_beams=0), ValueError, "num_beams must be an integer >= 1, got 0"),
    "repetition penalty 0": (run(repetition_penalty=0.0), ValueError, "repetition_penalty must be a finite number > 0"),
    "right padding": (lambda m, p: generate(m, np.array([[1, 2, 3]]), attention_mask=np.array([[1, 1, 0]]),
                                            max_new_tokens=2),
                      ValueError, "attention_mask row 0 is not left-padded"),
    "stop strings without a tokenizer": (run(stop_strings=["."]), ValueError,
                                         r"stop_strings \('.',\) are matched on decoded text: pass tokenizer="),
}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("case", CASES)
def test_refused_naming_the_setting(case, family, gpt2, llama, monkeypatch):
    call, kind, message = CASES[case]
    with pytest.raises(kind) as error:
        call(gpt2 if family == "gpt2" else llama, monkeypatch)
    assert re.search(message, str(error.value)), f"{case}: {error.value}"
