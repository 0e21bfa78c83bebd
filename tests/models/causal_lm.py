"""Checks shared by the GPT-2 and Llama tests: a transformers causal LM and ours, loaded from the same folder, give
the same logits -- full forward, blocked prefill, left padding -- and transformers' cached step, whichever name its
version gives the cache argument. Also how every test of those models (here and in tests/train) makes its tiny random
transformers model matter in every term: perturb_and_save."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import scratch.models
from scratch.models import decoder  # owns PREFILL_BLOCK, used by both models

# float32 against float32, matmuls summed in another order: measured <= 3.8e-6 on logits up to ~3.5 (GPT-2 and Llama:
# full forward, blocked prefill, left padding, cached steps), about 16 float32 ulps there; so 1e-5 (2.6x).
ATOL = 1e-5


def hf_step(hf, ids, past):
    """One transformers forward with its cache: transformers 5 names the argument and the output `cache`, 4 named
    them `past_key_values` (still accepted, deprecated, by 5)."""
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
    out = hf(ids, use_cache=True, **{key: past})
    return out.logits.numpy(), getattr(out, key)


def perturb_and_save(model, folder):
    """Add 0.1 N(0, 1), drawn from torch's global generator, to every 1-D parameter of a transformers model -- biases
    and norm gains start at exactly 0 or 1, so a dropped or swapped one would not show -- and save it in eval mode
    with save_pretrained; -> the model."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.eval().save_pretrained(folder)
    return model


def random_ids(vocab_size: int, B=2, T=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, (B, T))


def check_logits(hf, folder, backend, vocab_size: int):
    model = scratch.models.load(folder, backend=backend)
    ids = random_ids(vocab_size)
    logits = model(ids)
    backend.check_owned(logits)                 # MixedBackendError if the logits left the backend
    assert logits.dtype == backend.xp.float32
    assert tuple(logits.shape) == (2, 40, vocab_size)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(backend.to_numpy(logits), ref, atol=ATOL, rtol=0)


def check_blocked_prefill(hf, folder, monkeypatch, vocab_size: int):
    """A prefill longer than the attention block goes through the blocked causal path (block 8 here, 128 in use)."""
    monkeypatch.setattr(decoder, "PREFILL_BLOCK", 8)
    model = scratch.models.load(folder)
    ids = random_ids(vocab_size, 2, 37, seed=4)
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


def check_left_padding(hf, folder, backend, vocab_size: int, T: int, pads: tuple[int, int]):
    """transformers given the same mask and the cumsum-1 position ids; only real positions are compared."""
    model = scratch.models.load(folder, backend=backend)
    ids = random_ids(vocab_size, 3, T, seed=1)
    mask = np.ones_like(ids)
    mask[1, :pads[0]] = 0
    mask[2, :pads[1]] = 0
    ours = backend.to_numpy(model(ids, attention_mask=mask))
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=ATOL, rtol=0)
    assert np.isfinite(ours).all()  # padding query rows attend to nothing: zeros, not NaN


def check_logits_to_keep(folder, vocab_size: int):
    """logits_to_keep=k gives the last k positions of the full logits (0, or k >= T, keeps all); a bad value is
    refused before the cache moves."""
    model = scratch.models.load(folder)
    ids = random_ids(vocab_size, B=2, T=12, seed=5)
    full = model(ids)
    for k in (1, 5, 12, 40, 0, np.int64(3)):
        kept = model(ids, logits_to_keep=k)
        np.testing.assert_allclose(kept, full[:, max(0, 12 - k) if k else 0:], atol=1e-5, rtol=0, err_msg=f"k={k}")
    cache = model.new_cache(2, 16)
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match=f"logits_to_keep must be an int >= 0.*got {bad!r}"):
            model(ids, cache=cache, logits_to_keep=bad)
    assert cache.length == 0
