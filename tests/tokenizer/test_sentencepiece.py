"""SentencePiece BPE: exact ids on the Llama 2 and Phi-3 vocabularies, agreement with the `sentencepiece` package,
reference merge loop == priority-queue merge loop, and clear errors on malformed models."""
from __future__ import annotations

import json
from functools import lru_cache

import pytest
import sentencepiece
from hypothesis import given
from hypothesis import strategies as st

from scratch.tokenizer.sentencepiece import (BYTE, CONTROL, NORMAL, SPACE, UNKNOWN, USER_DEFINED,
                                             SentencePieceBPE, iter_fields, parse_model_proto)
from tests.conftest import require_shared


@lru_cache(maxsize=None)
def llama2() -> SentencePieceBPE:
    return SentencePieceBPE.from_file(require_shared("tokenizers", "llama2", "tokenizer.model"))


@lru_cache(maxsize=None)
def llama2_reference() -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(
        model_file=str(require_shared("tokenizers", "llama2", "tokenizer.model")))


@lru_cache(maxsize=None)
def from_tokens_json(name: str) -> SentencePieceBPE:
    with open(require_shared("tokenizers", name, "tokens.json"), encoding="utf-8") as f:
        return SentencePieceBPE.from_pieces(json.load(f))


def cases(name: str) -> list[dict]:
    with open(require_shared("tokenizers", name, "tests.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# Text that exercises the hard cases: whitespace runs, digits, accents, CJK, emoji with joiners, rare characters
# (byte fallback), the marker characters themselves, and runs of one character -- where one piece can be merged at
# several places with the same score, so leftmost-first decides ("aaaa" is "▁a", "aa", "a", not "▁aa", "aa").
TEXT = st.lists(st.one_of(
    st.sampled_from([" ", "  ", "   ", "\t", "\n", "\r\n", "0", "42", "2024", "abc", "Hello", " world", "'s", "é",
                     "ü", "中文", "🦙", "😶\u200d🌫️", "\u00a0", "\u3000", SPACE, "<s>", "</s>", "<0x41>"]),
    st.builds(lambda char, n: char * n, st.sampled_from("abcx0.-=é中"), st.integers(2, 9)),
    st.characters(codec="utf-8")), max_size=25).map("".join)


# ---- exactness on the shared vocabularies --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama2", "phi-3"])
def test_reference_ids(name):
    tok = llama2() if name == "llama2" else from_tokens_json(name)
    mismatches = [(case["text"], tok.encode(case["text"]), case["ids"]) for case in cases(name)
                  if tok.encode(case["text"]) != case["ids"]]
    assert len(cases(name)) == 46
    assert mismatches == []


def test_tokens_json_table_equals_model_file():
    assert from_tokens_json("llama2").pieces == llama2().pieces
    assert [case["ids"] for case in cases("llama2")] == [from_tokens_json("llama2").encode(c["text"])
                                                         for c in cases("llama2")]


@pytest.mark.parametrize("name", ["llama2", "phi-3"])
def test_reference_decode(name):
    tok = llama2() if name == "llama2" else from_tokens_json(name)
    for case in cases(name):
        assert tok.decode(case["ids"]) == case["text"]


def test_parsed_model_matches_sentencepiece():
    ours, ref = llama2(), llama2_reference()
    assert ours.n_vocab == ref.get_piece_size() == 32000
    assert (ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id) == (ref.unk_id(), ref.bos_id(), ref.eos_id(),
                                                                    ref.pad_id())
    for i in range(0, ours.n_vocab, 97):
        assert ours.id_to_piece(i) == ref.id_to_piece(i)
        assert ours.scores[i] == pytest.approx(ref.get_score(i), abs=0)
        assert (ours.types[i] == CONTROL) == ref.is_control(i)
        assert (ours.types[i] == BYTE) == ref.is_byte(i)
        assert (ours.types[i] == UNKNOWN) == ref.is_unknown(i)
    assert ours.normalizer.add_dummy_prefix and not ours.normalizer.remove_extra_whitespaces
    assert ours.trainer.byte_fallback


def test_special_ids_and_pieces():
    tok = llama2()
    assert tok.encode("Hello world") == [15043, 3186]
    assert tok.encode_pieces("Hello world") == [SPACE + "Hello", SPACE + "world"]
    assert tok.encode("Hello", add_bos=True, add_eos=True) == [1, 15043, 2]
    assert tok.piece_to_id("<s>") == 1 and tok.piece_to_id("no such piece") == tok.unk_id == 0
    assert tok.id_to_piece(3 + 0x41) == "<0x41>"
    assert tok.encode("<s>") != [1]  # control pieces typed as text are text, as in sentencepiece
    assert tok.decode([1, 15043, 2]) == "Hello"
    assert tok.decode_bytes([3 + 0xF0, 3 + 0x9F]) == b"\xf0\x9f"  # partial UTF-8 survives in bytes
    assert tok.token_bytes(15043) == b" Hello" and tok.token_bytes(3 + 0xF0) == b"\xf0" and tok.token_bytes(1) == b""


# ---- agreement with the sentencepiece package (hypothesis) ---------------------------------------------------

@given(TEXT)
def test_encode_matches_sentencepiece(text):
    assert llama2().encode(text) == llama2_reference().encode(text)


@given(TEXT)
def test_decode_roundtrip_matches_sentencepiece(text):
    ids = llama2().encode(text)
    assert llama2().decode(ids) == llama2_reference().decode(ids)
    if SPACE not in text:  # a literal "▁" in the text comes back as " ", in sentencepiece too
        assert llama2().decode(ids) == text


@given(st.lists(st.one_of(st.integers(0, 31999), st.integers(0, 258), st.sampled_from([29871, 259, 1, 2, 0])),
                max_size=10))
def test_decode_any_ids_matches_sentencepiece(ids):
    # covers control pieces, <unk> (" ⁇ "), invalid UTF-8 from byte pieces and the dummy-prefix rule
    assert llama2().decode(ids) == llama2_reference().decode(ids)


@given(TEXT)
def test_fast_merge_equals_reference_loop(text):
    tok = llama2()
    assert tok.encode(text) == tok.encode(text, reference=True)


@given(TEXT)
def test_heap_merge_equals_plain_loop_on_whole_text(text):
    tok = llama2()
    symbols, frozen = tok._initial_symbols(tok.normalize(text))
    assert tok.merge_fast(symbols, frozen) == tok.merge_reference(symbols, frozen)


@given(TEXT)
def test_user_defined_pieces_fast_equals_reference(text):
    tok = from_tokens_json("phi-3")  # "</s>" is a user-defined piece there
    text = text + "</s>" + text
    assert tok.encode(text) == tok.encode(text, reference=True)


def test_word_cache_path_is_used_for_llama2():
    assert llama2()._word_split  # every Llama 2 piece is a run of "▁" then text without "▁"


def test_long_text_fast_equals_reference():
    text = "The quick brown fox 🦙 jumps over 12345 lazy dogs. " * 20
    tok = llama2()
    assert tok.encode(text) == tok.encode(text, reference=True) == llama2_reference().encode(text)


# ---- other normalizer settings: the Llama 2 model with one NormalizerSpec field rewritten ------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, value) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(value)) + value if wire == 2 else _varint(value) if wire == 0
                  else value.to_bytes(4 if wire == 5 else 8, "little"))


@pytest.fixture(scope="module", params=[(4, 1), (3, 0)], ids=["remove_extra_whitespaces", "no_dummy_prefix"])
def rewritten(request, tmp_path_factory):
    number, value = request.param
    data = require_shared("tokenizers", "llama2", "tokenizer.model").read_bytes()
    out = bytearray()
    for n, wire, v in iter_fields(data):
        if n == 3:  # NormalizerSpec: replace (or add) field `number`
            spec = b"".join(_field(m, w, x) for m, w, x in iter_fields(v) if m != number)
            v = spec + _field(number, 0, value)
        out += _field(n, wire, v)
    path = tmp_path_factory.mktemp("spm") / "rewritten.model"
    path.write_bytes(bytes(out))
    return SentencePieceBPE.from_file(path), sentencepiece.SentencePieceProcessor(model_file=str(path))


@given(TEXT)
def test_other_normalizer_settings_match_sentencepiece(rewritten, text):
    ours, ref = rewritten
    ids = ref.encode(text)
    assert ours.encode(text) == ids
    assert ours.decode(ids) == ref.decode(ids)


@given(st.lists(st.one_of(st.integers(0, 31999), st.integers(0, 258), st.sampled_from([29871, 259, 1, 2, 0])),
                max_size=10))
def test_other_normalizer_settings_decode_like_sentencepiece(rewritten, ids):
    ours, ref = rewritten
    assert ours.decode(ids) == ref.decode(ids)


# ---- small synthetic vocabularies: scores, ties, user-defined, unused, no byte fallback --------------------------

def toy(extra: list[tuple[str, float, int]], **kwargs) -> SentencePieceBPE:
    base = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    chars = [(c, -100.0, NORMAL) for c in SPACE + "abcd"]
    return SentencePieceBPE.from_pieces(base + chars + extra, **kwargs)


def test_highest_score_merges_first_and_leftmost_wins_ties():
    tok = toy([("ab", -1.0, NORMAL), ("bc", -0.5, NORMAL), (SPACE + "a", -5.0, NORMAL)], add_dummy_prefix=False)
    assert tok.encode_pieces("abc") == ["a", "bc"]  # bc outscores ab
    tok = toy([("aa", -1.0, NORMAL)], add_dummy_prefix=False)
    assert tok.encode_pieces("aaa") == ["aa", "a"]  # tie: leftmost pair


def test_user_defined_pieces_match_whole_and_unknown_runs_collapse():
    tok = toy([("cd", -1.0, NORMAL), ("<x>", 0.0, USER_DEFINED)], add_dummy_prefix=False)
    assert tok.encode_pieces("c<x>d") == ["c", "<x>", "d"]
    assert tok.encode("zzz") == [tok.unk_id]  # no byte pieces: a run of unknown characters is one <unk>
    assert tok.decode(tok.encode("azzzb")) == "a \u2047 b"


def test_unused_piece_is_merged_through_but_split_back():
    tok = toy([("ab", -1.0, 5), ("abc", -0.5, NORMAL), ("abd", 0.0, NORMAL)], add_dummy_prefix=False)
    assert tok.encode_pieces("abc") == ["abc"]
    assert tok.encode_pieces("ab") == ["a", "b"]


# ---- bad input -----------------------------------------------------------------------------------------------

def test_truncated_model_file_names_the_file(tmp_path):
    data = require_shared("tokenizers", "llama2", "tokenizer.model").read_bytes()
    path = tmp_path / "cut.model"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.model.*truncated"):
        SentencePieceBPE.from_file(path)


def test_text_file_is_named_as_not_a_model():
    with pytest.raises(ValueError, match="tokenizer.model.*not a sentencepiece"):
        SentencePieceBPE.from_file(require_shared("tokenizers", "llama3", "tokenizer.model"))  # tiktoken ranks


def test_malformed_protobuf_errors():
    with pytest.raises(ValueError, match="truncated"):
        list(iter_fields(b"\x0a\x05ab", "x.model"))
    with pytest.raises(ValueError, match="wire type 3"):
        list(iter_fields(b"\x0b", "x.model"))
    with pytest.raises(ValueError, match="no pieces"):
        parse_model_proto(b"", "empty.model")


def test_unigram_model_is_rejected():
    # ModelProto{pieces: [{piece: "a"}], trainer_spec: {model_type: UNIGRAM}}
    data = b"\x0a\x03\x0a\x01a" + b"\x12\x02\x18\x01"
    pieces, trainer, normalizer = parse_model_proto(data, "u.model")
    with pytest.raises(ValueError, match="UNIGRAM"):
        SentencePieceBPE(pieces, trainer=trainer, normalizer=normalizer, source="u.model")


def test_bad_ids_are_rejected():
    with pytest.raises(ValueError, match="32000"):
        llama2().decode([32000])
    with pytest.raises(ValueError, match="-1"):
        llama2().id_to_piece(-1)
