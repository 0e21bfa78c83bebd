"""Bad-input catalogue, tokenizer files: every format load_tokenizer reads (our JSON, tokenizer.json, vocab.json +
merges.txt, tiktoken rank files, SentencePiece .model) refuses malformed, hostile and endless files with the
promised error naming the file and the field -- without reading /dev/zero forever, blocking on a FIFO, or taking
minutes over a crafted rank file -- and decoding names a bad id instead of failing on NumPy's integers."""
from __future__ import annotations

import base64
import json
import os
import re
import time

import numpy as np
import pytest

import scratch.safe_read
from scratch.tokenizer import BPETokenizer, load_tokenizer
from scratch.tokenizer.hf import to_hf
from scratch.tokenizer.sentencepiece import SentencePieceBPE

from .conftest import finishes


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A byte-level tokenizer.json (dict) with one added token, to spoil."""
    folder = tmp_path_factory.mktemp("tokjson")
    tokenizer = BPETokenizer.train("hello world, the quick brown fox " * 20, vocab_size=280, pattern="gpt2",
                                   special_tokens=["<|end|>"])
    return json.loads(to_hf(tokenizer, folder / "tokenizer.json").read_text())


def write(tmp, name, data):
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return lambda: load_tokenizer(path)


def spoiled(tmp, base, edit):
    """load_tokenizer of a tokenizer.json edited by edit(dict)."""
    data = json.loads(json.dumps(base))
    edit(data)
    return write(tmp, "tokenizer.json", json.dumps(data))


def vocab_merges(tmp, vocab='{"a": 0, "b": 1, "ab": 2}', merges="#version: 0.2\na b\n", meta=None):
    folder = tmp / "vm"
    folder.mkdir()
    (folder / "vocab.json").write_bytes(vocab if isinstance(vocab, bytes) else vocab.encode())
    (folder / "merges.txt").write_bytes(merges if isinstance(merges, bytes) else merges.encode())
    if meta is not None:
        (folder / "meta.json").write_text(meta)
    return lambda: load_tokenizer(folder)


def rank_file(tmp, lines):
    return write(tmp, "ranks.tiktoken", "\n".join(lines) + "\n")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_chain(tmp, length=4000):
    """A rank file of the bytes 0..255 and a, aa, aaa, ... up to `length` bytes: every split of every token is two
    tokens (8M merges for 4,000): it loaded in cubic time, 20 s."""
    lines = [f"{_b64(bytes([byte]))} {byte}" for byte in range(256)]
    lines += [f"{_b64(b'a' * n)} {254 + n}" for n in range(2, length + 1)]
    return rank_file(tmp, lines)


def fifo(tmp, name):
    os.mkfifo(tmp / name)
    return lambda: load_tokenizer(tmp / name)


def oversized(tmp, monkeypatch):
    monkeypatch.setitem(scratch.safe_read.LIMITS, "tokenizer", 1000)
    return write(tmp, "ranks.tiktoken", "YQ== 0\n" * 200)


def with_config(tmp, base, config_text):
    folder = tmp / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(base))
    (folder / "tokenizer_config.json").write_text(config_text)
    return lambda: load_tokenizer(folder)


def _set(data, path, value):
    *parents, last = path
    for key in parents:
        data = data[key]
    data[last] = value


def edit_of(*path, value):
    return lambda data: _set(data, path, value)


SPLIT = ("pre_tokenizer", "pretokenizers", 0)

CASES = {
    # --- files that are not files, or too large ---
    "/dev/zero": (lambda t, b, m: (lambda: load_tokenizer("/dev/zero")), ValueError,
                  "/dev/zero: is a character device, not a regular tokenizer file"),
    "/dev/urandom": (lambda t, b, m: (lambda: load_tokenizer("/dev/urandom")), ValueError,
                     "/dev/urandom: is a character device"),
    "a FIFO": (lambda t, b, m: fifo(t, "tok.json"), ValueError, "tok.json: is a FIFO"),
    "a FIFO named tokenizer.model": (lambda t, b, m: fifo(t, "tokenizer.model"), ValueError, "is a FIFO"),
    "larger than the cap": (lambda t, b, m: oversized(t, m), ValueError,
                            "ranks.tiktoken: 1,400 bytes is more than any tokenizer file should be"),
    "no such name": (lambda t, b, m: (lambda: load_tokenizer(t / "nope")), FileNotFoundError,
                     "no tokenizer file, folder or known name"),
    "folder without a tokenizer": (lambda t, b, m: (lambda: load_tokenizer(t)), ValueError,
                                   "folder has no tokenizer.json, vocab.json"),
    # --- tokenizer.json ---
    "tokenizer.json not JSON": (lambda t, b, m: write(t, "tokenizer.json", '{"model": '), ValueError,
                                "tokenizer.json: not valid JSON"),
    "tokenizer.json nested 100k deep": (lambda t, b, m: write(t, "tokenizer.json", '{"model": ' + "[" * 100_000),
                                        ValueError, "tokenizer.json: JSON nested too deeply"),
    "our JSON nested 100k deep": (lambda t, b, m: write(t, "t.json", "[" * 100_000 + "]" * 100_000), ValueError,
                                  "t.json: .*corrupt JSON: maximum recursion depth exceeded"),
    "tokenizer.json not UTF-8": (lambda t, b, m: write(t, "tokenizer.json", b'{"model": "\xc3"}'), ValueError,
                                 r"tokenizer.json: not UTF-8 text \(byte 0xc3 at offset 11\)"),
    "WordPiece model": (lambda t, b, m: spoiled(t, b, edit_of("model", "type", value="WordPiece")), ValueError,
                        "model type 'WordPiece' is not supported"),
    "vocabulary id a string": (lambda t, b, m: spoiled(t, b, edit_of("model", "vocab", "a", value="5")), ValueError,
                               "vocabulary token 'a' has id '5'"),
    "vocabulary id negative": (lambda t, b, m: spoiled(t, b, edit_of("model", "vocab", "a", value=-1)), ValueError,
                               "vocabulary token 'a' has id -1"),
    "merges not a list": (lambda t, b, m: spoiled(t, b, edit_of("model", "merges", value=7)), ValueError,
                          "model.merges must be a list of pairs, got 7"),
    "a merge of three": (lambda t, b, m: spoiled(t, b, edit_of("model", "merges", 0, value=["a", "b", "c"])),
                         ValueError, r"merge 0 \['a', 'b', 'c'\] is not a pair"),
    "a merge of unknown tokens": (lambda t, b, m: spoiled(t, b, edit_of("model", "merges", 0, value="zzz qqq")),
                                  ValueError, "merge 0 'zzz' 'qqq' names a token missing from the vocabulary"),
    "added_tokens not a list": (lambda t, b, m: spoiled(t, b, edit_of("added_tokens", value=3)), ValueError,
                                "added_tokens must be a list of token objects, got 3"),
    "added token without an id": (lambda t, b, m: spoiled(t, b, edit_of("added_tokens", 0, "id", value="x")),
                                  ValueError, "added token .*'<|end|>'.* needs a string 'content' and an integer 'id'"),
    "Split pattern a number": (lambda t, b, m: spoiled(t, b, edit_of(*SPLIT, "pattern", value=5)), ValueError,
                               "Split pre-tokenizer without a pattern"),
    "Split regex a number": (lambda t, b, m: spoiled(t, b, edit_of(*SPLIT, "pattern", value={"Regex": 5})),
                             ValueError, "Split pre-tokenizer without a pattern"),
    "unknown pre-tokenizer": (lambda t, b, m: spoiled(t, b, edit_of(*SPLIT, value={"type": "Whitespace"})),
                              ValueError, "pre-tokenizer 'Whitespace' is not supported"),
    "unknown decoder": (lambda t, b, m: spoiled(t, b, edit_of("decoder", value={"type": "WordPiece"})), ValueError,
                        "decoder 'WordPiece' is not supported"),
    "unknown normalizer": (lambda t, b, m: spoiled(t, b, edit_of("normalizer", value={"type": "Lowercase"})),
                           ValueError, "normalizer 'Lowercase' is not supported"),
    "byte fallback": (lambda t, b, m: spoiled(t, b, edit_of("model", "byte_fallback", value=True)), ValueError,
                      "byte_fallback is SentencePiece-style"),
    "tokenizer_config.json nested 100k deep": (lambda t, b, m: with_config(t, b, "[" * 100_000 + "]" * 100_000),
                                               ValueError, "tokenizer_config.json: JSON nested too deeply"),
    # --- vocab.json + merges.txt ---
    "merges.txt not UTF-8": (lambda t, b, m: vocab_merges(t, merges=b"#version: 0.2\na \xff\n"), ValueError,
                             r"merges.txt: not UTF-8 text \(byte 0xff at offset 16\)"),
    "merges.txt line of three": (lambda t, b, m: vocab_merges(t, merges="#version: 0.2\na b c\n"), ValueError,
                                 "merges.txt:2: expected two tokens separated by one space, got 'a b c'"),
    "vocab.json a list": (lambda t, b, m: vocab_merges(t, vocab='["a", "b"]'), ValueError,
                          "vocab.json: expected an object of token -> id"),
    "vocab.json not UTF-8": (lambda t, b, m: vocab_merges(t, vocab=b'{"\xff": 0}'), ValueError,
                             r"vocab.json: not UTF-8 text \(byte 0xff"),
    "meta.json pre-tokenizer a list": (lambda t, b, m: vocab_merges(t, meta='{"tokenizer.ggml.pre": ["gpt2"]}'),
                                       ValueError, r"tokenizer.ggml.pre must be a name, got \['gpt2'\]"),
    "meta.json unknown pre-tokenizer": (lambda t, b, m: vocab_merges(t, meta='{"tokenizer.ggml.pre": "nope"}'),
                                        ValueError, "meta.json: unknown pre-tokenizer 'nope'"),
    # --- tiktoken rank files ---
    "rank line not base64": (lambda t, b, m: rank_file(t, ["YQ== 0", "!!!! 1"]), ValueError,
                             "ranks.tiktoken: line 2 is not 'base64-token rank'"),
    "token ranked twice": (lambda t, b, m: rank_file(t, ["YQ== 0", "YQ== 1"]), ValueError,
                           "ranks.tiktoken: line 2: token b'a' already has rank 0"),
    "prefix chain of 4,000 tokens": (lambda t, b, m: prefix_chain(t), ValueError,
                                     "ranks.tiktoken: its tokens are too long to derive merges from .* the longest "
                                     "token, rank 4254, has 4,000 bytes"),
    # --- SentencePiece .model ---
    "truncated protobuf": (lambda t, b, m: write(t, "tokenizer.model", b"\x0a\x20abc"), ValueError,
                           "tokenizer.model: truncated protobuf"),
    "a text file as .model": (lambda t, b, m: write(t, "x.model", "hello there\nmore text\n"), ValueError,
                              "x.model: .*looks like a text file"),
    # --- our own JSON ---
    "scratch-bpe of another version": (lambda t, b, m: write(t, "t.json", '{"format": "scratch-bpe", "version": 99}'),
                                       ValueError, "scratch-bpe version 99 is not supported"),
    "scratch-bpe cut short": (lambda t, b, m: write(t, "t.json", '{"format": "scratch-bpe", "vers'), ValueError,
                              "t.json: .*truncated or corrupt JSON"),
}


@pytest.mark.parametrize("case", CASES)
def test_refused_naming_the_culprit(case, tmp_path, tokenizer_json, monkeypatch):
    build, kind, message = CASES[case]
    start = time.perf_counter()
    error = finishes(build(tmp_path, tokenizer_json, monkeypatch))
    assert isinstance(error, kind), f"{case}: expected {kind.__name__}, got {error!r}"
    assert re.search(message, str(error)), f"{case}: {error}"
    assert time.perf_counter() - start < 10, f"{case}: took {time.perf_counter() - start:.1f} s"


# --- decoding ids ---------------------------------------------------------------------------------------------------

SPM = SentencePieceBPE.from_pieces([("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("\u2581a", -1.0, 1),
                                    ("a", -2.0, 1), ("\u2581", -3.0, 1)])


def test_sentencepiece_decodes_numpy_integers():
    """generate returns int64 arrays: a Llama 2 user decodes them as they are (issue 13, item 6)."""
    ids = np.array([3, 4, 3], dtype=np.int64)
    assert SPM.decode(ids) == SPM.decode([3, 4, 3]) == "aa a"
    assert SPM.decode([np.int32(3), np.uint8(4)]) == "aa"
    assert SPM.token_bytes(np.int64(4)) == b"a" and SPM.id_to_piece(np.uint16(3)) == "\u2581a"


@pytest.mark.parametrize("ids, message", [
    ([6], r"token id 6 is outside the vocabulary \(0..5\)"),
    ([-1], "token id -1 is outside"),
    ([np.uint64(2 ** 64 - 1)], "token id 18446744073709551615 is outside"),   # shown as itself, not wrapped
    (["3"], "token ids must be integers, got '3'"),
    ([3.0], "token ids must be integers, got 3.0"),
    ([True], "token ids must be integers, got True"),
])
def test_sentencepiece_names_a_bad_id(ids, message):
    with pytest.raises(ValueError, match=message):
        SPM.decode(ids)
