"""GPT-2 against transformers: a tiny random GPT2LMHeadModel saved with save_pretrained, loaded with scratch's
loader, compared in float32 on every backend -- full forward, left padding with an attention mask, and a cached
decode step by step next to transformers' own cache. Also the parameter count and the tiny checks of the call
convention (dtype, shapes, input errors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import scratch.models
from tests.models.causal_lm import (ATOL, check_blocked_prefill, check_left_padding, check_logits,
                                     check_logits_to_keep, hf_step, perturb_and_save, random_ids)
from scratch.models import GPT2Config, gpt2

# initializer_range 0.1 (not 0.02) so activations are large enough that a wrong GELU or eps would exceed ATOL.
HF_KW = dict(vocab_size=211, n_positions=48, n_embd=64, n_layer=2, n_head=4, initializer_range=0.1,
             bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """(transformers model, folder it was saved to). Biases and LayerNorm params randomised so they matter."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_KW))
    folder = tmp_path_factory.mktemp("gpt2")
    return perturb_and_save(model, folder), folder


def _ids(B=2, T=40, seed=0):
    return random_ids(HF_KW["vocab_size"], B, T, seed)


def test_logits_match_transformers(hf_gpt2, backend):
    check_logits(*hf_gpt2, backend, HF_KW["vocab_size"])


def test_logits_to_keep_is_the_tail_of_the_full_logits(hf_gpt2):
    check_logits_to_keep(hf_gpt2[1], HF_KW["vocab_size"])


def test_blocked_prefill_matches_transformers(hf_gpt2, monkeypatch):
    check_blocked_prefill(*hf_gpt2, monkeypatch, HF_KW["vocab_size"])


def test_left_padding_matches_transformers(hf_gpt2, backend):
    check_left_padding(*hf_gpt2, backend, HF_KW["vocab_size"], T=20, pads=(5, 12))


def test_cached_decode_matches_transformers_cache(hf_gpt2, backend):
    """Prefill 9 tokens then 6 one-token steps, with both libraries' caches: same logits at every step."""
    hf, folder = hf_gpt2
    model = scratch.models.load(folder, backend=backend)
    ids = _ids(2, 15, seed=2)
    cache = model.new_cache(2, 32)
    ours = [backend.to_numpy(model(ids[:, :9], cache=cache))]
    with torch.no_grad():
        logits, past = hf_step(hf, torch.tensor(ids[:, :9]), None)
        refs = [logits]
        for t in range(9, 15):
            ours.append(backend.to_numpy(model(ids[:, t:t + 1], cache=cache)))
            logits, past = hf_step(hf, torch.tensor(ids[:, t:t + 1]), past)
            refs.append(logits)
    assert cache.length == 15
    for step, (a, b) in enumerate(zip(ours, refs)):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, err_msg=f"step {step}")


def test_parameter_count_and_attributes(hf_gpt2):
    hf, folder = hf_gpt2
    model = scratch.models.load(folder)
    assert model.parameter_count() == hf.num_parameters()
    assert model.n_vocab == HF_KW["vocab_size"] and model.max_length == HF_KW["n_positions"]
    assert model.dtype == "float32" and model.backend.name == "numpy"
    assert isinstance(model.config, GPT2Config)


def test_from_config_is_the_same_on_every_backend(backend):
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    ref = scratch.models.from_config(config, backend="numpy", seed=3)
    model = scratch.models.from_config(config, backend=backend, seed=3)
    ids = _ids(1, 10, seed=3) % 50
    np.testing.assert_allclose(backend.to_numpy(model(ids)), ref(ids), atol=1e-5, rtol=0)
    assert model(ids).dtype == backend.xp.float32


def test_float16_model_runs_in_float16():
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = gpt2.from_config(config, dtype="float16", seed=0)
    ref = gpt2.from_config(config, seed=0)
    ids = _ids(1, 8) % 50
    out = model(ids)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref(ids), atol=2e-2)


def test_input_errors_name_the_problem():
    model = gpt2.from_config(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"input_ids holds 50, outside \[0, 50\)"):
        model(np.array([[1, 50]]))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(np.array([1, 2]))
    with pytest.raises(ValueError, match="context of 16"):
        model(np.zeros((1, 17), dtype=np.int64))
    full = model.new_cache(1, 16)
    try:                                                  # exactly the context is allowed, at once or through a cache
        assert model(np.zeros((1, 16), dtype=np.int64)).shape == (1, 16, 50)
        model(np.zeros((1, 15), dtype=np.int64), cache=full)
        model(np.zeros((1, 1), dtype=np.int64), cache=full)                     # 15 cached + 1 new = 16
    except ValueError as error:
        pytest.fail(f"a sequence exactly as long as the context was refused: {error}")
    with pytest.raises(ValueError, match="16 cached \\+ 1 new positions exceed the model's context of 16"):
        model(np.zeros((1, 1), dtype=np.int64), cache=full)
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.zeros((1, 3), dtype=np.int64), cache=cache, attention_mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match="exceeds"):
        model.new_cache(1, 17)
