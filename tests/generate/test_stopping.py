"""Stopping criteria: EOS, length limits and stop strings across token boundaries; rows finish independently.
Stop strings are checked against transformers' StopStringCriteria on the real GPT-2 vocabulary (shared data)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scratch.generate import GenerationConfig
from scratch.generate.stopping import EosToken, MaxLength, MaxNewTokens, StopStrings, any_stop, build_stopping
from tests.conftest import require_shared

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def test_eos_one_or_many_ids_rows_independent(backend):
    ids = backend.asarray([[5, 1, 2], [5, 2, 9], [5, 9, 7]], dtype="int64")
    assert EosToken(2)(ids).tolist() == [True, False, False]
    assert EosToken([2, 7])(ids).tolist() == [True, False, True]
    assert EosToken(2)(backend.asarray(np.zeros((2, 0), np.int64), dtype="int64")).tolist() == [False, False]


def test_length_limits():
    ids = np.zeros((2, 6), np.int64)
    assert MaxLength(6)(ids).tolist() == [True, True]
    assert MaxLength(7)(ids).tolist() == [False, False]
    assert MaxNewTokens(prompt_length=4, max_new_tokens=2)(ids).tolist() == [True, True]
    assert MaxNewTokens(prompt_length=4, max_new_tokens=3)(ids).tolist() == [False, False]


PIECES = ["st", "op", "stop", "opera", "sto", "pper", "las", "topper", "s", "to", "pped", "at", "tion", "x"]


def toy_decode(ids):
    return "".join(PIECES[i] for i in ids)


@pytest.mark.parametrize("pieces, fires", [
    (["st", "op"], True), (["stop"], True), (["st", "opera"], True), (["sto", "pper"], True),
    (["las", "topper"], True), (["s", "to", "pped"], True),
    (["stop", "at"], False), (["st", "op", "at"], False), (["st", "opera", "tion"], False), (["x"], False),
    (["stop", "at", "stop"], True),   # a second occurrence that the newest token completes
])
def test_stop_string_must_overlap_the_last_token(pieces, fires):
    """The positive and negative examples from transformers' StopStringCriteria documentation."""
    ids = np.array([[PIECES.index(p) for p in pieces]], np.int64)
    assert StopStrings("stop", toy_decode)(ids).tolist() == [fires]


def test_stop_string_rows_and_start():
    ids = np.array([[PIECES.index("st"), PIECES.index("op")], [PIECES.index("x"), PIECES.index("op")]], np.int64)
    assert StopStrings(["stop", "xop"], toy_decode)(ids).tolist() == [True, True]
    assert StopStrings(["stop", "xop"], toy_decode, start=1)(ids).tolist() == [False, False]  # prompt skipped


def test_stop_string_split_inside_a_utf8_character():
    """Byte-level tokens can split a character; decoding (with replacement) handles the partial bytes."""
    pieces = [b"price: 5", b"\xe2\x82", b"\xac", b"!"]
    decode = lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")  # noqa: E731
    check = StopStrings("5\u20ac", decode)
    assert check(np.array([[0, 1]], np.int64)).tolist() == [False]      # "price: 5\ufffd": not yet
    assert check(np.array([[0, 1, 2]], np.int64)).tolist() == [True]   # the euro sign completes it
    assert check(np.array([[0, 1, 2, 3]], np.int64)).tolist() == [False]


def brute_force(text_pieces: list[str], stop: str) -> bool:
    """The definition: some occurrence of `stop` in the text ends inside the last piece."""
    text = "".join(text_pieces)
    before = len("".join(text_pieces[:-1]))
    return any(text.startswith(stop, i) and i + len(stop) > before for i in range(len(text)))


@given(st.lists(st.integers(0, len(PIECES) - 1), min_size=1, max_size=6),
       st.sampled_from(["stop", "op", "s", "pst", "tops", "atx"]))
def test_stop_strings_match_the_definition(ids, stop):
    assert StopStrings(stop, toy_decode)(np.array([ids], np.int64))[0] == brute_force([PIECES[i] for i in ids], stop)


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    import json

    from transformers import GPT2TokenizerFast
    folder = require_shared("tokenizers", "gpt2")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]   # line 0 is "#version: 0.2"
    merges = [tuple(line.split()) for line in lines if line.strip()]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert len(tokenizer) == 50257
    return tokenizer


STOPS = ["stop", "\n\n", " end", "op"]
WORDS = ["st", "op", "stop", "opera", "sto", "pper", "las", "top", "s", "to", "pped", "at", " end", "end", "\n",
         "\n\n", " ", "x", "tion", "ed", " st", "e", "n", "d"]


@lru_cache(maxsize=None)
def _transformers_criteria(tokenizer, stops: tuple):
    """transformers' StopStringCriteria, built once per set of stop strings (it preprocesses the whole vocabulary)."""
    from transformers.generation.stopping_criteria import StopStringCriteria
    return StopStringCriteria(tokenizer, list(stops))


@settings(deadline=None)
@given(data=st.data())
def test_stop_strings_match_transformers_on_gpt2(gpt2_tokenizer, data):
    token_ids = [gpt2_tokenizer.convert_tokens_to_ids(gpt2_tokenizer.tokenize(w))[0] for w in WORDS
                 if len(gpt2_tokenizer.tokenize(w)) == 1]
    rows = data.draw(st.lists(st.lists(st.sampled_from(token_ids), min_size=1, max_size=6), min_size=1,
                              max_size=3).filter(lambda r: len({len(x) for x in r}) == 1))
    stops = data.draw(st.lists(st.sampled_from(STOPS), min_size=1, max_size=2, unique=True))
    ids = np.array(rows, np.int64)
    want = _transformers_criteria(gpt2_tokenizer, tuple(stops))(torch.from_numpy(ids), None).numpy()
    got = StopStrings(stops, lambda t: gpt2_tokenizer.decode(t))(ids)
    np.testing.assert_array_equal(got, want, err_msg=str([gpt2_tokenizer.decode(r) for r in rows]))


def test_any_stop_and_build_stopping():
    config = GenerationConfig(max_new_tokens=3, eos_token_id=[0, 1], stop_strings=["op"])
    criteria = build_stopping(config, prompt_length=2, decode=toy_decode)
    assert [type(c).__name__ for c in criteria] == ["MaxLength", "EosToken", "StopStrings"]
    ids = np.array([[2, 5, 0], [2, 5, 1], [2, 5, 13]], np.int64)   # EOS 0 (also "st"+"op"), EOS 1, neither
    assert any_stop(criteria, ids).tolist() == [True, True, False]
    assert any_stop(criteria, np.array([[2, 5, 13, 13, 13]], np.int64)).tolist() == [True]   # 3 new tokens
    with pytest.raises(ValueError, match="decode"):
        build_stopping(config, prompt_length=2)
    assert build_stopping(GenerationConfig(), prompt_length=3)[0].max_length == 20


def test_per_row_starts_and_undecided_rows():
    """One start per row keeps each row's left padding out of the text; only the undecided rows are decoded."""
    st_, op, x = PIECES.index("st"), PIECES.index("op"), PIECES.index("x")
    ids = np.array([[st_, op], [x, op]], np.int64)
    assert StopStrings("stop", toy_decode, start=[0, 1])(ids).tolist() == [True, False]
    assert StopStrings("xop", toy_decode, start=[0, 1])(ids).tolist() == [False, False]   # "x" is row 1's padding
    decoded = []
    counting = StopStrings("stop", lambda t: decoded.append(t) or toy_decode(t))
    assert counting(ids, np.array([False, True])).tolist() == [False, False]   # row 0 not asked: answers False
    assert decoded == [[x, op], [x]]                  # only row 1 was decoded, with and without its last token


def test_any_stop_keeps_finished_rows_and_asks_only_the_rest():
    asked = []

    def spy(input_ids, undecided=None):
        asked.append(undecided.tolist())
        return np.zeros(input_ids.shape[0], dtype=bool)
    ids = np.array([[2, 5, 0], [2, 5, 9], [2, 5, 9]], np.int64)
    done = any_stop([EosToken(0), spy], ids, finished=np.array([False, True, False]))
    assert done.tolist() == [True, True, False] and asked == [[False, False, True]]
    assert any_stop([MaxLength(3), spy], ids).tolist() == [True, True, True] and len(asked) == 1   # all done


def test_bad_arguments():
    with pytest.raises(ValueError, match="eos_token_id"):
        EosToken([])
    with pytest.raises(ValueError, match="max_length.*0"):
        MaxLength(0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        MaxNewTokens(3, 0)
    with pytest.raises(ValueError, match="stop_strings"):
        StopStrings("", toy_decode)
    with pytest.raises(ValueError, match="decode"):
        StopStrings("x", None)
