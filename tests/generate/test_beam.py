"""Beam search against transformers 5 on tiny random GPT-2 and Llama models (saved with save_pretrained, loaded with
scratch's loader): identical sequences and sequences_scores for num_beams, length_penalty, early_stopping and
num_return_sequences settings, on a left-padded batch of two prompts, with EOS ids the models actually produce (so
hypotheses end early), and on settings, prompts and EOS ids drawn by hypothesis. Beam sampling and group beam search
are tested on their properties here, against transformers in test_beam_recorded.py; bad settings against their
error messages. (The top-k they select with: test_selection.py.)"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from hypothesis import example, given, settings
from hypothesis import strategies as st

import scratch.models
from scratch.generate import generate
from tests.conftest import require_shared

# Both sides compute in float32 with differently blocked matmuls (and transformers' cache path): per-step logits and
# log-probs (values up to ~11) agree to <= 1.0e-5 measured, hence 2e-5. A sequence score sums <= 10 of them and divides
# by length ** penalty: <= 2.2e-7 relative measured (1.5e-5 on a score of -239, penalty -1), hence rtol 1e-6.
LOGIT_ATOL = 2e-5
SCORE_RTOL, SCORE_ATOL = 1e-6, 2e-5
PROMPTS = np.array([[5, 6, 7, 8, 9], [1, 1, 11, 12, 13]], dtype=np.int64)   # row 1 left-padded with pad id 1
MASK = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=np.int64)
PAD = 1
MAX_NEW = 10


def _save(hf, tmp_path_factory, name):
    folder = tmp_path_factory.mktemp(name)
    hf.save_pretrained(folder)
    return folder


def _frequent_tokens(hf, count):
    """Tokens that greedy decoding produces most often: as EOS ids they end some beams early."""
    with torch.no_grad():
        out = hf.generate(torch.tensor(PROMPTS), attention_mask=torch.tensor(MASK), do_sample=False,
                          max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=None)
    generated = out.numpy()[:, PROMPTS.shape[1]:].ravel()
    values, counts = np.unique(generated[generated != PAD], return_counts=True)
    return [int(v) for v in values[np.argsort(-counts, kind="stable")][:count]]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    torch.manual_seed(0)
    # initializer_range 0.2: peaked enough distributions that beams diverge and EOS wins sometimes.
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0)).eval()
    return hf, _save(hf, tmp_path_factory, "gpt2"), _frequent_tokens(hf, 3)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=113, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, bos_token_id=0,
        eos_token_id=0, pad_token_id=None)).eval()
    return hf, _save(hf, tmp_path_factory, "llama"), _frequent_tokens(hf, 3)


@pytest.fixture(scope="module")
def ours(gpt2, llama):
    """Our models on NumPy, loaded once (hypothesis runs a test many times): family -> model."""
    return {"gpt2": scratch.models.load(gpt2[1]), "llama": scratch.models.load(llama[1])}


def _compare(hf, model, eos, prompts=PROMPTS, mask=MASK, **kw):
    kw = {**dict(do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=eos), **kw}
    with torch.no_grad():
        ref = hf.generate(torch.tensor(prompts), attention_mask=torch.tensor(mask), output_scores=True,
                          return_dict_in_generate=True, **kw)
    out = generate(model, prompts, attention_mask=mask, **kw)
    ref_seqs = ref.sequences.numpy()
    assert out.sequences.dtype == np.int64 and out.sequences_scores.dtype == np.float32
    assert out.sequences.shape == ref_seqs.shape, (out.sequences, ref_seqs)
    np.testing.assert_array_equal(out.sequences, ref_seqs)
    np.testing.assert_allclose(out.sequences_scores, ref.sequences_scores.numpy(), rtol=SCORE_RTOL, atol=SCORE_ATOL)
    return ref_seqs


# (num_beams, length_penalty, early_stopping, num_return_sequences, which frequent token is EOS, or None)
GPT2_CASES = [
    (2, 1.0, False, 1, 0), (2, 0.0, True, 2, 1), (2, 2.0, "never", 2, 2), (2, -1.0, False, 1, 1),
    (3, 1.0, True, 3, 0), (3, 0.0, "never", 1, 1), (3, 2.0, False, 2, 0), (3, -1.0, "never", 3, 2),
    (4, 1.0, "never", 4, 1), (4, 0.0, False, 2, 0), (4, 2.0, True, 1, 1), (4, -1.0, True, 4, 0),
    (4, 1.0, False, 4, None), (3, 2.0, "never", 1, None),
]


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping, nrs, eos", GPT2_CASES)
def test_beam_search_equals_transformers_gpt2(gpt2, num_beams, length_penalty, early_stopping, nrs, eos):
    hf, folder, frequent = gpt2
    model = scratch.models.load(folder, backend="numpy")
    eos_id = None if eos is None else frequent[eos]
    seqs = _compare(hf, model, eos_id, num_beams=num_beams, length_penalty=length_penalty,
                    early_stopping=early_stopping, num_return_sequences=nrs)
    if eos_id is not None and nrs == num_beams and length_penalty <= 1.0:
        # All hypotheses returned, no strong push to long ones: some must have ended with EOS.
        assert (seqs[:, PROMPTS.shape[1]:] == eos_id).any()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_beam_search_scores_logits_and_beam_indices_equal_transformers(gpt2, llama, family):
    """output_scores / output_logits in beam search: per step, (B*num_beams, V) processed log-probs and raw logits,
    and for each returned hypothesis the beam row it continued at each step -- as transformers records them, with
    some hypotheses ended early by EOS (-1 after their end)."""
    hf, folder, frequent = gpt2 if family == "gpt2" else llama
    model = scratch.models.load(folder, backend="numpy")
    kw = dict(do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=PAD, eos_token_id=frequent[0], num_beams=3,
              num_return_sequences=3, length_penalty=1.0, early_stopping=False, repetition_penalty=1.3)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(PROMPTS), attention_mask=torch.tensor(MASK), output_scores=True,
                          output_logits=True, return_dict_in_generate=True, **kw)
    out = generate(model, PROMPTS, attention_mask=MASK, output_scores=True, output_logits=True, **kw)
    np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
    np.testing.assert_array_equal(out.beam_indices, ref.beam_indices.numpy())
    assert (out.beam_indices == -1).any(), "no hypothesis ended early: the -1 padding went untested"
    assert len(out.scores) == len(out.logits) == len(ref.scores)
    for step, (s, r, lo, rl) in enumerate(zip(out.scores, ref.scores, out.logits, ref.logits)):
        assert s.shape == (2 * 3, model.n_vocab)
        np.testing.assert_array_equal(np.isinf(s), np.isinf(r.numpy()), err_msg=f"-inf placement, step {step}")
        finite = np.isfinite(s)
        np.testing.assert_allclose(s[finite], r.numpy()[finite], atol=LOGIT_ATOL, rtol=0, err_msg=f"step {step}")
        np.testing.assert_allclose(lo, rl.numpy(), atol=LOGIT_ATOL, rtol=0, err_msg=f"logits, step {step}")
    # What beam_indices are for: each returned token's log-probability, summed, is the hypothesis' score.
    T = PROMPTS.shape[1]
    for i, row in enumerate(out.beam_indices):
        steps = np.nonzero(row >= 0)[0]
        total = sum(float(out.scores[t][row[t], out.sequences[i, T + t]]) for t in steps)
        # the same float32 numbers summed in another order: a few ulps of a score near -2
        assert np.isclose(total / len(steps), out.sequences_scores[i], rtol=1e-6, atol=1e-6)


def test_beam_search_two_eos_ids_gpt2(gpt2):
    """Two EOS ids: K = 3 * num_beams candidates per step."""
    hf, folder, frequent = gpt2
    model = scratch.models.load(folder, backend="numpy")
    _compare(hf, model, frequent[:2], num_beams=3, length_penalty=1.0, early_stopping=False, num_return_sequences=3)


@pytest.mark.parametrize("processors", [dict(repetition_penalty=1.5, no_repeat_ngram_size=2),
                                        dict(min_new_tokens=4, suppress_tokens=[2, 3], sequence_bias={(7,): -2.0})])
def test_beam_search_with_processors_equals_transformers(gpt2, processors):
    """Processors act on the log-softmax scores in beam search (repetition penalty multiplies them: all < 0)."""
    hf, folder, frequent = gpt2
    model = scratch.models.load(folder, backend="numpy")
    _compare(hf, model, frequent[0], num_beams=3, length_penalty=1.0, early_stopping=False, num_return_sequences=2,
             **processors)


LLAMA_CASES = [(2, 1.0, False, 2, 1), (3, 0.0, True, 1, 1), (4, 2.0, "never", 4, 1), (4, -1.0, False, 2, 1),
               (4, 0.0, "never", 4, 1)]


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping, nrs, eos", LLAMA_CASES)
def test_beam_search_equals_transformers_llama(llama, num_beams, length_penalty, early_stopping, nrs, eos):
    hf, folder, frequent = llama
    model = scratch.models.load(folder, backend="numpy")
    seqs = _compare(hf, model, frequent[eos], num_beams=num_beams, length_penalty=length_penalty,
                    early_stopping=early_stopping, num_return_sequences=nrs)
    if nrs == num_beams and length_penalty <= 1.0:
        assert (seqs[:, PROMPTS.shape[1]:] == frequent[eos]).any()


@st.composite
def drawn_settings(draw):
    """A model, one or two prompts (left-padded to one length), an EOS id (one of the tokens greedy decoding makes
    most often, so hypotheses do end early, or any id, or two, or none) and the beam settings."""
    family = draw(st.sampled_from(["gpt2", "llama"]))
    vocab = 97 if family == "gpt2" else 113
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=2))
    T = max(lengths)
    prompts = np.full((len(lengths), T), PAD, dtype=np.int64)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for row, n in enumerate(lengths):
        prompts[row, T - n:] = draw(st.lists(st.integers(2, vocab - 1), min_size=n, max_size=n))
        mask[row, T - n:] = 1
    eos = draw(st.one_of(st.tuples(st.just("frequent"), st.integers(0, 2)), st.none(),
                         st.tuples(st.just("id"), st.integers(2, vocab - 1)),
                         st.tuples(st.just("two frequent"), st.sampled_from([(0, 1), (0, 2), (1, 2)]))))
    num_beams = draw(st.integers(2, 4))
    return dict(family=family, prompts=prompts, mask=mask, eos=eos, num_beams=num_beams,
                num_return_sequences=draw(st.integers(1, num_beams)),
                length_penalty=draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])),
                early_stopping=draw(st.sampled_from([False, True, "never"])),
                max_new_tokens=draw(st.integers(1, 12)))


def _issue_case(eos, num_beams):
    """Found by a mutation run: the fixture's prompts with EOS 54 (3 beams) or 88 (2 beams), length_penalty 1 and
    early_stopping "never" are the only settings of ~900 where bounding the best running beam by max_new_tokens - 1
    instead of max_new_tokens changes the result."""
    return dict(family="gpt2", prompts=PROMPTS, mask=MASK, eos=("id", eos), num_beams=num_beams,
                num_return_sequences=num_beams, length_penalty=1.0, early_stopping="never", max_new_tokens=MAX_NEW)


# Each example runs two beam searches (~0.7 s with transformers' overhead): an eighth of the profile's count (at least
# 8 examples, 125 under the thorough profile), plus the two explicit ones.
@settings(max_examples=max(8, settings().max_examples // 8), deadline=None)
@given(case=drawn_settings())
@example(case=_issue_case(54, 3))
@example(case=_issue_case(88, 2))
def test_beam_search_equals_transformers_on_drawn_settings(gpt2, llama, ours, case):
    hf, _, frequent = gpt2 if case["family"] == "gpt2" else llama
    kind, value = case["eos"] or (None, None)
    eos = {None: None, "id": value, "frequent": frequent[value] if kind == "frequent" else None,
           "two frequent": [frequent[i] for i in value] if kind == "two frequent" else None}[kind]
    _compare(hf, ours[case["family"]], eos, prompts=case["prompts"], mask=case["mask"], num_beams=case["num_beams"],
             num_return_sequences=case["num_return_sequences"], length_penalty=case["length_penalty"],
             early_stopping=case["early_stopping"], max_new_tokens=case["max_new_tokens"])


@pytest.fixture(scope="module")
def gpt2_real_vocab(tmp_path_factory):
    """(transformers model, the real GPT-2 tokenizer, folder): a tiny random GPT-2 over GPT-2's 50,257 tokens, so
    transformers' StopStringCriteria (which needs a real tokenizer) can run next to ours (shared data)."""
    import json

    from transformers import GPT2TokenizerFast
    files = require_shared("tokenizers", "gpt2")
    lines = (files / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]   # line 0 is "#version: 0.2"
    tokenizer = GPT2TokenizerFast(vocab=json.loads((files / "vocab.json").read_text(encoding="utf-8")),
                                  merges=[tuple(line.split()) for line in lines if line.strip()])
    torch.manual_seed(2)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=None, eos_token_id=None)).eval()
    return hf, tokenizer, _save(hf, tmp_path_factory, "gpt2_real_vocab")


@pytest.mark.parametrize("early_stopping, length_penalty", [(False, 0.0), (True, 1.0), ("never", 2.0)])
def test_beam_search_stop_strings_equal_transformers(gpt2_real_vocab, early_stopping, length_penalty):
    """A candidate whose text ends a stop string is a finished hypothesis, as one ending with EOS: same sequences
    and scores as transformers 5, for a stop string the search actually produces."""
    hf, tokenizer, folder = gpt2_real_vocab
    model = scratch.models.load(folder)
    prompt = np.array([tokenizer.encode("The quick brown fox jumps")], dtype=np.int64)
    T = prompt.shape[1]
    # GPT-2's convention, pad = EOS = <|endoftext|>: with no EOS, transformers would fill ended rows with -1.
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=8, pad_token_id=50256, eos_token_id=50256,
              do_sample=False, length_penalty=length_penalty, early_stopping=early_stopping)
    with torch.no_grad():
        plain = hf.generate(torch.tensor(prompt), **kw).numpy()
    text = tokenizer.decode(plain[0, T:].tolist())
    stop = next(text[i:i + 2] for i in range(len(text) // 3, len(text)) if text[i:i + 2].strip())
    for stops in ([stop], [stop, "\u2603never"]):
        with torch.no_grad():
            ref = hf.generate(torch.tensor(prompt), tokenizer=tokenizer, stop_strings=stops,
                              return_dict_in_generate=True, output_scores=True, **kw)
        out = generate(model, prompt, tokenizer=tokenizer, stop_strings=stops, **kw)
        np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
        np.testing.assert_allclose(out.sequences_scores, ref.sequences_scores.numpy(), rtol=SCORE_RTOL,
                                   atol=SCORE_ATOL)
    assert not np.array_equal(out.sequences, plain), f"the stop string {stop!r} changed nothing"
    if length_penalty == 0.0:   # plain sums of log-probs favour the hypotheses the stop string ended early
        assert any(stop in tokenizer.decode(row[T:].tolist()) for row in out.sequences)
    # Beam sampling shares the rule: every returned row ran to the length limit or ends its stop string.
    sampled = generate(model, prompt, tokenizer=tokenizer, stop_strings=[stop], **{**kw, "do_sample": True, "seed": 0})
    for row in sampled.sequences[:, T:].tolist():
        ended = row.index(50256) if 50256 in row else len(row)
        assert ended == 8 or tokenizer.decode(row[:ended]).find(stop) >= 0, (row, stop)


def test_beam_search_same_on_every_backend(gpt2, backend):
    hf, folder, frequent = gpt2
    model = scratch.models.load(folder, backend=backend)
    reference = scratch.models.load(folder, backend="numpy")
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=8, eos_token_id=frequent[0], pad_token_id=PAD)
    out = generate(model, PROMPTS, attention_mask=MASK, **kw)
    ref = generate(reference, PROMPTS, attention_mask=MASK, **kw)
    np.testing.assert_array_equal(out.sequences, ref.sequences)
    np.testing.assert_allclose(out.sequences_scores, ref.sequences_scores, atol=1e-5, rtol=0)


def test_one_cache_reorder_per_step_at_most(gpt2, monkeypatch):
    """The B * num_beams rows share one cache: one gather per step (the first also expands B -> B * num_beams),
    none when every beam continues its own row."""
    _, folder, _ = gpt2
    model = scratch.models.load(folder, backend="numpy")
    calls = {"reorder": 0, "forward": 0}
    cache_type = type(model.new_cache(1, 4))
    original_reorder = cache_type.reorder

    def counting_reorder(self, indices):
        calls["reorder"] += 1
        return original_reorder(self, indices)

    monkeypatch.setattr(cache_type, "reorder", counting_reorder)
    model_call = type(model).__call__

    def counting_call(self, *args, **kwargs):
        calls["forward"] += 1
        return model_call(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "__call__", counting_call)
    out = generate(model, PROMPTS, attention_mask=MASK, num_beams=4, max_new_tokens=MAX_NEW, pad_token_id=PAD)
    assert out.sequences.shape == (2, PROMPTS.shape[1] + MAX_NEW)
    assert calls["forward"] == MAX_NEW                # prefill + one call per further step, all beams together
    assert 1 <= calls["reorder"] <= calls["forward"] - 1


# ---------------------------------------------------------------------------------------------------------------
# Beam sampling and group beam search: properties
# ---------------------------------------------------------------------------------------------------------------

def test_beam_sample_same_seed_same_tokens_on_every_backend(gpt2, backend):
    _, folder, frequent = gpt2
    kw = dict(do_sample=True, num_beams=3, num_return_sequences=2, max_new_tokens=8, top_k=0,
              eos_token_id=frequent[0], pad_token_id=PAD)
    out = generate(scratch.models.load(folder, backend=backend), PROMPTS, attention_mask=MASK, seed=7, **kw)
    ref = generate(scratch.models.load(folder, backend="numpy"), PROMPTS, attention_mask=MASK, seed=7, **kw)
    np.testing.assert_array_equal(out.sequences, ref.sequences)
    others = {generate(scratch.models.load(folder, backend="numpy"), PROMPTS, attention_mask=MASK, seed=s,
                       **kw).sequences.tobytes() for s in range(4)}
    assert len(others) > 1   # the seed matters


def test_beam_sample_at_tiny_temperature_is_beam_search(gpt2):
    """Temperature divides every log-prob by t, which keeps every ranking beam search uses; as t -> 0 sampling
    K without replacement returns the K best in order. So the sequences equal beam search's and the scores are
    beam search's divided by t."""
    _, folder, frequent = gpt2
    model = scratch.models.load(folder, backend="numpy")
    t = 1e-4
    kw = dict(num_beams=3, num_return_sequences=3, max_new_tokens=MAX_NEW, eos_token_id=frequent[1],
              pad_token_id=PAD, length_penalty=1.0)
    searched = generate(model, PROMPTS, attention_mask=MASK, **kw)
    sampled = generate(model, PROMPTS, attention_mask=MASK, do_sample=True, temperature=t, top_k=0, seed=3, **kw)
    np.testing.assert_array_equal(sampled.sequences, searched.sequences)
    np.testing.assert_allclose(sampled.sequences_scores * t, searched.sequences_scores, rtol=1e-3)


def test_group_beam_search_without_diversity_is_beam_search_per_group(gpt2):
    """diversity_penalty 0: every group is the same beam search of num_beams / num_beam_groups beams. Without EOS
    every hypothesis runs to max_new_tokens, where transformers 4's and 5's bookkeeping agree."""
    _, folder, _ = gpt2
    model = scratch.models.load(folder, backend="numpy")
    kw = dict(max_new_tokens=8, pad_token_id=PAD)
    grouped = generate(model, PROMPTS, attention_mask=MASK, num_beams=4, num_beam_groups=2,
                       num_return_sequences=4, **kw)
    plain = generate(model, PROMPTS, attention_mask=MASK, num_beams=2, num_return_sequences=2, **kw)
    # Each prompt's pool holds each of plain's two hypotheses twice (once per group), best first.
    np.testing.assert_array_equal(grouped.sequences.reshape(2, 4, -1)[:, ::2], plain.sequences.reshape(2, 2, -1))
    np.testing.assert_array_equal(grouped.sequences.reshape(2, 4, -1)[:, 1::2], plain.sequences.reshape(2, 2, -1))
    np.testing.assert_allclose(grouped.sequences_scores.reshape(2, 4)[:, ::2], plain.sequences_scores.reshape(2, 2),
                               atol=1e-5)


def test_group_beam_search_diversity_separates_the_groups(gpt2):
    """A huge diversity penalty forbids group 1 the tokens group 0 chose at the same step: the first generated
    tokens of the returned hypotheses then come from both groups' different choices."""
    _, folder, frequent = gpt2
    model = scratch.models.load(folder, backend="numpy")
    kw = dict(num_beams=2, num_beam_groups=2, num_return_sequences=2, max_new_tokens=6, pad_token_id=PAD)
    plain = generate(model, PROMPTS, attention_mask=MASK, diversity_penalty=0.0, **kw).sequences.reshape(2, 2, -1)
    diverse = generate(model, PROMPTS, attention_mask=MASK, diversity_penalty=1e4, **kw).sequences.reshape(2, 2, -1)
    T = PROMPTS.shape[1]
    assert (plain[:, 0, T] == plain[:, 1, T]).all()       # two groups of one beam: the same greedy path
    assert (diverse[:, 0, T] != diverse[:, 1, T]).all()   # ... unless the second group is pushed off it
    out = generate(model, PROMPTS, attention_mask=MASK, diversity_penalty=0.5, eos_token_id=frequent[0], **kw)
    assert out.sequences.shape[0] == 4 and out.sequences_scores.shape == (4,)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, name", [
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=4, num_beam_groups=3), "num_beam_groups"),
    (dict(num_beams=2, stop_strings="x"), "stop_strings .* pass tokenizer="),
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5, stop_strings="x",
          tokenizer=SimpleNamespace(decode=lambda ids: "")),
     "stop_strings work with .* not with group_beam_search"),
])
def test_bad_settings_name_the_parameter(gpt2, kw, name):
    _, folder, _ = gpt2
    model = scratch.models.load(folder, backend="numpy")
    with pytest.raises(ValueError, match=name):
        generate(model, PROMPTS, attention_mask=MASK, max_new_tokens=3, **kw)
