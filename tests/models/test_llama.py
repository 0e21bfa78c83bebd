"""Llama against transformers: tiny random LlamaForCausalLM models saved with save_pretrained, loaded with scratch's
loader, compared in float32 on every backend. Variants: grouped-query attention (4 heads, 2 kv heads) with llama3
RoPE scaling and a tied head; an untied head with head_dim != C / H; linear RoPE scaling with attention and MLP
biases. Sequences run past 10 tokens (RoPE angles wrap), left padding, and a cached decode next to transformers'
own cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import scratch.models
from tests.models.causal_lm import (ATOL, check_blocked_prefill, check_left_padding, check_logits,
                                     check_logits_to_keep, hf_step, perturb_and_save, random_ids)
from scratch.models import LlamaConfig, llama

BASE = dict(vocab_size=157, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.1)
VARIANTS = {
    # llama3 scaling with a short original context, so all three wavelength bands (kept, blended, divided) occur.
    "gqa-llama3-tied": dict(tie_word_embeddings=True, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)),
    "untied-head_dim10": dict(tie_word_embeddings=False, head_dim=10, num_key_value_heads=1),
    "linear-biases-mha": dict(tie_word_embeddings=False, num_key_value_heads=4, attention_bias=True,
                              mlp_bias=True, rope_theta=500.0, rope_scaling=dict(rope_type="linear", factor=2.0)),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf_llama(request, tmp_path_factory):
    """(transformers model, folder). Norm weights and biases randomised so they matter."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**BASE, **VARIANTS[request.param]}))
    folder = tmp_path_factory.mktemp(request.param)
    return perturb_and_save(model, folder), folder


def _ids(B=2, T=40, seed=0):
    return random_ids(BASE["vocab_size"], B, T, seed)


def test_logits_match_transformers(hf_llama, backend):
    check_logits(*hf_llama, backend, BASE["vocab_size"])


def test_logits_to_keep_is_the_tail_of_the_full_logits(hf_llama):
    check_logits_to_keep(hf_llama[1], BASE["vocab_size"])


def test_blocked_prefill_matches_transformers(hf_llama, monkeypatch):
    check_blocked_prefill(*hf_llama, monkeypatch, BASE["vocab_size"])


def test_left_padding_matches_transformers(hf_llama, backend):
    check_left_padding(*hf_llama, backend, BASE["vocab_size"], T=24, pads=(4, 13))


def test_cached_decode_matches_transformers_cache(hf_llama):
    """Prefill 12 tokens, then 5 one-token steps and a 3-token chunk, both libraries with their own caches."""
    hf, folder = hf_llama
    model = scratch.models.load(folder)
    ids = _ids(2, 20, seed=2)
    cache = model.new_cache(2, 32)
    chunks = [(0, 12)] + [(t, t + 1) for t in range(12, 17)] + [(17, 20)]
    past = None
    with torch.no_grad():
        for start, end in chunks:
            ours = model(ids[:, start:end], cache=cache)
            ref, past = hf_step(hf, torch.tensor(ids[:, start:end]), past)
            np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0, err_msg=f"chunk {start}:{end}")
    assert cache.length == 20


def test_parameter_count(hf_llama):
    hf, folder = hf_llama
    model = scratch.models.load(folder)
    assert model.parameter_count() == hf.num_parameters()
    assert isinstance(model.config, LlamaConfig)
    assert (model.lm_head is None) == model.config.tie_word_embeddings


def test_rope_table_is_float32_and_grows_once():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=2048)
    model = llama.from_config(config)
    cos, sin = model.rope_table(10)
    assert cos.dtype == np.float32 and sin.dtype == np.float32 and model.inv_freq.dtype == np.float32
    assert cos.shape[2] >= 10
    assert model.rope_table(5)[0] is cos                     # no recomputation for a shorter length
    assert model.rope_table(1000)[0].shape[2] >= 1000        # grown on demand, capped at the context
    assert model.rope_table(2048)[0].shape[2] == 2048


def test_float16_model_runs_in_float16():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    ids = _ids(1, 12) % 50
    out = llama.from_config(config, dtype="float16")(ids)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), llama.from_config(config)(ids), atol=2e-2)


def test_wrong_variants_are_caught(hf_llama, monkeypatch):
    """The comparison can fail: Meta's interleaved RoPE layout, or GQA heads paired in tile order (h % Hkv)
    instead of transformers' repeat_kv order (h // G), each move the logits far beyond ATOL."""
    hf, folder = hf_llama
    model = scratch.models.load(folder)
    ids = _ids(1, 24)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.max(np.abs(model(ids) - ref)) < ATOL

    from scratch import nn
    with monkeypatch.context() as m:
        m.setattr(llama, "apply_rope", lambda x, cos, sin, layout: nn.apply_rope(x, cos, sin, "interleaved"))
        assert np.max(np.abs(model(ids) - ref)) > 100 * ATOL

    if not 1 < hf.config.num_key_value_heads < hf.config.num_attention_heads:
        return  # one kv head (MQA) or one per query head (MHA): both orders pair heads the same way

    def tiled_attention(q, k, v, mask):   # kv head j serves query heads j, j + Hkv, ... (the wrong order)
        G = q.shape[1] // k.shape[1]
        return nn.attention(q, np.tile(k, (1, G, 1, 1)), np.tile(v, (1, G, 1, 1)), mask=mask)

    with monkeypatch.context() as m:
        m.setattr(llama, "causal_attention", tiled_attention)
        assert np.max(np.abs(model(ids) - ref)) > 100 * ATOL
