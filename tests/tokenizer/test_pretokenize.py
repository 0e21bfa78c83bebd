"""Pre-tokenization: the published patterns lose no text and split as published, regex sequences follow Hugging
Face's Split(behavior="isolated"), and overlong runs are cut Meta-style only when a chunk would be too long."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Regex, pre_tokenizers

from scratch.tokenizer.pretokenize import (PATTERNS, compile_pattern, pretokenize, resolve_pattern, split_isolated,
                                           split_long_runs)

TEXT = st.text(max_size=200) | st.text(alphabet=" \t\n\r1234567890abcAB,.'!é한🎉", max_size=200)


@pytest.mark.parametrize("name", sorted(PATTERNS))
@given(text=TEXT)
def test_builtin_patterns_keep_every_character(name, text):
    assert "".join(pretokenize(text, name)) == text


def test_published_splits():
    assert pretokenize("Hello world, it's 2024!", "gpt4") == ["Hello", " world", ",", " it", "'s", " ", "202", "4", "!"]
    assert pretokenize("Hello world, it's 2024!", "gpt2") == ["Hello", " world", ",", " it", "'s", " 2024", "!"]
    assert pretokenize("I'LL  go\n\n", "llama3") == ["I", "'LL", " ", " go", "\n\n"]
    assert pretokenize("HelloWorld's", "o200k") == ["Hello", "World's"]


def test_resolve_pattern():
    assert resolve_pattern("gpt4") == PATTERNS["gpt4"] == PATTERNS["cl100k"]
    assert resolve_pattern(r"\w+") == r"\w+"
    assert resolve_pattern(["gpt2", r"\d"]) == (PATTERNS["gpt2"], r"\d")
    with pytest.raises(ValueError, match=r"invalid pre-tokenizer regex '\(oops'"):
        resolve_pattern("(oops")
    with pytest.raises(ValueError, match="at least one regex"):
        resolve_pattern(())
    with pytest.raises(ValueError, match="pattern must be"):
        resolve_pattern(3)


SEQUENCE = (r"\p{N}{1,3}", r"[^\s\p{L}\p{N}]+", r"\s+")


# Latin-1 plus a few characters only: the two regex engines ship different Unicode versions (U+12550 is a number
# to one of them and not the other), which is not what this test is about.
@given(st.text(alphabet=" \t\n12345abcXY,.!?é한🎉", max_size=80) | st.text(st.characters(codec="latin-1"), max_size=60))
def test_regex_sequence_is_hugging_face_isolated_split(text):
    reference = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), behavior="isolated") for p in SEQUENCE])
    expected = [piece for piece, _ in reference.pre_tokenize_str(text)]
    assert pretokenize(text, SEQUENCE) == expected
    assert "".join(pretokenize(text, SEQUENCE)) == text


def test_isolated_split_by_hand():
    assert split_isolated(["ab12cd345", "x"], compile_pattern(r"\d+")) == ["ab", "12", "cd", "345", "x"]
    # subtle: an empty match still cuts (as in Hugging Face): "z*" matches between every two characters
    assert split_isolated(["abc"], compile_pattern(r"z*")) == ["a", "b", "c"]
    assert pretokenize("ab12c", (r"\d*",)) == ["a", "b", "12", "c"]


@given(st.text(alphabet=" \na,", max_size=80), st.integers(1, 6))
def test_split_long_runs(text, max_run):
    pieces = split_long_runs(text, max_run)
    assert "".join(pieces) == text
    for piece in pieces:
        run = 1
        for before, char in zip(piece, piece[1:]):
            run = run + 1 if before.isspace() == char.isspace() else 1
            assert run <= max_run


def test_long_runs_are_cut_only_when_a_chunk_would_be_too_long():
    # a 12-letter word is one chunk longer than max_run=5: the text is cut Meta-style first
    assert pretokenize("abcdefghijkl xy", "gpt4", max_run=5) == ["abcde", "fghij", "kl", " xy"]
    # a long run of short chunks needs no cutting: the chunks are tiktoken's
    assert pretokenize("a,a,a,a,a,a", "gpt4", max_run=5) == pretokenize("a,a,a,a,a,a", "gpt4")
    spaces = pretokenize(" " * 12 + "x", "gpt4", max_run=5)
    assert "".join(spaces) == " " * 12 + "x" and max(map(len, spaces)) <= 5
    assert pretokenize("1234567x", (r"\d+",), max_run=3) == ["123", "456", "7", "x"]


# The fast GPT-4 splitter against the published regex (its oracle). Whitespace-heavy alphabets, with the
# characters where str.isspace and the regex's \s disagree (\x1c-\x1f), and trailing runs.
_WS_TEXT = st.lists(st.sampled_from(list(" \t\n\r\x0b\x0c\x1c\x1d\x85\u00a0\u2028ab1.'") + ["'s", "\U0001F600"]),
                    max_size=30).map("".join)


@given(st.one_of(_WS_TEXT, st.text(max_size=40)))
def test_fast_gpt4_splitter_equals_the_published_regex(text):
    from scratch.tokenizer.pretokenize import PATTERNS, compile_pattern, gpt4_findall_fast

    assert gpt4_findall_fast(text) == compile_pattern(PATTERNS["gpt4"]).findall(text)


def test_fast_gpt4_splitter_joins_trailing_whitespace():
    from scratch.tokenizer.pretokenize import gpt4_findall_fast

    assert gpt4_findall_fast("a \n ") == ["a", " \n "]
    assert gpt4_findall_fast("a\n \x1c") == ["a", "\n", " \x1c"]
