"""generate() against transformers' generate(do_sample=False): tiny random GPT-2 and Llama models saved with
save_pretrained and loaded with scratch's loader must give the same tokens -- single prompts, left-padded batches,
processors (repetition penalty, no-repeat n-gram, min_new_tokens, bad words), one or several EOS ids reached in
some rows (those rows padded afterwards), max_length instead of max_new_tokens. Same sequences array, same shape.

The weights are drawn with a large initializer_range so the argmax margins are wide: greedy decoding compares
argmaxes of float32 logits that agree to ~1e-6, and a near-tie could otherwise flip a token.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import scratch.models
from scratch.generate import generate
from scratch.generate.prompt import left_pad

V = 101
PAD = 0


def _hf_gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None, pad_token_id=None))


def _hf_llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, tmp_path_factory):
    """(transformers model, our model on numpy), same weights."""
    torch.manual_seed(0)
    hf = (_hf_gpt2 if request.param == "gpt2" else _hf_llama)().eval()
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, scratch.models.load(folder)


def _hf_generate(hf, ids, mask, **kwargs):
    kwargs.setdefault("pad_token_id", PAD)
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, **kwargs)
    return out if kwargs.get("return_dict_in_generate") else out.numpy()


ROWS = [[5, 17, 33, 2, 9, 41], [7, 7, 60], [88, 3, 14, 15, 92, 65, 35, 89, 79]]


def test_greedy_single_prompt(models):
    hf, ours = models
    ids, mask = left_pad(ROWS[:1], PAD)
    ref = _hf_generate(hf, ids, mask, max_new_tokens=16)
    out = generate(ours, ids, max_new_tokens=16)
    assert out.sequences.dtype == np.int64
    np.testing.assert_array_equal(out.sequences, ref)


def test_greedy_left_padded_batch(models):
    hf, ours = models
    ids, mask = left_pad(ROWS, PAD)
    ref = _hf_generate(hf, ids, mask, max_new_tokens=12)
    np.testing.assert_array_equal(generate(ours, ids, attention_mask=mask, max_new_tokens=12,
                                           pad_token_id=PAD).sequences, ref)
    # A list of lists of different lengths is left-padded here the same way.
    np.testing.assert_array_equal(generate(ours, ROWS, max_new_tokens=12, pad_token_id=PAD).sequences, ref)


def test_max_length_counts_the_prompt(models):
    hf, ours = models
    ids, mask = left_pad(ROWS, PAD)
    ref = _hf_generate(hf, ids, mask, max_length=15)
    out = generate(ours, ROWS, max_length=15, pad_token_id=PAD)
    assert out.sequences.shape == (3, 15)
    np.testing.assert_array_equal(out.sequences, ref)


@pytest.mark.parametrize("processors", [
    dict(repetition_penalty=1.8),
    dict(repetition_penalty=0.7, no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=1),
    dict(bad_words_ids=[[4], [7, 60, 60], [41, 41]]),
])
def test_greedy_with_processors(models, processors):
    hf, ours = models
    ids, mask = left_pad(ROWS, PAD)
    ref = _hf_generate(hf, ids, mask, max_new_tokens=12, **processors)
    out = generate(ours, ROWS, max_new_tokens=12, pad_token_id=PAD, **processors)
    np.testing.assert_array_equal(out.sequences, ref)


def test_output_scores_and_logits_equal_transformers(models):
    """Per-step raw logits and processed scores, left-padded batch, with a processor that changes the scores and
    an EOS that finishes one row early (its later steps are still recorded, as transformers records them)."""
    hf, ours = models
    ids, mask = left_pad(ROWS, PAD)
    eos = int(_tokens_reached(hf, ids, mask, 8)[1, 3])
    kwargs = dict(max_new_tokens=8, repetition_penalty=1.5, no_repeat_ngram_size=2, eos_token_id=eos)
    ref = _hf_generate(hf, ids, mask, return_dict_in_generate=True, output_scores=True, output_logits=True, **kwargs)
    out = generate(ours, ROWS, pad_token_id=PAD, output_scores=True, output_logits=True, **kwargs)
    np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
    assert len(out.scores) == len(out.logits) == len(ref.scores) == out.sequences.shape[1] - ids.shape[1]
    for step, (s, r, lo, rl) in enumerate(zip(out.scores, ref.scores, out.logits, ref.logits)):
        assert s.shape == (3, V) and s.dtype == np.float32 and isinstance(s, np.ndarray)
        np.testing.assert_array_equal(np.isinf(s), np.isinf(r.numpy()), err_msg=f"-inf placement, step {step}")
        finite = np.isfinite(s)
        # float32 on both sides through each one's KV cache: measured <= 8.3e-6 on values up to ~7, so 2e-5
        np.testing.assert_allclose(s[finite], r.numpy()[finite], atol=2e-5, rtol=0, err_msg=f"scores, step {step}")
        np.testing.assert_allclose(lo, rl.numpy(), atol=2e-5, rtol=0, err_msg=f"logits, step {step}")
    plain = generate(ours, ROWS, pad_token_id=PAD, **kwargs)
    assert plain.scores is None and plain.logits is None
    np.testing.assert_array_equal(plain.sequences, out.sequences)


def _tokens_reached(hf, ids, mask, steps):
    """Tokens greedy decoding produces early in some rows (without EOS), to use as EOS ids that really occur."""
    plain = _hf_generate(hf, ids, mask, max_new_tokens=steps)
    return plain[:, ids.shape[1]:]


def test_eos_reached_in_some_rows(models):
    hf, ours = models
    ids, mask = left_pad(ROWS, PAD)
    generated = _tokens_reached(hf, ids, mask, 12)
    eos = int(generated[0, 2])          # row 0 stops at its third new token; the others may go on
    ref = _hf_generate(hf, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    out = generate(ours, ROWS, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    assert out.sequences.shape == ref.shape
    np.testing.assert_array_equal(out.sequences, ref)
    assert (out.sequences[0, ids.shape[1] + 3:] == PAD).all()   # padded after EOS


def test_several_eos_ids_and_min_new_tokens(models):
    hf, ours = models
    ids, mask = left_pad(ROWS, PAD)
    generated = _tokens_reached(hf, ids, mask, 12)
    eos = [int(generated[1, 1]), int(generated[2, 4])]
    for extra in ({}, {"min_new_tokens": 4}):
        ref = _hf_generate(hf, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, **extra)
        out = generate(ours, ROWS, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, **extra)
        assert out.sequences.shape == ref.shape
        np.testing.assert_array_equal(out.sequences, ref)


def test_every_row_finishes_early(models):
    """When every row has reached EOS the loop stops: the output is shorter than max_new_tokens."""
    hf, ours = models
    ids, mask = left_pad(ROWS[:2], PAD)
    generated = _tokens_reached(hf, ids, mask, 12)
    eos = [int(generated[0, 1]), int(generated[1, 2])]
    ref = _hf_generate(hf, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    out = generate(ours, ROWS[:2], max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    assert out.sequences.shape == ref.shape
    assert out.sequences.shape[1] < ids.shape[1] + 12
    np.testing.assert_array_equal(out.sequences, ref)
