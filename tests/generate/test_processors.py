"""Every processor and warper against the transformers class that defines it, on hypothesis-made logits.

The logits are float32, (B <= 3, V <= 50), drawn either from a small set of values (so ties and -inf entries are
common) or from the whole float range (with some -inf). Each comparison asserts: our output is float32 on the
backend under test, -inf sits at exactly the positions transformers puts it, and every other score is equal to
float32 tolerance. Two kinds of disagreement are accepted, each only where it is explained (see `assert_same`):
which of several tied tokens survives (torch.sort is not stable for rows longer than 16, torch.topk promises no
order), and a token whose keep/remove decision lies within float32 rounding of the threshold (torch's exp differs
from NumPy's in the last bit, so a cumulative probability of 0.9 against top_p=0.1 can fall either way).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers.generation import logits_process as lp

from scratch.generate import (
    Epsilon,
    Eta,
    FrequencyPresencePenalty,
    GenerationConfig,
    MinLength,
    MinNewTokens,
    MinP,
    NoBadWords,
    NoRepeatNGram,
    RepetitionPenalty,
    SequenceBias,
    SuppressTokens,
    SuppressTokensAtBegin,
    Temperature,
    TopK,
    TopP,
    Typical,
    apply,
    build_processors,
    token_counts,
)
from scratch.generate.processors import cumulative_probs
from scratch.nn import log_softmax, softmax



def fixture_ok(**overrides):
    """Hypothesis settings for a test that takes the `backend` fixture (stateless, so sharing it across
    examples is safe); the rest comes from the active profile."""
    return settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], **overrides)


FIXTURE_OK = fixture_ok()
NEG_INF = -math.inf
TIE_VALUES = [NEG_INF, -3.0, -1.0, 0.0, 0.5, 1.0, 2.0]


@st.composite
def logits_and_ids(draw, max_vocab=50, max_time=12, out_of_vocab=False, min_vocab=2):
    """(scores (B, V) float32 with >= 1 finite entry per row, input_ids (B, T) int64)."""
    batch = draw(st.integers(1, 3))
    vocab = draw(st.integers(min_vocab, max_vocab))
    time = draw(st.integers(0, max_time))
    if draw(st.booleans()):
        elements = st.sampled_from(TIE_VALUES)
    else:
        elements = st.one_of(st.floats(-30, 30, width=32), st.floats(-30, 30, width=32), st.just(NEG_INF))
    scores = draw(hnp.arrays(np.float32, (batch, vocab), elements=elements))
    for row in range(batch):  # an all--inf row has no distribution (softmax is nan): give it one finite entry
        if not np.isfinite(scores[row]).any():
            scores[row, draw(st.integers(0, vocab - 1))] = 0.0
    high = vocab + 1 if out_of_vocab else vocab - 1
    # Small vocabularies of ids make repeats (and so n-gram matches) common.
    id_pool = draw(st.integers(0, high))
    ids = draw(hnp.arrays(np.int64, (batch, time), elements=st.integers(0, id_pool)))
    return scores, ids


def ours(processor, backend, scores, ids):
    out = processor(backend.asarray(ids, dtype="int64"), backend.asarray(scores, dtype="float32"))
    assert out.dtype == backend.xp.float32
    assert backends_of(out) == backend.name
    return backend.to_numpy(out)


def backends_of(array):
    import backends
    return backends.of(array).name


def reference(processor, scores, ids):
    out = processor(torch.from_numpy(ids.copy()), torch.from_numpy(scores.copy()))
    assert out.dtype == torch.float32
    return out.numpy()


TOL = 1e-5  # how close (in probability, or in nats for typical's key) counts as "within rounding error"


def assert_same(got, want, tie_key=None, near_boundary=None):
    """-inf at the same places as transformers and equal finite values elsewhere.

    A token on which the two disagree is accepted only when the disagreement is explained, and then only by:
    - a tie: `tie_key` (B, V) is the quantity transformers sorts by, and the token is swapped with a token of the
      same key (to TOL) that went the other way -- transformers breaks such ties with an unstable sort (rows over
      16 entries, torch.topk) or by the last bit of torch's exp, which NumPy's exp does not reproduce;
    - a threshold: `near_boundary(row)` (V,) marks tokens whose keep/remove decision, computed in float64, lies
      within TOL of the threshold (a float32 rounding decides it), or that tie with such a token.
    """
    assert got.shape == want.shape and got.dtype == np.float32
    for row in range(got.shape[0]):
        g, w = got[row], want[row]
        diff = np.isneginf(g) != np.isneginf(w)
        if diff.any():
            explained = np.zeros_like(diff)
            close = None
            if tie_key is not None:
                key = tie_key[row].astype(np.float64)
                close = np.isclose(key[:, None], key[None, :], rtol=TOL, atol=TOL) | (key[:, None] == key[None, :])
                ours_only = ~np.isneginf(g) & np.isneginf(w)
                theirs_only = np.isneginf(g) & ~np.isneginf(w)
                explained |= ours_only & (close & theirs_only[None, :]).any(axis=1)
                explained |= theirs_only & (close & ours_only[None, :]).any(axis=1)
            if near_boundary is not None:
                near = near_boundary(row)
                explained |= near
                if close is not None:
                    explained |= (close & near[None, :]).any(axis=1)
            assert explained[diff].all(), (
                f"row {row}: -inf at {np.flatnonzero(np.isneginf(g))}, transformers at "
                f"{np.flatnonzero(np.isneginf(w))} (unexplained: {np.flatnonzero(diff & ~explained)})\n"
                f"ours {g}\ntransformers {w}")
        finite = ~np.isneginf(g) & ~np.isneginf(w)
        np.testing.assert_allclose(g[finite], w[finite], rtol=2e-6, atol=1e-6, err_msg=f"row {row}")


def compare(backend, ours_processor, ref_processor, scores, ids, tie_key=None, near_boundary=None):
    assert_same(ours(ours_processor, backend, scores, ids), reference(ref_processor, scores, ids), tie_key,
                near_boundary)


def probs64(scores):
    """Exact-ish probabilities: softmax in float64."""
    x = scores.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def torch_probs(scores):
    return torch.softmax(torch.from_numpy(scores), dim=-1).numpy()


def torch_typical_gap(scores):
    """|-log p - H| computed as TypicalLogitsWarper computes it: the key it sorts by."""
    logp = torch.log_softmax(torch.from_numpy(scores), dim=-1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
    return torch.abs(-logp - entropy).numpy()


def _to_tokens(near_sorted, order):
    near = np.zeros_like(near_sorted)
    np.put_along_axis(near, order, near_sorted, axis=-1)
    return near


def top_p_near(scores, top_p):
    """Tokens at whose sorted place the cumulative probability is within TOL of 1 - top_p AND torch's float32
    cumulative differs from ours there: only then may rounding decide differently (if both computed the same
    bits, the decision must agree -- that is how `<=` is told from `<`)."""
    order = np.argsort(scores, axis=-1, kind="stable")
    ours_cum = cumulative_probs(softmax(np.sort(scores, axis=-1)))
    torch_cum = torch.sort(torch.from_numpy(scores)).values.softmax(-1).cumsum(-1).numpy()
    exact_cum = np.cumsum(np.sort(probs64(scores), axis=-1), axis=-1)
    near_sorted = (np.abs(exact_cum - (1.0 - top_p)) < TOL) & (ours_cum != torch_cum)
    near = _to_tokens(near_sorted, order)
    return lambda row: near[row]


def typical_near(scores, mass):
    """As top_p_near, for the cumulative probability in order of |-log p - H| (each side in its own order)."""
    logp = log_softmax(scores)
    with np.errstate(invalid="ignore"):  # -inf * 0 is nan, which nansum drops (as in TypicalLogitsWarper)
        entropy = -np.nansum(logp * np.exp(logp), axis=-1, keepdims=True)
    ours_gap = np.abs(-logp - entropy)
    ours_order = np.argsort(ours_gap, axis=-1, kind="stable")
    torch_order = np.argsort(torch_typical_gap(scores), axis=-1, kind="stable")
    ours_cum = cumulative_probs(softmax(np.take_along_axis(scores, ours_order, axis=-1)))
    torch_cum = torch.from_numpy(np.take_along_axis(scores, torch_order, axis=-1)).softmax(-1).cumsum(-1).numpy()
    exact_cum = np.cumsum(np.take_along_axis(probs64(scores), torch_order, axis=-1), axis=-1)
    near_sorted = (np.abs(exact_cum - mass) < TOL) & (ours_cum != torch_cum)
    near = _to_tokens(near_sorted, torch_order)
    return lambda row: near[row]


def probability_near(scores, exact_bar, ours_bar=None, torch_bar=None):
    """Tokens whose float64 probability is within TOL (relative) of the bar AND whose float32 probability (or
    the float32 bar) differs between torch and us."""
    exact_p, ours_p, torch_p = probs64(scores), softmax(scores), torch_probs(scores)
    differs = ours_p != torch_p
    if ours_bar is not None:
        differs = differs | (ours_bar != torch_bar)
    near = (np.abs(exact_p - exact_bar) <= TOL * np.maximum(exact_bar, 1e-3)) & differs
    return lambda row: near[row]


def min_p_near(scores, min_p):
    ours_bar = np.float32(min_p) * softmax(scores).max(axis=-1, keepdims=True)
    torch_bar = (min_p * torch.softmax(torch.from_numpy(scores), -1).amax(-1, keepdim=True)).numpy()
    return probability_near(scores, min_p * probs64(scores).max(axis=-1, keepdims=True), ours_bar, torch_bar)


def eta_near(scores, epsilon):
    exact_p = probs64(scores)
    exact_entropy = -(exact_p * np.log(np.where(exact_p > 0, exact_p, 1.0))).sum(axis=-1, keepdims=True)
    exact_bar = np.minimum(epsilon, np.sqrt(epsilon) * np.exp(-exact_entropy))
    eps32 = np.float32(epsilon)
    logp = np.maximum(log_softmax(scores), np.finfo(np.float32).min)
    ours_bar = np.minimum(eps32, np.sqrt(eps32) * np.exp(np.sum(logp * softmax(scores), axis=-1, keepdims=True)))
    t = torch.from_numpy(scores)
    entropy = torch.distributions.Categorical(logits=t).entropy()[..., None]
    e = torch.tensor(epsilon)
    torch_bar = torch.min(e, torch.sqrt(e) * torch.exp(-entropy)).numpy()
    return probability_near(scores, exact_bar, ours_bar, torch_bar)


# ----- helpers ------------------------------------------------------------------------------------------------

@FIXTURE_OK
@given(case=logits_and_ids(out_of_vocab=True))
def test_token_counts_matches_bincount(backend, case):
    scores, ids = case
    vocab = scores.shape[1]
    got = backend.to_numpy(token_counts(backend.asarray(ids, dtype="int64"), vocab))
    want = np.stack([np.bincount(row[row < vocab], minlength=vocab) for row in ids]) if ids.shape[1] else \
        np.zeros((ids.shape[0], vocab), np.int64)
    np.testing.assert_array_equal(got, want)


# ----- processors ---------------------------------------------------------------------------------------------

@FIXTURE_OK
@given(case=logits_and_ids(out_of_vocab=True), penalty=st.sampled_from([0.5, 1.0, 1.3, 2.0]))
def test_repetition_penalty(backend, case, penalty):
    scores, ids = case
    compare(backend, RepetitionPenalty(penalty), lp.RepetitionPenaltyLogitsProcessor(penalty), scores, ids)


@FIXTURE_OK
@given(case=logits_and_ids(out_of_vocab=True), penalty=st.sampled_from([0.5, 1.3]), data=st.data())
def test_repetition_penalty_ignoring_a_prefix(backend, case, penalty, data):
    """transformers' generate passes each row's left-padding length, so pad tokens are not penalised."""
    scores, ids = case
    batch, length = ids.shape
    per_row = data.draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    compare(backend, RepetitionPenalty(penalty, prompt_ignore_length=per_row),
            lp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=torch.tensor(per_row)), scores, ids)
    same = data.draw(st.integers(0, length))
    compare(backend, RepetitionPenalty(penalty, prompt_ignore_length=same),
            lp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=same), scores, ids)


def test_repetition_penalty_direction(backend):
    scores = np.array([[2.0, -2.0, 2.0, -2.0]], np.float32)
    ids = np.array([[0, 1, 1]], np.int64)
    got = ours(RepetitionPenalty(2.0), backend, scores, ids)
    np.testing.assert_array_equal(got, [[1.0, -4.0, 2.0, -2.0]])  # positive halved, negative doubled: both drop


@FIXTURE_OK
@given(case=logits_and_ids(out_of_vocab=True), frequency=st.sampled_from([0.0, 0.5, -1.0, 2.0]),
       presence=st.sampled_from([0.0, 0.7, -0.3]), data=st.data())
def test_frequency_presence_penalty_matches_formula(backend, case, frequency, presence, data):
    scores, ids = case
    prompt = data.draw(st.integers(0, ids.shape[1]))
    got = ours(FrequencyPresencePenalty(frequency, presence, prompt), backend, scores, ids)
    vocab = scores.shape[1]
    want = scores.copy()
    for row in range(scores.shape[0]):
        generated = [t for t in ids[row, prompt:] if t < vocab]
        counts = np.bincount(np.array(generated, np.int64), minlength=vocab).astype(np.float32)
        want[row] = want[row] - np.float32(frequency) * counts
        want[row] = want[row] - np.float32(presence) * (counts > 0).astype(np.float32)
    assert_same(got, want)


@FIXTURE_OK
@given(case=logits_and_ids(out_of_vocab=True, max_time=16), n=st.integers(1, 4))
def test_no_repeat_ngram(backend, case, n):
    scores, ids = case
    compare(backend, NoRepeatNGram(n), lp.NoRepeatNGramLogitsProcessor(n), scores, ids)


def test_no_repeat_ngram_example(backend):
    ids = np.array([[5, 6, 7, 5, 6]], np.int64)           # "5 6" was followed by 7: ban 7 now
    got = ours(NoRepeatNGram(3), backend, np.zeros((1, 9), np.float32), ids)
    assert np.flatnonzero(np.isneginf(got[0])).tolist() == [7]


@FIXTURE_OK
@given(case=logits_and_ids(), min_length=st.integers(0, 14),
       eos=st.one_of(st.integers(0, 3), st.lists(st.integers(0, 60), min_size=1, max_size=3)))
def test_min_length(backend, case, min_length, eos):
    scores, ids = case
    compare(backend, MinLength(min_length, eos), lp.MinLengthLogitsProcessor(min_length, eos), scores, ids)


@FIXTURE_OK
@given(case=logits_and_ids(), min_new=st.integers(0, 8), data=st.data(),
       eos=st.one_of(st.integers(0, 3), st.lists(st.integers(0, 60), min_size=1, max_size=3)))
def test_min_new_tokens(backend, case, min_new, data, eos):
    scores, ids = case
    prompt = data.draw(st.integers(0, ids.shape[1]))
    compare(backend, MinNewTokens(prompt, min_new, eos),
            lp.MinNewTokensLengthLogitsProcessor(prompt, min_new, eos), scores, ids)


@FIXTURE_OK
@given(case=logits_and_ids(), tokens=st.lists(st.integers(0, 60), max_size=6))
def test_suppress_tokens(backend, case, tokens):
    scores, ids = case
    compare(backend, SuppressTokens(tokens), lp.SuppressTokensLogitsProcessor(tokens), scores, ids)


@FIXTURE_OK
@given(case=logits_and_ids(max_time=4), tokens=st.lists(st.integers(0, 60), max_size=6), begin=st.integers(0, 4))
def test_suppress_tokens_at_begin(backend, case, tokens, begin):
    scores, ids = case
    compare(backend, SuppressTokensAtBegin(tokens, begin), lp.SuppressTokensAtBeginLogitsProcessor(tokens, begin),
            scores, ids)


@st.composite
def token_sequences(draw, vocab, max_count=5):
    pool = draw(st.integers(0, vocab - 1))  # a small pool makes prefix matches likely
    return draw(st.lists(st.lists(st.integers(0, pool), min_size=1, max_size=3), min_size=1, max_size=max_count))


@FIXTURE_OK
@given(case=logits_and_ids(), data=st.data())
def test_sequence_bias(backend, case, data):
    scores, ids = case
    sequences = data.draw(token_sequences(scores.shape[1]))
    biases = data.draw(st.lists(st.sampled_from([-2.5, -1.0, 0.5, 3.0, NEG_INF]), min_size=len(sequences),
                                max_size=len(sequences)))
    pairs = [[s, b] for s, b in zip(sequences, biases)]
    compare(backend, SequenceBias(pairs), lp.SequenceBiasLogitsProcessor(pairs), scores, ids)


@FIXTURE_OK
@given(case=logits_and_ids(), data=st.data(), eos=st.one_of(st.none(), st.integers(0, 3)))
def test_no_bad_words(backend, case, data, eos):
    scores, ids = case
    bad = data.draw(token_sequences(scores.shape[1]))
    if all(s == [eos] for s in bad):  # nothing left to ban: transformers raises, ours is the identity
        np.testing.assert_array_equal(ours(NoBadWords(bad, eos), backend, scores, ids), scores)
        return
    compare(backend, NoBadWords(bad, eos), lp.NoBadWordsLogitsProcessor(bad, eos), scores, ids)


def test_bad_words_multi_token_only_after_its_prefix(backend):
    scores = np.zeros((2, 6), np.float32)
    ids = np.array([[1, 2], [2, 1]], np.int64)
    got = ours(NoBadWords([[1, 2, 3], [5]]), backend, scores, ids)
    assert np.flatnonzero(np.isneginf(got[0])).tolist() == [3, 5]   # row 0 ends with 1, 2: 3 is banned
    assert np.flatnonzero(np.isneginf(got[1])).tolist() == [5]


def test_sequence_bias_rejects_tokens_outside_the_vocabulary(backend):
    with pytest.raises(ValueError, match=r"vocabulary has 4 tokens.*\[7\]"):
        ours(SequenceBias({(7,): 1.0}), backend, np.zeros((1, 4), np.float32), np.zeros((1, 1), np.int64))


# ----- warpers ------------------------------------------------------------------------------------------------

@FIXTURE_OK
@given(case=logits_and_ids(max_time=0), temperature=st.sampled_from([0.3, 0.7, 1.0, 1.5, 3.0]))
def test_temperature(backend, case, temperature):
    scores, ids = case
    compare(backend, Temperature(temperature), lp.TemperatureLogitsWarper(temperature), scores, ids)


@FIXTURE_OK
@given(case=logits_and_ids(max_time=0), top_k=st.integers(1, 60), keep=st.integers(1, 3))
def test_top_k(backend, case, top_k, keep):
    scores, ids = case
    compare(backend, TopK(top_k, keep), lp.TopKLogitsWarper(top_k, min_tokens_to_keep=keep), scores, ids)


def test_top_k_keeps_ties_at_the_boundary(backend):
    scores = np.array([[3.0, 2.0, 2.0, 1.0]], np.float32)
    want = reference(lp.TopKLogitsWarper(2), scores, np.zeros((1, 0), np.int64))
    got = ours(TopK(2), backend, scores, np.zeros((1, 0), np.int64))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, [[3.0, 2.0, 2.0, NEG_INF]])   # three survive k=2


EXACT_THRESHOLD_CASES = [
    # (warper, transformers warper, V equal logits): the probabilities are exact binary fractions, so both sides
    # compute the same bits and land exactly on the threshold -- this is where `<` and `<=` differ.
    (TopP(0.5), lp.TopPLogitsWarper(0.5), 4),          # cumulative 0.5 <= 1 - 0.5: that token goes
    (TopP(0.25), lp.TopPLogitsWarper(0.25), 20),       # 15 * 0.05 = 0.75 (float64-accumulated, as torch on CPU)
    (MinP(1.0), lp.MinPLogitsWarper(1.0), 5),          # p == 1.0 * max(p): not below the bar, kept
    (Epsilon(0.25), lp.EpsilonLogitsWarper(0.25), 4),  # p == epsilon: not below, kept
    (Typical(0.5), lp.TypicalLogitsWarper(0.5), 4),    # every |-log p - H| is 0: all tie with the crossing token
]


@pytest.mark.parametrize("case", range(len(EXACT_THRESHOLD_CASES)))
def test_exact_threshold_equality(backend, case):
    warper, reference_warper, vocab = EXACT_THRESHOLD_CASES[case]
    scores = np.zeros((1, vocab), np.float32)
    ids = np.zeros((1, 0), np.int64)
    got, want = ours(warper, backend, scores, ids), reference(reference_warper, scores, ids)
    assert np.isneginf(got).sum() == np.isneginf(want).sum()          # how many go: the threshold decision
    if vocab <= 16:                                                    # which go: torch.sort is stable here
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))


def dyadic_logits(halvings, positions):
    """Logits 0, -ln 2, -2 ln 2, -4 ln 2 (halvings 0, 1, 2, 4: each an exact float32 multiple of float32's ln 2), the
    i-th at token positions[i]: exp of each is exactly 1, 1/2, 1/4, 1/16 (ln 2's rounding is far below half an ulp of
    the result), so with a power-of-two total the probabilities, their running sums and thresholds such as 0.75 are
    exact on both sides -- a threshold can be hit exactly by ONE token, with no tie to hide behind."""
    logits = np.empty(len(halvings), dtype=np.float32)
    logits[positions] = -np.array(halvings, dtype=np.float32) * np.float32(math.log(2))
    return logits[None, :]


HALF_QUARTER = [0, 1, 2, 2]                  # probabilities 1/2, 1/4, 1/8, 1/8
THREE_AND_TAIL = [0, 1, 2, 4, 4, 4, 4]       # probabilities 1/2, 1/4, 1/8, four of 1/32
NON_TIE_BOUNDARY_CASES = [
    # (warper, transformers warper, halvings, how many tokens survive: the boundary token is unique)
    (TopP(0.75), lp.TopPLogitsWarper(0.75), THREE_AND_TAIL, 2),   # ascending sums reach 1 - 0.75 at the 1/8 token
    (TopP(0.5), lp.TopPLogitsWarper(0.5), THREE_AND_TAIL, 1),     # ... and 1 - 0.5 at the 1/4 token: both go
    (MinP(0.25), lp.MinPLogitsWarper(0.25), THREE_AND_TAIL, 3),   # bar 0.25 * 1/2 = 1/8: the 1/8 token stays
    (MinP(0.5), lp.MinPLogitsWarper(0.5), THREE_AND_TAIL, 2),     # bar 1/4: the 1/4 token stays
    (Epsilon(0.125), lp.EpsilonLogitsWarper(0.125), THREE_AND_TAIL, 3),   # p == epsilon is not below it
    # The case: entropy 1.75 bits, gaps |-log2 p - H| 0.75, 0.25, 1.25, 1.25; most typical first the sums
    # are 1/4, 3/4, ...: at mass 3/4 the 1/2 token reaches it and is the last kept (2 tokens, not 4).
    (Typical(0.75), lp.TypicalLogitsWarper(0.75), HALF_QUARTER, 2),
    (Typical(0.25), lp.TypicalLogitsWarper(0.25), HALF_QUARTER, 1),   # the 1/4 token alone reaches 1/4
]


@pytest.mark.parametrize("case", range(len(NON_TIE_BOUNDARY_CASES)))
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_exact_boundary_without_ties(backend, case, order):
    """A cumulative probability (top-p, typical) or a probability (min-p, epsilon) exactly AT the threshold, on a
    token that ties with no other: where `<` and `<=` differ and no tie-break can make them agree."""
    warper, reference_warper, halvings, kept = NON_TIE_BOUNDARY_CASES[case]
    positions = np.arange(len(halvings)) if order == "sorted" else np.random.default_rng(case).permutation(len(halvings))
    scores = dyadic_logits(halvings, positions)
    ids = np.zeros((1, 0), np.int64)
    exact = 0.5 ** np.array(halvings) / (0.5 ** np.array(halvings)).sum()
    np.testing.assert_array_equal(torch_probs(scores)[0][positions], exact)      # as the case needs, on both sides
    np.testing.assert_array_equal(backend.to_numpy(softmax(backend.asarray(scores)))[0][positions], exact)
    got, want = ours(warper, backend, scores, ids), reference(reference_warper, scores, ids)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    assert np.isfinite(got).sum() == kept
    np.testing.assert_array_equal(got[np.isfinite(got)], scores[np.isfinite(got)])


PROBABILITIES = st.one_of(st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0]), st.floats(0.01, 0.99))


@FIXTURE_OK
@given(case=logits_and_ids(max_time=0), top_p=PROBABILITIES, keep=st.integers(1, 3))
def test_top_p(backend, case, top_p, keep):
    scores, ids = case
    compare(backend, TopP(top_p, keep), lp.TopPLogitsWarper(top_p, min_tokens_to_keep=keep), scores, ids,
            tie_key=scores if scores.shape[1] > 16 else None, near_boundary=top_p_near(scores, top_p))


@FIXTURE_OK
@given(case=logits_and_ids(max_time=0, max_vocab=16), top_p=PROBABILITIES)
def test_top_p_ties_exact_on_short_rows(backend, case, top_p):
    """torch.sort is stable for rows of <= 16 entries, so there the tie-break must agree exactly."""
    scores, ids = case
    compare(backend, TopP(top_p), lp.TopPLogitsWarper(top_p), scores, ids, near_boundary=top_p_near(scores, top_p))


def test_top_p_keeps_the_token_that_crosses_the_threshold(backend):
    scores = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    got = ours(TopP(0.6), backend, scores, np.zeros((1, 0), np.int64))
    assert np.isfinite(got[0]).tolist() == [True, True, False, False]   # 0.5 < 0.6, so 0.3 joins: mass 0.8


@FIXTURE_OK
@given(case=logits_and_ids(max_time=0), min_p=st.one_of(st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0]),
                                                        st.floats(0, 1)), keep=st.integers(1, 3))
def test_min_p(backend, case, min_p, keep):
    scores, ids = case
    # With keep > 1, torch.topk picks among tied probabilities in an unspecified order.
    compare(backend, MinP(min_p, keep), lp.MinPLogitsWarper(min_p, min_tokens_to_keep=keep), scores, ids,
            tie_key=torch_probs(scores) if keep > 1 else None,
            near_boundary=min_p_near(scores, min_p))


@FIXTURE_OK
@given(case=logits_and_ids(max_time=0), mass=st.one_of(st.sampled_from([0.2, 0.5, 0.9, 0.95]),
                                                       st.floats(0.01, 0.99)), keep=st.integers(1, 2))
def test_typical(backend, case, mass, keep):
    scores, ids = case
    compare(backend, Typical(mass, keep), lp.TypicalLogitsWarper(mass, min_tokens_to_keep=keep), scores, ids,
            tie_key=torch_typical_gap(scores), near_boundary=typical_near(scores, mass))


EPSILONS = st.one_of(st.sampled_from([1e-4, 3e-4, 0.01, 0.05, 0.2, 0.5]), st.floats(1e-5, 0.9))


@FIXTURE_OK
@given(case=logits_and_ids(max_time=0), epsilon=EPSILONS, keep=st.integers(1, 3))
def test_epsilon(backend, case, epsilon, keep):
    scores, ids = case
    compare(backend, Epsilon(epsilon, keep), lp.EpsilonLogitsWarper(epsilon, min_tokens_to_keep=keep), scores, ids,
            near_boundary=probability_near(scores, np.full((scores.shape[0], 1), epsilon)))


@FIXTURE_OK
@given(case=logits_and_ids(max_time=0), epsilon=EPSILONS, keep=st.integers(1, 3))
def test_eta(backend, case, epsilon, keep):
    scores, ids = case
    compare(backend, Eta(epsilon, keep), lp.EtaLogitsWarper(epsilon, min_tokens_to_keep=keep), scores, ids,
            near_boundary=eta_near(scores, epsilon))


# ----- composition --------------------------------------------------------------------------------------------

def _transformers_processors(config: GenerationConfig, prompt_length: int):
    """The list transformers' _get_logits_processor builds for the same settings (those both sides support)."""
    procs = []
    eos = list(config.eos_token_ids)
    if config.sequence_bias is not None:
        procs.append(lp.SequenceBiasLogitsProcessor([[list(k), v] for k, v in config.sequence_bias]))
    if config.repetition_penalty != 1.0:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty)))
    if config.no_repeat_ngram_size:
        procs.append(lp.NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids is not None:
        procs.append(lp.NoBadWordsLogitsProcessor([list(s) for s in config.bad_words_ids], eos))
    if config.min_length > 0:
        procs.append(lp.MinLengthLogitsProcessor(config.min_length, eos))
    if config.min_new_tokens > 0:
        procs.append(lp.MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos))
    if config.suppress_tokens is not None:
        procs.append(lp.SuppressTokensLogitsProcessor(list(config.suppress_tokens)))
    if config.begin_suppress_tokens is not None:
        procs.append(lp.SuppressTokensAtBeginLogitsProcessor(list(config.begin_suppress_tokens), prompt_length))
    if config.is_sampling:
        if config.temperature != 1.0:
            procs.append(lp.TemperatureLogitsWarper(float(config.temperature)))
        if config.top_k:
            procs.append(lp.TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            procs.append(lp.TopPLogitsWarper(config.top_p))
        if config.min_p is not None:
            procs.append(lp.MinPLogitsWarper(config.min_p))
        if config.typical_p < 1.0:
            procs.append(lp.TypicalLogitsWarper(config.typical_p))
        if config.epsilon_cutoff:
            procs.append(lp.EpsilonLogitsWarper(config.epsilon_cutoff))
        if config.eta_cutoff:
            procs.append(lp.EtaLogitsWarper(config.eta_cutoff))
    return lp.LogitsProcessorList(procs)


@FIXTURE_OK
@given(case=logits_and_ids(max_vocab=16, min_vocab=8), data=st.data())
def test_build_processors_matches_transformers_chain(backend, case, data):
    scores, ids = case
    prompt_length = data.draw(st.integers(0, ids.shape[1]))
    config = GenerationConfig(
        do_sample=data.draw(st.booleans()),
        eos_token_id=data.draw(st.sampled_from([None, 0, [0, 1]])),
        repetition_penalty=data.draw(st.sampled_from([1.0, 1.2])),
        no_repeat_ngram_size=data.draw(st.integers(0, 2)),
        bad_words_ids=data.draw(st.sampled_from([None, [[3], [1, 2]]])),
        min_new_tokens=data.draw(st.integers(0, 3)),
        suppress_tokens=data.draw(st.sampled_from([None, [5]])),
        sequence_bias=data.draw(st.sampled_from([None, {(4,): 1.5, (1, 6): -2.0}])),
        temperature=data.draw(st.sampled_from([1.0, 0.7])),
        top_k=data.draw(st.sampled_from([0, 3, 50])),
        top_p=data.draw(st.sampled_from([1.0, 0.9])),
        min_p=data.draw(st.sampled_from([None, 0.05])),
    )
    if not config.eos_token_ids:
        config = config.replace(min_new_tokens=0)
    got_procs = build_processors(config, prompt_length=prompt_length)
    ref = _transformers_processors(config, prompt_length)
    assert [type(p).__name__ for p in got_procs] == [
        {"SequenceBiasLogitsProcessor": "SequenceBias", "RepetitionPenaltyLogitsProcessor": "RepetitionPenalty",
         "NoRepeatNGramLogitsProcessor": "NoRepeatNGram", "NoBadWordsLogitsProcessor": "NoBadWords",
         "MinLengthLogitsProcessor": "MinLength", "MinNewTokensLengthLogitsProcessor": "MinNewTokens",
         "SuppressTokensLogitsProcessor": "SuppressTokens", "TemperatureLogitsWarper": "Temperature",
         "TopKLogitsWarper": "TopK", "TopPLogitsWarper": "TopP", "MinPLogitsWarper": "MinP"}[type(p).__name__]
        for p in ref]
    got = backend.to_numpy(apply(got_procs, backend.asarray(ids, dtype="int64"),
                                 backend.asarray(scores, dtype="float32")))
    want = ref(torch.from_numpy(ids.copy()), torch.from_numpy(scores.copy())).numpy()
    assert_same(got, want)


def test_build_processors_needs_prompt_length_for_min_new_tokens():
    with pytest.raises(ValueError, match="prompt_length"):
        build_processors(GenerationConfig(min_new_tokens=2, eos_token_id=0))


def test_greedy_config_builds_no_warpers():
    procs = build_processors(GenerationConfig(do_sample=True, temperature=0.0, top_k=5, top_p=0.5))
    assert procs == []


def test_processor_argument_errors():
    with pytest.raises(ValueError, match="repetition_penalty.*0"):
        RepetitionPenalty(0.0)
    with pytest.raises(ValueError, match="top_p.*1.5"):
        TopP(1.5)
    with pytest.raises(ValueError, match="top_k.*0"):
        TopK(0)
    with pytest.raises(ValueError, match="typical_p.*1.0"):
        Typical(1.0)
    with pytest.raises(ValueError, match="temperature.*greedy"):
        Temperature(0.0)
    with pytest.raises(ValueError, match="bad_words_ids"):
        NoBadWords([])
    with pytest.raises(ValueError, match="bad_words_ids.*-1"):
        NoBadWords([[1, -1]])
    with pytest.raises(ValueError, match="sequence_bias keys"):
        SequenceBias({(): 1.0})
    with pytest.raises(ValueError, match="no_repeat_ngram_size.*0"):
        NoRepeatNGram(0)


def test_mixed_backends_are_refused(backend):
    """NumPy ids with another backend's scores are refused; with NumPy scores they are one backend, and work."""
    import backends
    ids, scores = np.zeros((1, 1), np.int64), backend.asarray(np.zeros((1, 4), np.float32))
    if backend.name == "numpy":
        assert TopK(2)(ids, scores).shape == (1, 4)
        return
    with pytest.raises(backends.MixedBackendError):
        TopK(2)(ids, scores)
