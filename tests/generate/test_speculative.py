"""Speculative decoding: greedy returns exactly the target's greedy output (ours and transformers' assisted
generation); sampling keeps the target's distribution -- the acceptance rule checked by chi-square on many rounds
at once, and the first two generated tokens of a tiny model over many seeds against the target's exact joint
distribution. Each chi-square test uses a 1e-4 false-alarm rate (fixed seeds, so the outcome is deterministic)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import transformers

import backends
import scratch.models
from scratch.generate import GenerationConfig, generate
from scratch.generate.prompt import prepare_prompt
from scratch.generate.speculative import speculative_generate, verify_drafts, verify_drafts_greedy
from scratch.nn import softmax

PROMPTS = np.array([[5, 6, 7, 8, 9], [1, 1, 11, 12, 13]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=np.int64)
PAD = 1
GPT2_KW = dict(vocab_size=97, n_positions=64, n_layer=2, n_head=4, initializer_range=0.2, bos_token_id=0,
               eos_token_id=0)


def chi_square_critical(dof: int, z: float = 3.719) -> float:
    """Wilson-Hilferty upper quantile of chi-square(dof); z = 3.719 is the normal quantile of a 1e-4 tail."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expected below min_expected are pooled into one."""
    total = counts.sum()
    expected = probs * total
    big = expected >= min_expected
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    keep = expected > 0
    assert observed[~keep].sum() == 0, "a token of probability 0 was produced"
    observed, expected = observed[keep], expected[keep]
    return float(((observed - expected) ** 2 / expected).sum()), len(observed) - 1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Target GPT-2; a draft that is the target with noise on its weights (agrees often, not always); an unrelated
    draft (agrees rarely); a Llama target of the same vocabulary (a draft may come from another family)."""
    torch.manual_seed(0)
    target = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, **GPT2_KW)).eval()
    near = copy.deepcopy(target)
    with torch.no_grad():
        for p in near.parameters():
            p.add_(0.03 * torch.randn_like(p))
    other = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, **GPT2_KW)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)).eval()
    folders = {}
    for name, hf in (("target", target), ("near", near), ("other", other), ("llama", llama)):
        folders[name] = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folders[name])
    return {"target": target, "near": near, "other": other, "llama": llama}, folders


def _config(**kw):
    return GenerationConfig(**{"pad_token_id": PAD, **kw})


def test_greedy_is_the_target_greedy_output(models):
    hf, folders = models
    target = scratch.models.load(folders["target"])
    eos = 37   # a token the target's greedy continuation of row 0 produces: that row stops early
    for name in ("near", "other", "target", "llama"):
        draft = scratch.models.load(folders[name])
        stats = {}
        config = _config(max_new_tokens=16, eos_token_id=eos)
        prompt = prepare_prompt(target, PROMPTS, config, MASK)
        out = speculative_generate(target, draft, prompt, config, stats=stats)
        plain = generate(target, PROMPTS, attention_mask=MASK, config=config)
        np.testing.assert_array_equal(out.sequences, plain.sequences, err_msg=f"draft {name}")
        if name == "target":
            assert stats["accepted"] == stats["drafted"] > 0
        if name == "near":
            assert 0 < stats["accepted"] < stats["drafted"]   # both paths taken: accepted and rejected drafts
    assert (plain.sequences[0, PROMPTS.shape[1]:] == eos).any()


def test_greedy_with_context_processors_is_the_target_greedy_output(models):
    """Processors that read the context see, at draft position i, the tokens before it (drafts included)."""
    _, folders = models
    target, near = scratch.models.load(folders["target"]), scratch.models.load(folders["near"])
    kw = dict(max_new_tokens=16, pad_token_id=PAD, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3,
              eos_token_id=37)
    out = generate(target, PROMPTS[:1], draft_model=near, **kw)
    np.testing.assert_array_equal(out.sequences, generate(target, PROMPTS[:1], **kw).sequences)


def test_greedy_equals_transformers_assisted_generation(models):
    hf, folders = models
    target, near = scratch.models.load(folders["target"]), scratch.models.load(folders["near"])
    ids = PROMPTS[:1]
    with torch.no_grad():
        ref = hf["target"].generate(torch.tensor(ids), assistant_model=hf["near"], do_sample=False,
                                    max_new_tokens=20, pad_token_id=PAD, eos_token_id=None).numpy()
    out = generate(target, ids, draft_model=near, max_new_tokens=20, pad_token_id=PAD)
    np.testing.assert_array_equal(out.sequences, ref)


def test_sampling_with_the_target_as_draft_accepts_everything(models):
    """p == q: every draft stands (u * q < p for u < 1), whatever the seed."""
    _, folders = models
    target = scratch.models.load(folders["target"])
    stats = {}
    config = _config(max_new_tokens=12, do_sample=True, top_k=0, seed=5)
    speculative_generate(target, target, prepare_prompt(target, PROMPTS, config, MASK), config,
                         backends.rng(5), stats=stats)
    assert stats["accepted"] == stats["drafted"] > 0


def test_same_seed_same_tokens_on_every_backend(models, backend):
    _, folders = models
    kw = dict(draft_model=None, max_new_tokens=10, do_sample=True, top_k=20, pad_token_id=PAD, seed=11)
    outs = []
    for name in (backend.name, "numpy"):
        kw["draft_model"] = scratch.models.load(folders["near"], backend=name)
        outs.append(generate(scratch.models.load(folders["target"], backend=name), PROMPTS, attention_mask=MASK,
                             **kw).sequences)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_acceptance_rule_keeps_the_target_distribution(backend):
    """20,000 independent rounds with fixed p (k+1 = 3 rows) and q (2 rows), drafts drawn from q: the first emitted
    token follows p_1, and, after an accepted first draft, the second follows p_2."""
    rng = np.random.default_rng(0)
    V, k, N = 6, 2, 20_000
    p = rng.dirichlet(np.full(V, 0.7), size=k + 1).astype(np.float32)
    q = rng.dirichlet(np.full(V, 0.7), size=k).astype(np.float32)
    p[0, 3] = 0.0
    p[0] /= p[0].sum()   # a token the target never emits, which the draft proposes
    drafts = np.stack([rng.choice(V, size=N, p=q[i] / q[i].sum()) for i in range(k)], axis=1)
    xp = backend.xp
    accepted, token = verify_drafts(
        xp.broadcast_to(backend.asarray(p), (N, k + 1, V)), xp.broadcast_to(backend.asarray(q), (N, k, V)),
        backend.asarray(drafts, dtype="int64"), backend.asarray(rng.random((N, k)), dtype="float32"),
        backend.asarray(rng.random(N), dtype="float32"))
    accepted, token = backend.to_numpy(accepted), backend.to_numpy(token)
    assert accepted.dtype == np.int64 and token.dtype == np.int64
    first = np.where(accepted >= 1, drafts[:, 0], token)
    statistic, dof = chi_square(np.bincount(first, minlength=V), p[0].astype(np.float64))
    assert statistic < chi_square_critical(dof), (statistic, dof)
    went_on = accepted >= 1
    second = np.where(accepted[went_on] >= 2, drafts[went_on, 1], token[went_on])
    statistic, dof = chi_square(np.bincount(second, minlength=V), p[1].astype(np.float64))
    assert statistic < chi_square_critical(dof), (statistic, dof)
    assert 0 < (accepted == 0).sum() and 0 < (accepted == k).sum()   # rejections and bonus tokens both happen


def test_greedy_rule():
    target = np.array([[4, 2, 7], [4, 9, 1], [3, 3, 3]], dtype=np.int64)
    drafts = np.array([[4, 2], [4, 2], [5, 3]], dtype=np.int64)
    accepted, token = verify_drafts_greedy(target, drafts)
    assert accepted.tolist() == [2, 1, 0] and token.tolist() == [7, 9, 3]


def test_first_two_tokens_follow_the_target_distribution():
    """End to end on a 12-token vocabulary: 3,000 seeds of speculative sampling (draft = another random model,
    k = 2 drafts, 3 new tokens) against the target's exact joint distribution of the first two generated tokens
    (computed with V + 1 forwards)."""
    kw = dict(vocab_size=12, n_positions=16, n_layer=1, n_head=2, initializer_range=0.6)
    target = scratch.models.from_config(scratch.models.GPT2Config.from_hf(dict(n_embd=16, **kw)), seed=1)
    draft = scratch.models.from_config(scratch.models.GPT2Config.from_hf(dict(n_embd=8, **kw)), seed=2)
    prompt_ids = np.array([[3, 4]], dtype=np.int64)
    V = 12
    first = np.asarray(softmax(target(prompt_ids)[:, -1, :]))[0]
    joint = np.zeros((V, V))
    for a in range(V):
        after = np.asarray(softmax(target(np.array([[3, 4, a]]))[:, -1, :]))[0]
        joint[a] = first[a] * after
    config = GenerationConfig(max_new_tokens=3, do_sample=True, top_k=0, pad_token_id=0)
    prompt = prepare_prompt(target, prompt_ids, config)
    counts = np.zeros(V * V, dtype=np.int64)
    accepted = drafted = 0
    for seed in range(3000):
        stats = {}
        out = speculative_generate(target, draft, prompt, config, backends.rng(seed), num_draft_tokens=2,
                                   stats=stats)
        a, b = out.sequences[0, 2:4]
        counts[a * V + b] += 1
        accepted, drafted = accepted + stats["accepted"], drafted + stats["drafted"]
    statistic, dof = chi_square(counts, joint.ravel() / joint.sum())
    assert statistic < chi_square_critical(dof), (statistic, dof)
    assert 0 < accepted < drafted   # the draft differs from the target: both branches of the rule ran


def test_bad_input_names_the_parameter(models):
    _, folders = models
    target = scratch.models.load(folders["target"])
    small = scratch.models.from_config(scratch.models.GPT2Config.from_hf(dict(vocab_size=50, n_positions=64,
                                                                             n_embd=16, n_layer=1, n_head=2)))
    with pytest.raises(ValueError, match="draft_model"):
        generate(target, PROMPTS, draft_model=small, max_new_tokens=3)
    config = _config(max_new_tokens=3)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_generate(target, target, prepare_prompt(target, PROMPTS, config, MASK), config,
                             num_draft_tokens=0)
    with pytest.raises(ValueError, match="beam"):
        generate(target, PROMPTS, draft_model=target, num_beams=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="num_beams"):
        speculative_generate(target, target, prepare_prompt(target, PROMPTS, config, MASK),
                             config.replace(num_beams=2))
