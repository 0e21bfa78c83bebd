"""The real byte-level BPE vocabularies in ../shared/data/tokenizers (GPT-2, StarCoder, Refact, Falcon, MPT,
DeepSeek Coder, DeepSeek LLM): every reference string gives exactly the listed ids, decode(encode(s)) == s, and the
`tokenizers` library -- reading vocab.json + merges.txt itself and running each model's own pre-tokenizer -- agrees
with us on generated text."""
from __future__ import annotations

import json
from functools import lru_cache

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from tokenizers import Tokenizer, models

from scratch.tokenizer.hf import GPT2, PRE_TOKENIZERS, HFTokenizer, from_hf, to_hf, to_hf_json, to_oniguruma
from tests.conftest import require_shared

NAMES = ["gpt2", "starcoder", "refact", "falcon", "mpt", "deepseek-coder", "deepseek-llm"]


@lru_cache(maxsize=None)
def load(name: str) -> HFTokenizer:
    return from_hf(require_shared("tokenizers", name))


def cases(name: str) -> list[dict]:
    with open(require_shared("tokenizers", name, "tests.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# Each model's pre_tokenizer as its own tokenizer.json has it (the `tokenizers` library runs these steps itself,
# so this checks our regex transcription, including Falcon's digit splits on the byte-level text).
def _split(pattern: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": to_oniguruma(pattern)}, "behavior": "Isolated", "invert": False}


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_BYTE_LEVEL_NO_REGEX = {**_BYTE_LEVEL, "use_regex": False}
_DIGITS = {"type": "Digits", "individual_digits": True}
HF_PRE_TOKENIZERS = {
    "gpt2": _BYTE_LEVEL,
    "mpt": _BYTE_LEVEL,
    "starcoder": {"type": "Sequence", "pretokenizers": [_DIGITS, _BYTE_LEVEL]},
    "refact": {"type": "Sequence", "pretokenizers": [_DIGITS, _BYTE_LEVEL]},
    "falcon": {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "Contiguous"}, _BYTE_LEVEL,
        {"type": "Digits", "individual_digits": False}, _split("[0-9][0-9][0-9]")]},
    "deepseek-coder": {"type": "Sequence", "pretokenizers": [
        *map(_split, PRE_TOKENIZERS["deepseek-coder"][:-1]), _DIGITS, _BYTE_LEVEL_NO_REGEX]},
    "deepseek-llm": {"type": "Sequence", "pretokenizers": [
        *map(_split, PRE_TOKENIZERS["deepseek-llm"][:-1]), _DIGITS, _BYTE_LEVEL_NO_REGEX]},
}


@lru_cache(maxsize=None)
def reference(name: str) -> Tokenizer:
    """The `tokenizers` library's own reading of the model's files -- not ours: its BPE model from vocab.json +
    merges.txt (BPE.from_file), the special and user-defined tokens from the type table tokens.json (types 3 and 4,
    at their ids; GPT-2's from meta.json), the model's own pre-tokenizer and a ByteLevel decoder. A token or merge our reader loses or
    reorders then shows as a different encoding."""
    folder = require_shared("tokenizers", name)
    bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    data = json.loads(Tokenizer(bpe).to_str())
    if (folder / "tokens.json").exists():
        with open(folder / "tokens.json", encoding="utf-8") as f:
            added = [(token_id, text, kind == 3) for token_id, (text, kind, _) in enumerate(json.load(f))
                     if kind in (3, 4)]
    else:                                                   # GPT-2's folder: meta.json lists its one control token
        with open(folder / "meta.json", encoding="utf-8") as f:
            added = [(token_id, text, True) for token_id, text in json.load(f)["control_or_user_defined_tokens"]]
    data["added_tokens"] = [{"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": special} for token_id, text, special in added]
    data["pre_tokenizer"] = HF_PRE_TOKENIZERS[name]
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data["model"]["ignore_merges"] = False  # what these models' tokenizer.json files say (the default)
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


TEXT = st.lists(st.one_of(
    st.sampled_from([" ", "  ", "    ", "\t", "\n", "\n\n", "\r\n", " \n ", "3", "42", "2024", "1234567", "abc",
                     "Hello", " world", "'s", "'LL", "don't", "ü", "Führer", "naïve", "½", "²", "м", "Български", "中文", "日本語",
                     "한국어", "🦙", "😶\u200d🌫️", "\u00a0", "!!", "...", "—", "（", "：", "‘", "$+<=>^`|~", "Ὗ", "K"]),
    # subtle: no code point unassigned in Python's Unicode tables (category Cn): the `regex` package's newer Unicode
    # makes some of them letters (U+3D000), the tokenizers library's older one does not, so the pre-tokenizers
    # split them apart -- a difference of Unicode versions, not of BPE.
    st.characters(codec="utf-8", exclude_categories=["Cn"])), max_size=20).map("".join)


@pytest.mark.parametrize("name", NAMES)
def test_reference_ids(name):
    tok = load(name)
    got = [(case["text"], tok.encode(case["text"])) for case in cases(name)]
    mismatches = [(text, ids, case["ids"]) for (text, ids), case in zip(got, cases(name)) if ids != case["ids"]]
    assert len(got) == 46
    assert mismatches == []


@pytest.mark.parametrize("name", NAMES)
def test_reference_ids_do_not_depend_on_ignore_merges(name):
    # HF's default for these files is ignore_merges=false (what from_hf picks); on these 46 strings the
    # whole-pre-token lookup happens to change nothing, so both settings reproduce the references.
    assert load(name).ignore_merges is False
    tok = from_hf(require_shared("tokenizers", name), ignore_merges=True)
    assert [tok.encode(case["text"]) for case in cases(name)] == [case["ids"] for case in cases(name)]


@pytest.mark.parametrize("name", NAMES)
def test_reference_decode(name):
    tok = load(name)
    for case in cases(name):
        assert tok.decode(case["ids"]) == case["text"]


@pytest.mark.parametrize("name", NAMES)
@given(text=TEXT)
def test_decode_encode_roundtrip(name, text):
    tok = load(name)
    # a byte with no token (never in UTF-8 for most; Falcon lacks some control characters) cannot come back
    assume(not tok.missing_bytes.intersection(text.encode("utf-8")))
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("name", NAMES)
@given(text=TEXT)
def test_agrees_with_tokenizers_running_the_model_pre_tokenizer(name, text):
    assert load(name).encode(text) == reference(name).encode(text, add_special_tokens=False).ids


def test_added_tokens_from_the_type_table():
    assert load("mpt").encode("    Hello") == [50274, 12092]  # a GPT-NeoX run of spaces is one added token
    assert load("deepseek-coder").encode("ü") == [32009]  # DeepSeek's added "ü", matched before BPE
    assert load("starcoder").special_tokens["<fim_prefix>"] == 1
    assert load("gpt2").special_tokens == {"<|endoftext|>": 50256}


def test_falcon_digit_split_runs_on_byte_level_text():
    # Falcon's Digits step sees the byte stand-ins: "м" is 0xD0 0xBC, shown "Ð¼", and "¼" is a number
    tok = load("falcon")
    assert tok.encode("м") == [tok.id_of(b"\xd0"), tok.id_of(b"\xbc")]
    assert tok.encode("м") == reference("falcon").encode("м").ids


def test_missing_bytes_are_dropped_like_tokenizers():
    # StarCoder has no token for byte 0xF1 (it starts characters U+40000..U+7FFFF); the BPE model drops it
    tok = load("starcoder")
    text = "a\U00040000b"
    assert tok.encode(text) == reference("starcoder").encode(text).ids
    assert all(token_id < tok.n_vocab for token_id in tok.encode(text))
    assert tok.n_vocab == 49152


def test_pre_tokenizers_by_name():
    assert load("gpt2").pattern == load("mpt").pattern == "gpt2"  # the published regex, by its name
    assert load("starcoder").pattern == (r"\p{N}", GPT2)
    assert load("falcon").byte_level_pattern == (r"\p{N}+", "[0-9][0-9][0-9]")


@pytest.mark.parametrize("name", NAMES)
def test_written_tokenizer_json_reproduces_the_reference_ids(name, tmp_path):
    # to_hf writes our regexes as Split steps (and Falcon's byte-level splits after ByteLevel)
    path = to_hf(load(name), tmp_path / "tokenizer.json")
    theirs = Tokenizer.from_file(str(path))
    assert [theirs.encode(case["text"], add_special_tokens=False).ids for case in cases(name)] == \
        [case["ids"] for case in cases(name)]
    assert from_hf(path).encode(cases(name)[-1]["text"]) == cases(name)[-1]["ids"]  # and it reads back


@pytest.fixture(scope="module")
def llama3_tokenizer_json(tmp_path_factory):
    """A Llama 3 tokenizer.json as Hugging Face ships it (Split(Llama 3 regex), ByteLevel without regex,
    ignore_merges=true), built from the tiktoken rank file and the merges derived from it."""
    import base64

    from scratch.tokenizer.hf import bytes_to_token
    folder = require_shared("tokenizers", "llama3")
    with open(folder / "tokenizer.model", encoding="ascii") as f:
        vocab = {bytes_to_token(base64.b64decode(token)): int(rank) for token, rank in map(str.split, f)}
    with open(folder / "merges.txt", encoding="utf-8") as f:
        merges = [line.rstrip("\n").split(" ") for line in f if line.strip() and not line.startswith("#version")]
    with open(folder / "meta.json", encoding="utf-8") as f:
        pattern = json.load(f)["pat_str"]
    data = to_hf_json(load("gpt2"))  # the frame; every field that matters is replaced below
    data["added_tokens"] = [{**data["added_tokens"][0], "id": 128000, "content": "<|begin_of_text|>"}]
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        _BYTE_LEVEL_NO_REGEX]}
    data["model"].update(vocab=vocab, merges=merges, ignore_merges=True)
    path = tmp_path_factory.mktemp("llama3") / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_llama3_tokenizer_json_needs_ignore_merges(llama3_tokenizer_json):
    # With the whole-pre-token lookup (what the file says) all 46 match, as in tiktoken; without it one does not:
    # a token reachable in tiktoken's rank order but not by the derived merges' order.
    expected = [case["ids"] for case in cases("llama3")]
    tok = from_hf(llama3_tokenizer_json)
    assert tok.ignore_merges and tok.pattern == "llama3"
    assert [tok.encode(case["text"]) for case in cases("llama3")] == expected
    theirs = Tokenizer.from_file(str(llama3_tokenizer_json))
    assert [theirs.encode(case["text"], add_special_tokens=False).ids for case in cases("llama3")] == expected
    plain = from_hf(llama3_tokenizer_json, ignore_merges=False)
    assert sum(plain.encode(case["text"]) != case["ids"] for case in cases("llama3")) == 1


@pytest.mark.parametrize("name", ["falcon", "mpt"])
def test_save_and_load_tokenizer_keep_the_hf_rules(name, tmp_path):
    from scratch.tokenizer import load_tokenizer
    load(name).save(tmp_path / "saved.json")  # a tokenizer.json: byte-level splits, added tokens, missing bytes
    back = load_tokenizer(tmp_path / "saved.json")
    assert isinstance(back, HFTokenizer) and back.byte_level_pattern == load(name).byte_level_pattern
    assert [back.encode(case["text"]) for case in cases(name)] == [case["ids"] for case in cases(name)]


@pytest.mark.parametrize("name", NAMES)
def test_written_tokenizer_json_keeps_added_token_ids(name):
    # tokenizers renumbers an added token that the model vocabulary lacks; to_hf lists each one there too
    tok, theirs = load(name), reference(name)
    assert {text: theirs.token_to_id(text) for text in tok.special_tokens} == tok.special_tokens
    some = sorted(tok.special_tokens.items(), key=lambda item: item[1])[:3]
    text = "a" + "b ".join(special for special, _ in some) + "c"
    assert tok.encode(text) == theirs.encode(text, add_special_tokens=False).ids
