"""Group beam search against transformers 4, which transformers 5 no longer ships (outputs recorded once with
transformers 4.55: tests/data/record_beam_tf4.py; models and recordings in tests/data/beam_tf4), and beam sampling
by its distribution.

Group beam search is deterministic: the same sequences, and scores to float32 rounding, on a left-padded batch of
two prompts, GPT-2 and Llama, with EOS ids that end hypotheses early. Beam sampling draws with another generator
than torch (by design), so it is compared by distribution, with chi-square tests at a 1e-4 false-alarm rate and
fixed seeds (a run cannot flake: the outcome is the same every time): the best hypothesis of 1,000 rows of ours
against 1,000 rows of transformers 5 (which still ships beam sampling; 4.x finished candidates in torch's draw
order, 5 sorts them by score first, as we do), and the first step against the exact distribution of drawing
2 * num_beams tokens without replacement, renormalising after each draw. Every sampled hypothesis' score, ours and
transformers', is also recomputed from the model's warped log-probabilities.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import scratch.models
from scratch.generate import GenerationConfig, apply, build_processors, generate
from scratch.nn import log_softmax

DATA = Path(__file__).resolve().parent.parent / "data" / "beam_tf4"
RECORDED = json.loads((DATA / "recorded.json").read_text(encoding="utf-8"))
MASK = np.array(RECORDED["mask"], dtype=np.int64)
# Scores are sums of <= 10 float32 log-probs divided by length ** penalty; transformers' matmuls sum in another order,
# so each log-prob may differ in its last bits: measured <= 2.3e-7 relative (4.6e-5 on a score of -250, penalty -1).
SCORE_RTOL = SCORE_ATOL = 1e-6


@pytest.fixture(scope="module")
def models():
    return {name: scratch.models.load(DATA / name) for name in ("gpt2", "llama", "small")}


def chi_square_critical(dof: int, z: float = 3.719) -> float:
    """Wilson-Hilferty upper quantile of chi-square(dof); z = 3.719 is the normal quantile of a 1e-4 tail."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


# ---------------------------------------------------------------------------------------------------------------
# Group beam search: exact
# ---------------------------------------------------------------------------------------------------------------

GROUP_CASES = [(name, i) for name in RECORDED["group"] for i in range(len(RECORDED["group"][name]["cases"]))]


@pytest.mark.parametrize("name, index", GROUP_CASES, ids=[f"{n}-{i}" for n, i in GROUP_CASES])
def test_group_beam_search_equals_transformers_4(models, name, index):
    case = RECORDED["group"][name]["cases"][index]
    prompts = np.array(RECORDED["group"][name]["prompts"], dtype=np.int64)
    out = generate(models[name], prompts, attention_mask=MASK, do_sample=False, pad_token_id=RECORDED["pad"],
                   max_new_tokens=RECORDED["max_new_tokens"], **case["kwargs"])
    want = np.array(case["sequences"], dtype=np.int64)
    assert out.sequences.shape == want.shape, (out.sequences, want)
    np.testing.assert_array_equal(out.sequences, want)
    assert out.sequences_scores.dtype == np.float32
    np.testing.assert_allclose(out.sequences_scores, case["sequences_scores"], rtol=SCORE_RTOL, atol=SCORE_ATOL)


def test_recorded_group_cases_end_hypotheses_with_eos():
    """The recordings exercise the EOS path: hypotheses that ended early, followed by padding."""
    T, ended = MASK.shape[1], 0
    for name in RECORDED["group"]:
        for case in RECORDED["group"][name]["cases"]:
            eos = case["kwargs"]["eos_token_id"]
            for row in case["sequences"]:
                generated = row[T:]
                ended += eos is not None and eos in generated and generated.index(eos) < len(generated) - 1
    assert ended >= 10


# ---------------------------------------------------------------------------------------------------------------
# Beam sampling: by distribution
# ---------------------------------------------------------------------------------------------------------------

# Beam sampling settings on the 12-token model: one prompt repeated ROWS times in one call (each row draws itself).
SAMPLE_PROMPT = [3, 4]
ROWS = 1000
SAMPLE_CASES = {
    "plain": dict(num_beams=2, num_return_sequences=2, max_new_tokens=2, top_k=0, temperature=1.0),
    "warped": dict(num_beams=2, num_return_sequences=2, max_new_tokens=2, top_k=6, temperature=1.5),
}


def _sampled(models, case: str, rows: int, seed: int, **overrides):
    """Our beam sampling of a setting, `rows` independent rows. Returns (generated (rows, num_return, new) int64,
    scores (rows, num_return))."""
    kw = {**SAMPLE_CASES[case], **overrides}
    prompt = np.array([SAMPLE_PROMPT] * rows, dtype=np.int64)
    out = generate(models["small"], prompt, do_sample=True, pad_token_id=0, seed=seed, **kw)
    n = kw["num_return_sequences"]
    return out.sequences[:, prompt.shape[1]:].reshape(rows, n, -1), out.sequences_scores.reshape(rows, n)


@pytest.fixture(scope="module")
def transformers_sampled():
    """transformers 5's beam sampling of each setting: case -> (generated (ROWS, 2, 2), scores (ROWS, 2))."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(DATA / "small").eval()
    out = {}
    for seed, (case, kw) in enumerate(sorted(SAMPLE_CASES.items())):
        torch.manual_seed(seed)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([SAMPLE_PROMPT] * ROWS), do_sample=True, pad_token_id=0,
                              eos_token_id=None, output_scores=True, return_dict_in_generate=True, **kw)
        generated = ref.sequences[:, len(SAMPLE_PROMPT):].numpy().reshape(ROWS, kw["num_return_sequences"], -1)
        out[case] = generated, ref.sequences_scores.numpy().reshape(ROWS, -1)
    return out


def _pool(counts: np.ndarray, expected: np.ndarray, min_expected: float = 5.0):
    """Cells expected below min_expected pooled into one (counts and expected along the last axis)."""
    big = expected.sum(axis=0) >= min_expected if expected.ndim == 2 else expected >= min_expected
    pooled_counts = np.concatenate([counts[..., big], counts[..., ~big].sum(axis=-1, keepdims=True)], axis=-1)
    pooled_expected = np.concatenate([expected[..., big], expected[..., ~big].sum(axis=-1, keepdims=True)], axis=-1)
    return pooled_counts, pooled_expected


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_beam_sample_best_hypothesis_distributed_as_transformers(models, transformers_sampled, case):
    """Two-sample chi-square (homogeneity) test: the best hypothesis' two generated tokens, 1,000 rows each side."""
    V = models["small"].n_vocab
    theirs = transformers_sampled[case][0][:, 0]                                      # (ROWS, 2)
    ours = _sampled(models, case, ROWS, seed=0)[0][:, 0]
    table = np.stack([np.bincount(x[:, 0] * V + x[:, 1], minlength=V * V) for x in (ours, theirs)])   # (2, V*V)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    observed, expected = _pool(table, expected)
    keep = expected.sum(axis=0) > 0
    observed, expected = observed[:, keep], expected[:, keep]
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = observed.shape[1] - 1
    assert dof >= 5, "too few cells: a weak test"
    assert statistic < chi_square_critical(dof), (statistic, dof)


def _exact_first_step(logp: np.ndarray, draws: int, kept: int) -> dict:
    """{(best, second, ...): probability}: the `kept` best (by log-prob) of `draws` tokens drawn one after another
    without replacement, each from the distribution renormalised over the tokens not yet drawn."""
    p = np.exp(logp - logp.max())
    p /= p.sum()
    order = np.argsort(-logp, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    exact: dict = {}
    for drawn in itertools.permutations(range(p.size), draws):
        probability, left = 1.0, 1.0
        for token in drawn:
            probability *= p[token] / left
            left -= p[token]
        best = tuple(sorted(drawn, key=lambda token: rank[token])[:kept])
        exact[best] = exact.get(best, 0.0) + probability
    return exact


def test_beam_sample_first_step_follows_the_renormalised_distribution(models):
    """One step of beam sampling with num_beams = 2 draws 2 * num_beams = 4 of the V = 12 tokens without replacement
    (renormalising after each draw) and keeps the two best: the returned pairs of 4,000 rows against the exact
    distribution of that process (all 11,880 ordered draws enumerated). Drawing from the un-renormalised remaining
    mass, or with replacement, or the two most probable tokens, all fail it."""
    model = models["small"]
    logp = log_softmax(model(np.array([SAMPLE_PROMPT], dtype=np.int64))[0, -1].astype(np.float64))
    exact = _exact_first_step(logp, draws=4, kept=2)
    rows = 4000
    generated, _ = _sampled(models, "plain", rows, seed=1, max_new_tokens=1)
    pairs = [tuple(row) for row in generated[:, :, 0].tolist()]
    cells = sorted(exact)
    assert set(pairs) <= set(cells), "a pair the process cannot produce"
    counts = np.array([pairs.count(cell) for cell in cells], dtype=np.float64)
    expected = np.array([exact[cell] for cell in cells]) * rows
    observed, expected = _pool(counts, expected)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = observed.size - 1
    assert dof >= 6, "too few cells: a weak test"
    assert statistic < chi_square_critical(dof), (statistic, dof)


def _recomputed_scores(model, case: str, generated: np.ndarray) -> np.ndarray:
    """(N, 2) generated tokens -> (N,) their beam-sampling scores from the model: each step's log-softmax with the
    warpers of the setting applied (transformers' order), summed, divided by length ** length_penalty."""
    prompt, kw = SAMPLE_PROMPT, SAMPLE_CASES[case]
    config = GenerationConfig(do_sample=True, num_beams=kw["num_beams"], top_k=kw["top_k"],
                              temperature=kw["temperature"], pad_token_id=0)
    processors = build_processors(config, prompt_length=len(prompt))
    V = model.n_vocab
    contexts = np.array([prompt + [a] for a in range(V)], dtype=np.int64)           # every first token, (V, T + 1)
    logits = model(contexts)                                                         # (V, T + 1, V)
    first = apply(processors, contexts[:1, :-1], log_softmax(logits[:1, -2]))[0]     # (V,)
    second = apply(processors, contexts, log_softmax(logits[:, -1]))                 # (V, V): row = first token
    total = first[generated[:, 0]] + second[generated[:, 0], generated[:, 1]]
    return total / 2.0 ** config.length_penalty


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_beam_sample_scores_are_the_warped_log_probabilities(models, transformers_sampled, case):
    """transformers' beam sampling scores a hypothesis by the log-softmax the warpers (temperature, top-k with at
    least 2 tokens kept) then act on; its hypotheses get the same scores from our model and warpers, and so do the
    hypotheses our beam sampling returns."""
    generated, scores = transformers_sampled[case]
    np.testing.assert_allclose(_recomputed_scores(models["small"], case, generated[:100].reshape(-1, 2)),
                               scores[:100].reshape(-1), rtol=SCORE_RTOL, atol=SCORE_ATOL)
    generated, scores = _sampled(models, case, 100, seed=2)
    np.testing.assert_allclose(_recomputed_scores(models["small"], case, generated.reshape(-1, 2)),
                               scores.reshape(-1), rtol=SCORE_RTOL, atol=SCORE_ATOL)
