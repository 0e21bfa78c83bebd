"""Contrastive search. transformers 5 moved it out of its core (to the hub), so it is checked against a plain oracle
written from the paper's formula -- every hidden state recomputed without a cache, one candidate at a time -- on
tiny GPT-2 and Llama models with a left-padded batch; alpha = 0 must be greedy decoding; the hidden states the
search reads must equal transformers' last hidden states."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import scratch.models
from scratch.generate import GenerationConfig, generate
from scratch.generate.contrastive import contrastive_search, degeneration_penalty, with_hidden_states
from scratch.generate.prompt import prepare_prompt
from scratch.nn import softmax

PROMPTS = np.array([[5, 6, 7, 8, 9, 10], [1, 1, 1, 11, 12, 13]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]], dtype=np.int64)
PAD = 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=89, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)).eval()
    out = {}
    for name, hf in (("gpt2", gpt2), ("llama", llama)):
        folder = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folder)
        out[name] = (hf, folder)
    return out


def oracle(model, row: list[int], alpha: float, k: int, max_new: int) -> list[int]:
    """Su et al.'s rule, literally: for each candidate, run the whole sequence plus that candidate again."""
    forward = with_hidden_states(model)
    tokens = list(row)
    for _ in range(max_new):
        hidden, logits = forward(np.array([tokens]))
        probs = np.asarray(softmax(logits[:, -1, :]))[0]
        candidates = np.argsort(-probs, kind="stable")[:k]
        best, best_score = None, -np.inf
        for v in candidates:
            h, _ = forward(np.array([tokens + [int(v)]]))
            h = np.asarray(h)[0]
            context, new = h[:-1], h[-1]
            cosine = context @ new / (np.linalg.norm(context, axis=1) * np.linalg.norm(new))
            score = (1 - alpha) * probs[v] - alpha * cosine.max()
            if score > best_score:
                best, best_score = int(v), score
        tokens.append(best)
    return tokens[len(row):]


@pytest.mark.parametrize("family, alpha, k", [("gpt2", 0.6, 4), ("gpt2", 1.0, 3), ("llama", 0.5, 5)])
def test_contrastive_search_equals_the_uncached_oracle(tiny, family, alpha, k):
    _, folder = tiny[family]
    model = scratch.models.load(folder)
    max_new = 8
    out = generate(model, PROMPTS, attention_mask=MASK, penalty_alpha=alpha, top_k=k, max_new_tokens=max_new,
                   pad_token_id=PAD)
    assert out.sequences.shape == (2, PROMPTS.shape[1] + max_new) and out.sequences.dtype == np.int64
    for b in range(2):
        row = PROMPTS[b, MASK[b].astype(bool)].tolist()
        assert out.sequences[b, PROMPTS.shape[1]:].tolist() == oracle(model, row, alpha, k, max_new)


def test_alpha_zero_is_greedy(tiny, backend):
    _, folder = tiny["gpt2"]
    model = scratch.models.load(folder, backend=backend)
    config = GenerationConfig(penalty_alpha=0.0, top_k=4, max_new_tokens=10, pad_token_id=PAD)
    out = contrastive_search(model, prepare_prompt(model, PROMPTS, config, MASK), config)
    greedy = generate(model, PROMPTS, attention_mask=MASK, max_new_tokens=10, pad_token_id=PAD)
    np.testing.assert_array_equal(out.sequences, greedy.sequences)


def test_same_tokens_on_every_backend_and_eos_pads(tiny, backend):
    _, folder = tiny["gpt2"]
    kw = dict(penalty_alpha=0.6, top_k=4, max_new_tokens=10, pad_token_id=PAD)
    ref = generate(scratch.models.load(folder), PROMPTS, attention_mask=MASK, **kw).sequences
    out = generate(scratch.models.load(folder, backend=backend), PROMPTS, attention_mask=MASK, **kw).sequences
    np.testing.assert_array_equal(out, ref)
    eos = int(ref[0, PROMPTS.shape[1] + 2])   # row 0's third new token ends row 0 there
    ended = generate(scratch.models.load(folder, backend=backend), PROMPTS, attention_mask=MASK, eos_token_id=eos,
                     **kw).sequences
    T = PROMPTS.shape[1]
    first = T + int(np.argmax(ref[0, T:] == eos))
    np.testing.assert_array_equal(ended[0, :first + 1], ref[0, :first + 1])
    assert (ended[0, first + 1:] == PAD).all()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hidden_states_equal_transformers_last_hidden_state(tiny, family):
    hf, folder = tiny[family]
    model = scratch.models.load(folder)
    hidden, logits = with_hidden_states(model)(PROMPTS[:1])
    with torch.no_grad():
        ref = hf(torch.tensor(PROMPTS[:1]), output_hidden_states=True)
    # float32, matmuls summed in another order: measured <= 1.7e-6 on values up to ~3
    np.testing.assert_allclose(np.asarray(hidden), ref.hidden_states[-1].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(model(PROMPTS[:1])))   # the model's own matmul


def test_degeneration_penalty_ignores_padding(backend):
    context = backend.asarray(np.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]], dtype=np.float32))
    candidate = backend.asarray(np.array([[0.0, 5.0]], dtype=np.float32))
    full = backend.to_numpy(degeneration_penalty(context, candidate, backend.asarray(np.array([[True] * 3]))))
    padded = backend.to_numpy(degeneration_penalty(context, candidate,
                                                   backend.asarray(np.array([[True, False, True]]))))
    np.testing.assert_allclose(full, [1.0], rtol=1e-6)
    np.testing.assert_allclose(padded, [np.sqrt(0.5)], rtol=1e-6)
    assert padded.dtype == np.float32


def test_bad_settings(tiny):
    _, folder = tiny["gpt2"]
    model = scratch.models.load(folder)
    config = GenerationConfig(penalty_alpha=0.5, top_k=0, max_new_tokens=3)
    with pytest.raises(ValueError, match="top_k"):
        contrastive_search(model, prepare_prompt(model, PROMPTS, config, MASK), config)
    with pytest.raises(ValueError, match="penalty_alpha"):
        GenerationConfig(penalty_alpha=1.5)
