"""generate(): sampling (same seed, same tokens on every backend; the first step's empirical distribution against
the warped one by a chi-square test; temperature 0 is greedy), stopping (EOS, stop strings across token boundaries,
lengths), the KV cache (allocated once, prefilled once, one token per step) and a clear error for each bad input.
Exactness of greedy decoding against transformers is in test_generate_exact.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers

import scratch.models
from scratch.generate import GenerateOutput, GenerationConfig, generate
from scratch.generate.prompt import prepare_prompt
from scratch.models import GPT2Config
from scratch.tokenizer import BPETokenizer

V = 300
TINY = GPT2Config(vocab_size=V, n_positions=48, n_embd=32, n_layer=2, n_head=2)
PROMPT = [[3, 14, 15, 92, 65], [35, 89, 79, 32, 38]]


@pytest.fixture(scope="module")
def model_on():
    """backend name -> the same random tiny GPT-2 on that backend (one model per backend, built once)."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = scratch.models.from_config(TINY, backend=name, seed=0)
        return built[name]
    return get


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(transformers GPT-2, ours) with peaked distributions (initializer_range 0.3), for the chi-square test."""
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=48, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None)).eval()
    folder = tmp_path_factory.mktemp("gpt2-peaked")
    hf.save_pretrained(folder)
    return hf, scratch.models.load(folder)


# --- sampling -----------------------------------------------------------------------------------------------------

SAMPLING = dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=1234, max_new_tokens=12)


def test_same_seed_same_tokens_on_every_backend(model_on, backend):
    reference = generate(model_on("numpy"), PROMPT, **SAMPLING).sequences
    out = generate(model_on(backend.name), PROMPT, **SAMPLING)
    assert isinstance(out, GenerateOutput) and isinstance(out.sequences, np.ndarray)
    assert out.sequences.dtype == np.int64 and out.sequences.shape == (2, 5 + 12)
    np.testing.assert_array_equal(out.sequences, reference)
    on_backend = backend.asarray(np.array(PROMPT), dtype="int64")     # ids already on the backend are taken too
    np.testing.assert_array_equal(generate(model_on(backend.name), on_backend, **SAMPLING).sequences, reference)
    # Greedy too, and a left-padded batch (the mask lives on the backend).
    ragged = [[5, 6], [7, 8, 9, 10, 11, 12]]
    for kwargs in (dict(max_new_tokens=8), dict(SAMPLING, repetition_penalty=1.3)):
        np.testing.assert_array_equal(generate(model_on(backend.name), ragged, **kwargs).sequences,
                                      generate(model_on("numpy"), ragged, **kwargs).sequences)


def test_last_scores_reads_the_last_position_in_float32():
    # every loop calls it on a forward's (B, T, V) logits; T = 1 after a logits_to_keep=1 prefill, so check T > 1 here
    from scratch.generate.output import last_scores

    logits = np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4)          # (B, T, V)
    last = last_scores(np, logits)
    assert last.dtype == np.float32
    np.testing.assert_array_equal(last, logits[:, -1, :].astype(np.float32))


def test_seed_matters_and_repeats(model_on):
    m = model_on("numpy")
    a = generate(m, PROMPT, **SAMPLING).sequences
    np.testing.assert_array_equal(a, generate(m, PROMPT, **SAMPLING).sequences)
    b = generate(m, PROMPT, **{**SAMPLING, "seed": 99, "top_k": 0, "top_p": 1.0, "temperature": 1.5}).sequences
    assert not np.array_equal(a, b)


def test_row_zero_of_a_batch_samples_like_the_prompt_alone(model_on):
    """Each row draws its own run of uniforms (a (B, max_new) table), so row 0 does not depend on the batch size.
    (Equal-length prompts: no padding, so the logits of row 0 are computed the same way.)"""
    m = model_on("numpy")
    config = GenerationConfig(do_sample=True, top_k=0, seed=7, max_new_tokens=10)
    batch = generate(m, PROMPT, config).sequences
    alone = generate(m, PROMPT[:1], config).sequences
    np.testing.assert_array_equal(batch[:1], alone)


def test_num_return_sequences_expands_each_prompt(model_on):
    m = model_on("numpy")
    out = generate(m, PROMPT, do_sample=True, top_k=0, seed=3, max_new_tokens=6, num_return_sequences=3)
    assert out.sequences.shape == (6, 11)
    np.testing.assert_array_equal(out.sequences[:3, :5], np.array([PROMPT[0]] * 3))
    np.testing.assert_array_equal(out.sequences[3:, :5], np.array([PROMPT[1]] * 3))


def test_temperature_zero_is_greedy(model_on):
    m = model_on("numpy")
    greedy = generate(m, PROMPT, max_new_tokens=10).sequences
    np.testing.assert_array_equal(generate(m, PROMPT, do_sample=True, temperature=0.0, seed=5,
                                           max_new_tokens=10).sequences, greedy)


def _chi_square_critical(dof: int, z: float) -> float:
    """Upper quantile of chi-square(dof) by the Wilson-Hilferty cube approximation (z = the normal quantile)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_first_step_distribution_chi_square(hf_pair):
    """N samples of the first new token against the distribution transformers' own warpers give (temperature,
    top-k, top-p) on transformers' logits. False-alarm rate 0.1% (z = 3.09); the seed is fixed, so the test is
    deterministic. Tokens the warpers remove must never be drawn."""
    hf, ours = hf_pair
    prompt = [[3, 14]]
    temperature, top_k, top_p, n = 0.7, 30, 0.95, 20000
    with torch.no_grad():
        scores = hf(torch.tensor(prompt)).logits[:, -1, :]
        for warper in (transformers.TemperatureLogitsWarper(temperature), transformers.TopKLogitsWarper(top_k),
                       transformers.TopPLogitsWarper(top_p)):
            scores = warper(torch.tensor(prompt), scores)
        expected = torch.softmax(scores, dim=-1)[0].double().numpy()
    out = generate(ours, prompt, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, seed=2024,
                   max_new_tokens=1, num_return_sequences=n)
    counts = np.bincount(out.sequences[:, -1], minlength=V)
    assert counts[expected == 0].sum() == 0, "a token removed by top-k/top-p was sampled"
    support = expected > 0
    assert support.sum() >= 5, "the test needs a distribution with several tokens"
    # Pool the tokens expected fewer than 5 times into one cell, as the chi-square approximation requires.
    e, c = expected[support] * n, counts[support]
    small = e < 5
    cells_e = np.append(e[~small], e[small].sum()) if small.any() else e[~small]
    cells_c = np.append(c[~small], c[small].sum()) if small.any() else c[~small]
    statistic = float(((cells_c - cells_e) ** 2 / cells_e).sum())
    assert statistic < _chi_square_critical(len(cells_e) - 1, 3.09), (statistic, len(cells_e))


# --- stopping -----------------------------------------------------------------------------------------------------

def test_eos_rows_finish_independently_and_are_padded(model_on):
    m = model_on("numpy")
    plain = generate(m, PROMPT, max_new_tokens=10).sequences[:, 5:]
    eos = int(plain[0, 3])
    first = {b: int(np.nonzero(plain[b] == eos)[0][0]) if (plain[b] == eos).any() else None for b in range(2)}
    out = generate(m, PROMPT, max_new_tokens=10, eos_token_id=eos, pad_token_id=127).sequences[:, 5:]
    for b in range(2):
        if first[b] is None:
            np.testing.assert_array_equal(out[b], plain[b, :out.shape[1]])
        else:
            np.testing.assert_array_equal(out[b, :first[b] + 1], plain[b, :first[b] + 1])
            assert (out[b, first[b] + 1:] == 127).all()


@pytest.fixture(scope="module")
def tokenizer():
    text = ("the quick brown fox jumps over the lazy dog. " * 3 + "pack my box with five dozen liquor jugs! " * 3
            + "héllo wörld, naïve café. ")
    return BPETokenizer.train(text, vocab_size=V, pattern="gpt2")


def test_stop_strings_across_token_boundaries(model_on, tokenizer):
    m = model_on("numpy")
    prompt = [tokenizer.encode("the quick")]
    plain = generate(m, prompt, max_new_tokens=20).sequences[0, len(prompt[0]):].tolist()
    # A stop string made of the last character of token k-1 and the first of token k, absent before token k.
    for k in range(1, len(plain)):
        a, b = tokenizer.decode([plain[k - 1]]), tokenizer.decode([plain[k]])
        if not a or not b or "\ufffd" in a + b:
            continue
        stop = a[-1] + b[0]
        if stop not in tokenizer.decode(plain[:k]) and stop in tokenizer.decode(plain[:k + 1]):
            break
    else:
        pytest.fail(f"no token boundary to test in {tokenizer.decode(plain)!r}")
    out = generate(m, prompt, max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer).sequences[0]
    generated = out[len(prompt[0]):].tolist()
    assert generated == plain[:k + 1]               # stopped on the token that completed the stop string
    assert stop in tokenizer.decode(generated)


def test_stop_strings_need_a_tokenizer(model_on, tokenizer):
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model_on("numpy"), PROMPT, max_new_tokens=4, stop_strings=["x"])
    with pytest.raises(ValueError, match="stop_strings work with greedy decoding, sampling and beam search, not "
                                         "with contrastive_search"):
        generate(model_on("numpy"), PROMPT, max_new_tokens=4, stop_strings=["x"], penalty_alpha=0.6, top_k=4,
                 tokenizer=tokenizer)


def test_sampling_records_the_warped_scores_it_drew_from(model_on, backend):
    """output_scores with top-k: each step keeps >= k finite scores per row and the drawn token is among them; the
    logits are the model's own (a cached forward reproduces the first step); every backend records the same."""
    m = model_on(backend.name)
    out = generate(m, PROMPT, max_new_tokens=5, do_sample=True, top_k=7, seed=3, output_scores=True,
                   output_logits=True, num_return_sequences=2)
    assert out.sequences.shape == (4, 10) and len(out.scores) == len(out.logits) == 5
    for step, scores in enumerate(out.scores):
        assert scores.shape == (4, V) and isinstance(scores, np.ndarray)
        assert (np.isfinite(scores).sum(axis=1) >= 7).all()
        chosen = out.sequences[:, 5 + step]
        assert np.isfinite(scores[np.arange(4), chosen]).all()
    first = model_on("numpy")(np.repeat(np.array(PROMPT), 2, axis=0))[:, -1, :]
    np.testing.assert_allclose(out.logits[0], first, atol=1e-5, rtol=0)
    ref = generate(model_on("numpy"), PROMPT, max_new_tokens=5, do_sample=True, top_k=7, seed=3, output_scores=True,
                   num_return_sequences=2)
    np.testing.assert_array_equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_recorded_scores_are_float32_copies():
    """A float16 model's scores and logits are recorded in float32 (transformers processes in float32), and each
    is a copy of its own: with no processor, the scores and the logits of a step are still two arrays."""
    half = scratch.models.from_config(TINY, dtype="float16", seed=0)
    out = generate(half, PROMPT, max_new_tokens=3, output_scores=True, output_logits=True)
    assert all(a.dtype == np.float32 for a in out.scores + out.logits)
    assert not np.shares_memory(out.scores[0], out.logits[0])
    np.testing.assert_array_equal(out.scores[0], out.logits[0])


def test_output_scores_only_where_recorded(model_on):
    with pytest.raises(ValueError, match=r"output_scores: recorded for greedy decoding, sampling and beam search, "
                                         r"not for group_beam_search"):
        generate(model_on("numpy"), PROMPT, max_new_tokens=2, num_beams=2, num_beam_groups=2, diversity_penalty=0.5,
                 output_scores=True)
    with pytest.raises(ValueError, match="return_dict_in_generate .not needed here"):
        generate(model_on("numpy"), PROMPT, max_new_tokens=2, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="output_logits must be True or False, got 1"):
        generate(model_on("numpy"), PROMPT, max_new_tokens=2, output_logits=1)


def test_max_length_and_max_new_tokens(model_on):
    m = model_on("numpy")
    assert generate(m, PROMPT, max_new_tokens=3).sequences.shape == (2, 8)
    assert generate(m, PROMPT, max_length=9).sequences.shape == (2, 9)
    assert generate(m, PROMPT).sequences.shape == (2, 20)          # transformers' default max_length
    with pytest.raises(ValueError, match="max_new_tokens or max_length"):
        generate(m, PROMPT, max_new_tokens=3, max_length=9)
    with pytest.raises(ValueError, match="max_length"):
        generate(m, PROMPT, max_length=5)                          # no room after a 5-token prompt


def test_config_and_kwargs(model_on):
    """kwargs override the config's fields, as in transformers."""
    m = model_on("numpy")
    config = GenerationConfig(max_new_tokens=4, do_sample=True, seed=1)
    assert generate(m, PROMPT, config, max_new_tokens=2).sequences.shape == (2, 7)
    np.testing.assert_array_equal(generate(m, PROMPT, config, do_sample=False).sequences,
                                  generate(m, PROMPT, max_new_tokens=4).sequences)
    with pytest.raises(ValueError, match="unknown generation parameter.*top_q"):
        generate(m, PROMPT, top_q=0.5)


# --- the KV cache -------------------------------------------------------------------------------------------------

class Spy:
    """Wraps a model and records cache allocations and the T of every forward."""

    def __init__(self, model):
        self.model, self.caches, self.steps, self.kept = model, [], [], []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def new_cache(self, batch_size, max_length=None):
        self.caches.append((batch_size, max_length))
        return self.model.new_cache(batch_size, max_length)

    def __call__(self, input_ids, cache=None, attention_mask=None, logits_to_keep=0):
        assert cache is not None, "the loop must decode through the cache"
        self.steps.append((int(input_ids.shape[1]), cache.length))
        logits = self.model(input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        self.kept.append(int(logits.shape[1]))
        return logits


@pytest.mark.parametrize("rows", [PROMPT, [[1, 2, 3], [4, 5, 6, 7, 8]]])
def test_cache_allocated_once_prefill_once_then_one_token(model_on, rows):
    spy = Spy(model_on("numpy"))
    generate(spy, rows, max_new_tokens=6, do_sample=True, seed=0, repetition_penalty=1.2)
    T = max(len(r) for r in rows)
    assert spy.caches == [(2, T + 6)]
    assert spy.steps == [(T, 0)] + [(1, T + i) for i in range(5)]
    assert spy.kept == [1] * 6, "the prefill computes logits for the prompt's last position only"


def test_left_padding_does_not_change_a_row(model_on):
    """A short prompt padded on the left generates the same greedy tokens as alone (positions from the mask)."""
    m = model_on("numpy")
    alone = generate(m, [[4, 5, 6]], max_new_tokens=8).sequences[0, 3:]
    batch = generate(m, [[4, 5, 6], [1, 2, 3, 7, 9, 11, 13]], max_new_tokens=8).sequences[0, 7:]
    np.testing.assert_array_equal(batch, alone)


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, match", [
    ([[]], "empty and no bos_token_id"),
    (np.zeros((1, 0), dtype=np.int64), "empty and no bos_token_id"),
    ([[1, 2], []], "prompt 1 is empty"),
    (np.array([[1.0, 2.0]]), "integer token ids"),
    ([[1, "a"]], "integer token ids"),
    ([[1, 2.5]], "integer token ids"),
    ([[1, V]], f"token id {V}, outside the model's vocabulary"),
    ([[1, -3]], "token id -3, outside"),
    ([list(range(49))], "longer than the model's context of 48"),
    (np.zeros((0, 3), dtype=np.int64), "batch size 0"),
])
def test_bad_prompts(model_on, prompt, match):
    with pytest.raises(ValueError, match=match):
        generate(model_on("numpy"), prompt, max_new_tokens=2)


def test_prompt_plus_new_tokens_beyond_the_context(model_on):
    with pytest.raises(ValueError, match="exceed the model's context of 48"):
        generate(model_on("numpy"), [list(range(40))], max_new_tokens=9)
    assert generate(model_on("numpy"), [list(range(40))], max_new_tokens=8).sequences.shape == (1, 48)


def test_empty_prompt_starts_from_bos(model_on):
    m = model_on("numpy")
    out = generate(m, [[]], max_new_tokens=3, bos_token_id=7).sequences
    assert out.shape == (1, 4) and out[0, 0] == 7
    np.testing.assert_array_equal(out, generate(m, [[7]], max_new_tokens=3).sequences)


def test_bad_attention_mask(model_on):
    m = model_on("numpy")
    ids = np.array(PROMPT)
    with pytest.raises(ValueError, match="not left-padded"):
        generate(m, ids, attention_mask=np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask shape"):
        generate(m, ids, attention_mask=np.ones((2, 4)), max_new_tokens=2)


def test_prompt_preparation_left_pads():
    class Fake:
        n_vocab, max_length = 50, 20
    prompt = prepare_prompt(Fake(), [[1, 2, 3], [4]], GenerationConfig(pad_token_id=9))
    np.testing.assert_array_equal(prompt.input_ids, [[1, 2, 3], [9, 9, 4]])
    np.testing.assert_array_equal(prompt.attention_mask, [[1, 1, 1], [0, 0, 1]])
    assert prompt.input_ids.dtype == np.int64 and prompt.has_padding
    np.testing.assert_array_equal(prompt.lengths, [3, 1])


def test_streamer_receives_each_step(model_on):
    class Collect:
        def __init__(self):
            self.steps, self.ended = [], False

        def put(self, tokens):
            self.steps.append(tokens.copy())

        def end(self):
            self.ended = True
    m, streamer = model_on("numpy"), Collect()
    out = generate(m, PROMPT, max_new_tokens=5, streamer=streamer)
    assert streamer.ended
    np.testing.assert_array_equal(np.stack(streamer.steps, axis=1), out.sequences[:, 5:])
    with pytest.raises(ValueError, match="streamer"):
        generate(m, PROMPT, max_new_tokens=5, num_beams=2, streamer=streamer)



@pytest.mark.parametrize("kwargs, name", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(temperature=-0.5), "temperature"), (dict(num_beams=0), "num_beams"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"), (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_parameters_name_themselves(model_on, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate(model_on("numpy"), PROMPT, **kwargs)
