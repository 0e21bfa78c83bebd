"""Samplers: inverse-CDF sampling against its loop oracle, greedy against torch.argmax, the same tokens on every
backend for one seed, and chi-square tests that sampled frequencies follow each warped distribution."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import backends
from scratch.generate import (
    Epsilon,
    Eta,
    MinP,
    Temperature,
    TopK,
    TopP,
    Typical,
    draw_uniforms,
    greedy,
    sample,
    sample_from_probs,
    sample_multinomial_reference,
)
from scratch.nn import softmax

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def probability_rows(draw):
    """(probs (B, V) float32 summing to ~1, with zeros, uniforms (B,) float32 including 0, 1-ulp and 1)."""
    batch, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    weights = draw(hnp.arrays(np.float32, (batch, vocab),
                              elements=st.one_of(st.just(0.0), st.floats(0, 1, width=32), st.just(1.0))))
    for row in range(batch):
        if weights[row].sum() == 0:
            weights[row, draw(st.integers(0, vocab - 1))] = 1.0
    probs = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    edge = st.sampled_from([0.0, np.nextafter(np.float32(1), np.float32(0)), 1.0, 0.5])
    uniforms = draw(hnp.arrays(np.float32, (batch,), elements=st.one_of(edge, st.floats(0, 1, width=32))))
    return probs, uniforms


@FIXTURE_OK
@given(case=probability_rows())
def test_sample_from_probs_matches_the_loop_oracle(backend, case):
    probs, uniforms = case
    got = sample_from_probs(backend.asarray(probs, dtype="float32"), backend.asarray(uniforms, dtype="float32"))
    assert got.dtype == backend.xp.int64 and got.shape == (probs.shape[0],)
    got = backend.to_numpy(got)
    np.testing.assert_array_equal(got, sample_multinomial_reference(probs, uniforms))
    assert (probs[np.arange(probs.shape[0]), got] > 0).all(), "a token of probability 0 was chosen"


def test_sample_edges(backend):
    probs = backend.asarray([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0]], dtype="float32")
    at = lambda u: backend.to_numpy(sample_from_probs(probs, backend.asarray(u, dtype="float32"))).tolist()
    assert at([0.0, 0.0]) == [1, 2]          # u = 0: the first token with probability, never a zero one
    assert at([0.5, 0.3]) == [2, 2]          # the first index whose cumulative probability EXCEEDS u
    assert at([1.0, 1.0]) == [2, 2]          # u = 1 (a float64 draw rounded up): the last token with probability


@FIXTURE_OK
@given(scores=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=20),
                         elements=st.sampled_from([-math.inf, -1.0, 0.0, 2.0, 2.0, 3.5])))
def test_greedy_is_torch_argmax_first_max_on_ties(backend, scores):
    scores[:, 0] = 0.0  # at least one finite entry per row
    got = greedy(backend.asarray(scores, dtype="float32"))
    assert got.dtype == backend.xp.int64
    np.testing.assert_array_equal(backend.to_numpy(got), torch.argmax(torch.from_numpy(scores), dim=-1).numpy())


@FIXTURE_OK
@given(scores=hnp.arrays(np.float32, (3, 17), elements=st.one_of(st.floats(-40, 40, width=32), st.just(-math.inf))))
def test_softmax_matches_torch(backend, scores):
    scores[:, 0] = 1.0
    got = softmax(backend.asarray(scores, dtype="float32"))
    assert got.dtype == backend.xp.float32
    want = torch.softmax(torch.from_numpy(scores), dim=-1).numpy()
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-5, atol=1e-7)


def test_same_seed_same_tokens_on_every_backend():
    logits = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32) * 3
    tokens = {}
    for name in backends.available():
        be = backends.get(name)
        rng = backends.rng(1234)
        scores = be.asarray(logits, dtype="float32")
        steps = [be.to_numpy(sample(scores, draw_uniforms(rng, 3, be))) for _ in range(50)]
        tokens[name] = np.stack(steps)
    assert "numpy" in tokens and "strict" in tokens
    for name, drawn in tokens.items():
        np.testing.assert_array_equal(drawn, tokens["numpy"], err_msg=f"{name} drew different tokens")
    assert len(np.unique(tokens["numpy"])) > 10  # it really sampled


def chi_square_critical(dof: int, z: float = 3.719) -> float:
    """Upper quantile of the chi-square distribution by the Wilson-Hilferty approximation; z = 3.719 is the
    standard-normal quantile for a 1e-4 upper tail, so a correct sampler fails one such test in 10,000 seeds."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


LOGITS = np.array([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, -6.0, -9.0]], np.float32)
WARPERS = {
    "temperature": Temperature(0.6), "top_k": TopK(4), "top_p": TopP(0.8), "min_p": MinP(0.2),
    "typical": Typical(0.7), "epsilon": Epsilon(0.02), "eta": Eta(0.05),
}


@pytest.mark.parametrize("name", list(WARPERS))
def test_sampled_frequencies_follow_the_warped_distribution(backend, name):
    draws = 20_000
    warped = WARPERS[name](backend.asarray(np.zeros((1, 0), np.int64), dtype="int64"),
                           backend.asarray(LOGITS, dtype="float32"))
    expected = backend.to_numpy(softmax(warped))[0].astype(np.float64)
    rng = backends.rng(7)
    scores = backend.xp.broadcast_to(warped, (draws, LOGITS.shape[1]))
    tokens = backend.to_numpy(sample(scores, draw_uniforms(rng, draws, backend)))
    counts = np.bincount(tokens, minlength=LOGITS.shape[1])
    allowed = expected > 0
    assert counts[~allowed].sum() == 0, f"{name}: sampled a token the warper removed"
    assert allowed.sum() < LOGITS.shape[1] or name == "temperature", f"{name} removed nothing: a weak test"
    want = expected[allowed] * draws
    statistic = float(((counts[allowed] - want) ** 2 / want).sum())
    dof = int(allowed.sum()) - 1
    if dof == 0:
        assert counts[allowed].sum() == draws
        return
    assert statistic < chi_square_critical(dof), f"{name}: chi-square {statistic:.1f} with {dof} dof"
