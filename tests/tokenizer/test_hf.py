"""Hugging Face format: the byte-to-unicode table, reading tokenizer.json / vocab.json + merges.txt, writing a
tokenizer.json that the `tokenizers` library loads and that encodes and decodes exactly as we do."""
from __future__ import annotations

import json
from functools import lru_cache

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from scratch.tokenizer.bpe import BPETokenizer
from scratch.tokenizer.hf import (HFTokenizer, bytes_to_token, bytes_to_unicode, from_hf, to_hf, to_hf_json,
                                  token_to_bytes, unicode_to_bytes)
from tests.conftest import require_shared

CORPUS = ("The quick brown fox jumps over the lazy dog. It's 2024; we've 12345 apples, they'll eat 7 of them!\n"
          "    def f(x):\n        return x ** 2  # squared\n\n"
          "Ünïcödé façade naïve café — 日本語のテキスト, 中文文本, русский текст, 🦙🚀 emoji!!! "
          "Numbers: 3.14159 2.71828 1,000,000 and words words words. ") * 8

# Varied text: words, digits runs, whitespace runs, newlines, contractions, punctuation, accents, CJK, emoji.
TEXT = st.lists(st.one_of(
    st.sampled_from([" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "0", "42", "2024", "12345", "abc", "Hello",
                     " world", "'s", "'LL", "don't", "é", "ü", "naïve", "中文", "🦙", "😶\u200d🌫️", "\u00a0", "!!",
                     "...", "—", "<|endoftext|>", "½", "²", "м"]),
    # subtle: no code point unassigned in Python's Unicode tables (category Cn): the `regex` package's newer Unicode
    # makes some of them letters (U+3D000), the tokenizers library's older one does not, so the pre-tokenizers
    # split them apart -- a difference of Unicode versions, not of BPE.
    st.characters(codec="utf-8", exclude_categories=["Cn"])), max_size=20).map("".join)


def trained(pattern: str, ignore_merges: bool = True) -> BPETokenizer:
    return _trained(pattern, ignore_merges)


@lru_cache(maxsize=None)
def _trained(pattern: str, ignore_merges: bool) -> BPETokenizer:
    tok = BPETokenizer.train(CORPUS, 700, pattern=pattern, special_tokens=["<|endoftext|>"])
    return BPETokenizer(tok.vocab, tok.merges, pattern, tok.special_tokens, ignore_merges=ignore_merges)


@lru_cache(maxsize=None)
def gpt2() -> HFTokenizer:
    return from_hf(require_shared("tokenizers", "gpt2"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """written(key) -> (ours, the tokenizers library's Tokenizer loaded from the tokenizer.json we wrote), where
    key is "gpt2-vocab" (the real GPT-2 vocabulary) or "pattern:ignore_merges" (a small trained one)."""
    cache = {}

    def get(key: str):
        if key not in cache:
            if key == "gpt2-vocab":
                ours = gpt2()
            else:
                pattern, ignore = key.split(":")
                ours = trained(pattern, ignore == "True")
            path = to_hf(ours, tmp_path_factory.mktemp("hf") / "tokenizer.json")
            cache[key] = ours, Tokenizer.from_file(str(path))
        return cache[key]

    return get


# ---- the byte-to-unicode table ---------------------------------------------------------------------------------

def test_byte_to_unicode_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā" and table[0xAD] == "Ń"
    for byte in [*range(33, 127), *range(161, 173), *range(174, 256)]:
        assert table[byte] == chr(byte)  # printable Latin-1 stands for itself
    assert unicode_to_bytes()["Ġ"] == 0x20
    assert token_to_bytes("Ġworld") == b" world"
    assert token_to_bytes("Ã©") == "é".encode("utf-8")  # UTF-8 "é" is two bytes, two stand-ins
    assert token_to_bytes("é") == b"\xe9"
    assert token_to_bytes("  ") is None  # a raw space is not in the alphabet
    assert bytes_to_token(bytes(range(256))) == "".join(table[b] for b in range(256))


# ---- writing: the tokenizers library loads our file and agrees ---------------------------------------------------

@pytest.mark.parametrize("key", ["gpt2:True", "gpt4:True", "llama3:True", "gpt2:False", "gpt4:False"])
def test_written_tokenizer_json_loads_and_agrees_on_corpus(written, key):
    ours, theirs = written(key)
    for line in CORPUS.splitlines()[:8]:
        assert theirs.encode(line, add_special_tokens=False).ids == ours.encode_ordinary(line)


@pytest.mark.parametrize("key", ["gpt2:True", "gpt4:True", "llama3:True", "gpt2:False"])
@given(text=TEXT)
def test_written_tokenizer_json_agrees(written, key, text):
    ours, theirs = written(key)
    ids = ours.encode(text, allowed_special="all")
    assert theirs.encode(text, add_special_tokens=False).ids == ids
    assert theirs.decode(ids, skip_special_tokens=False) == ours.decode(ids)


@given(text=TEXT)
def test_written_gpt2_vocabulary_agrees(written, text):
    ours, theirs = written("gpt2-vocab")
    ids = ours.encode(text)
    assert theirs.encode(text, add_special_tokens=False).ids == ids
    assert theirs.decode(ids, skip_special_tokens=False) == ours.decode(ids) == text


def test_written_file_shape(tmp_path):
    data = to_hf_json(trained("gpt4"))
    assert data["model"]["type"] == "BPE" and data["model"]["ignore_merges"] is True
    assert data["decoder"]["type"] == "ByteLevel"
    assert [step["type"] for step in data["pre_tokenizer"]["pretokenizers"]] == ["Split", "ByteLevel"]
    assert data["added_tokens"][0]["content"] == "<|endoftext|>" and data["added_tokens"][0]["special"]
    path = to_hf(trained("gpt4"), tmp_path / "tokenizer.json")
    assert path.exists() and not list(tmp_path.glob("*.tmp"))  # atomic: no temporary file left


# ---- reading ---------------------------------------------------------------------------------------------------

def test_round_trip_through_tokenizer_json(tmp_path):
    ours = trained("llama3")
    to_hf(ours, tmp_path)
    back = from_hf(tmp_path)  # a folder holding tokenizer.json
    assert back.vocab == ours.vocab and back.merges == ours.merges and back.special_tokens == ours.special_tokens
    assert back.ignore_merges == ours.ignore_merges
    for line in CORPUS.splitlines()[:6]:
        assert back.encode(line) == ours.encode(line)


def test_merges_as_strings_or_pairs(tmp_path):
    data = to_hf_json(trained("gpt2"))
    pairs_path = tmp_path / "pairs.json"
    pairs_path.write_text(json.dumps(data), encoding="utf-8")
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]  # the older "a b" form
    strings_path = tmp_path / "strings.json"
    strings_path.write_text(json.dumps(data), encoding="utf-8")
    a, b = from_hf(pairs_path), from_hf(strings_path)
    assert a.merges == b.merges == trained("gpt2").merges
    assert Tokenizer.from_file(str(strings_path)).encode("hello world").ids == a.encode("hello world")


def test_vocab_json_and_merges_txt(tmp_path):
    ours = trained("gpt2")
    data = to_hf_json(ours)
    vocab = {**data["model"]["vocab"], "<|endoftext|>": ours.special_tokens["<|endoftext|>"]}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = "\n".join(" ".join(pair) for pair in data["model"]["merges"]) + "\n"
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    tok = from_hf(tmp_path)
    assert tok.merges == ours.merges and tok.special_tokens == ours.special_tokens
    assert tok.encode("hello world<|endoftext|>") == ours.encode("hello world<|endoftext|>", allowed_special="all")
    (tmp_path / "merges.txt").write_text(merges, encoding="utf-8")  # the version line is optional
    assert from_hf(tmp_path).merges == ours.merges


def test_real_gpt2_pre_tokenizer_from_tokenizer_json(tmp_path):
    # GPT-2's own tokenizer.json: ByteLevel(use_regex=True) pre-tokenizer, no Split
    data = to_hf_json(gpt2())
    data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tok = from_hf(path)
    text = "Hello world, it's 2024!  \n\n  🦙"
    assert tok.encode(text) == gpt2().encode(text) == Tokenizer.from_file(str(path)).encode(text).ids


@pytest.fixture(scope="module")
def nfc_pair(tmp_path_factory):
    """A GPT-NeoX-like file: NFC normalizer + GPT-2 pre-tokenizer; (ours read from it, tokenizers' view of it)."""
    data = to_hf_json(trained("gpt2", False))
    data["normalizer"] = {"type": "NFC"}
    path = tmp_path_factory.mktemp("nfc") / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return from_hf(path), Tokenizer.from_file(str(path))


@given(text=st.lists(st.sampled_from(["e", "\u0301", "é", "e\u0301", "Å", "\u212b", "ﬁ", " ", "x", "한", "\u1100\u1161",
                                      "<|endoftext|>"]), max_size=12).map("".join))
def test_nfc_normalizer_agrees_with_tokenizers(nfc_pair, text):
    ours, theirs = nfc_pair
    assert ours.normalizer == "NFC"
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids


def test_nfc_normalizer_written_back(nfc_pair):
    assert to_hf_json(nfc_pair[0])["normalizer"] == {"type": "NFC"}


def test_added_tokens_are_matched_hf_style():
    tok = gpt2()
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]  # Hugging Face matches added tokens by default
    assert tok.encode("a<|endoftext|>b", allowed_special=()) == tok.encode_ordinary("a<|endoftext|>b")
    assert tok.decode([50256]) == "<|endoftext|>"


# ---- bad input -----------------------------------------------------------------------------------------------

def _variant(tmp_path, change) -> str:
    data = to_hf_json(trained("gpt2"))
    change(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["model"].update(type="WordPiece"), "WordPiece"),
    (lambda d: d["model"].update(type="Unigram"), "Unigram"),
    (lambda d: d.update(decoder={"type": "Metaspace", "replacement": "▁"}), "Metaspace"),
    (lambda d: d.update(decoder=None), "decoder None"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "Whitespace"),
    (lambda d: d.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": " "}, "behavior": "Removed",
                                       "invert": False}), "Removed"),
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "Lowercase"),
    (lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}),
     "Sequence"),
    (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda d: d["model"]["merges"].append(["Ġzzzz", "q"]), "merge"),
])
def test_rejects_what_is_not_byte_level_bpe(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        from_hf(_variant(tmp_path, change))


def test_truncated_tokenizer_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(to_hf_json(trained("gpt2")))[:5000], encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json.*truncated"):
        from_hf(path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        from_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such"):
        from_hf(tmp_path / "nope.json")


def test_bad_merges_txt_line(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merges.txt:2"):
        from_hf(tmp_path)
