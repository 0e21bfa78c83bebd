"""GPT-2 against transformers: a tiny random GPT2LMHeadModel saved with save_pretrained, loaded with scratch's
loader, compared in float32 on every backend -- full forward, left padding with an attention mask, and a cached
decode step by step next to transformers' own cache. Also the parameter count and the tiny checks of the call
convention (dtype, shapes, input errors)."""
from __future__ import annotations

import inspect
import numpy as np
import pytest
import torch
import transformers

import scratch.models
from scratch.models import GPT2Config, gpt2

ATOL = 1e-4  # float32 vs float32; observed ~3e-7 (summation order inside matmuls)
# initializer_range 0.1 (not 0.02) so activations are large enough that a wrong GELU or eps would exceed ATOL.
HF_KW = dict(vocab_size=211, n_positions=48, n_embd=64, n_layer=2, n_head=4, initializer_range=0.1,
             bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """(transformers model, folder it was saved to). Biases and LayerNorm params randomised so they matter."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_KW)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    return model, folder


def hf_step(hf, ids, past):
    """One transformers forward with its cache: transformers 5 names the argument and the output `cache`, 4 named
    them `past_key_values` (still accepted, deprecated, by 5)."""
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    out = hf(ids, use_cache=True, **{key: past})
    return out.logits.numpy(), getattr(out, key)


def _ids(B=2, T=40, seed=0):
    return np.random.default_rng(seed).integers(0, HF_KW["vocab_size"], (B, T))


def test_logits_match_transformers(hf_gpt2, backend):
    hf, folder = hf_gpt2
    model = scratch.models.load(folder, backend=backend)
    ids = _ids()
    logits = model(ids)
    assert backend.owns(logits)
    assert logits.dtype == backend.xp.float32
    assert tuple(logits.shape) == (2, 40, HF_KW["vocab_size"])
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(backend.to_numpy(logits), ref, atol=ATOL, rtol=0)



def test_blocked_prefill_matches_transformers(hf_gpt2, monkeypatch):
    """A prefill longer than the attention block goes through the blocked causal path (block 8 here, 128 in use)."""
    hf, folder = hf_gpt2
    monkeypatch.setattr(gpt2, "PREFILL_BLOCK", 8)
    model = scratch.models.load(folder)
    ids = _ids(2, 37, seed=4)
    mask = np.ones_like(ids)
    mask[1, :11] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
        ref_padded = hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
                        position_ids=torch.tensor(positions)).logits.numpy()
    np.testing.assert_allclose(model(ids), ref, atol=ATOL, rtol=0)
    real = mask.astype(bool)
    np.testing.assert_allclose(model(ids, attention_mask=mask)[real], ref_padded[real], atol=ATOL, rtol=0)

def test_left_padding_matches_transformers(hf_gpt2, backend):
    """transformers given the same mask and the cumsum-1 position ids; only real positions are compared."""
    hf, folder = hf_gpt2
    model = scratch.models.load(folder, backend=backend)
    ids = _ids(3, 20, seed=1)
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    mask[2, :12] = 0
    ours = backend.to_numpy(model(ids, attention_mask=mask))
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=ATOL, rtol=0)
    assert np.isfinite(ours).all()  # padding query rows attend to nothing: zeros, not NaN


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
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.zeros((1, 3), dtype=np.int64), cache=cache, attention_mask=np.ones((1, 2)))
    with pytest.raises(ValueError, match="exceeds"):
        model.new_cache(1, 17)
