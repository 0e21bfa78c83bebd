"""BPETokenizer on its own: the merge rule (bpe.merge_chunk, the plain loop) and the fast encoder held to it
(bpe_fast: heap == batch == plain, cached encode == plain encode), round trips, special tokens, the streaming
decoder, construction errors, save/load and its failure modes, load_tokenizer, training through the trainer, and
near-linear work on pathological input (counted in merge steps, not seconds)."""
from __future__ import annotations

import copy
import json

import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from scratch.tokenizer import BPETokenizer, StreamDecoder, load_tokenizer
from scratch.tokenizer.bpe import merge_chunk
from scratch.tokenizer.pretokenize import MAX_RUN_CHARS, pretokenize
from scratch.tokenizer.tiktoken_format import CL100K_SPECIAL_TOKENS, bundled_file
from tests.conftest import require_shared

CORPUS = ("the cat sat on the mat. the cat ate the rat; that rat was fat. " * 20
          + "안녕하세요 안녕 세계 🎉🎉 def f(x): return x + 1\n" * 10 + "aaabdaaabac " * 30)
SPECIALS = ("<|endoftext|>", "<|pad|>")


@pytest.fixture(scope="module")
def small() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, 300, pattern="gpt4", special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def cl100k() -> BPETokenizer:
    return BPETokenizer.from_tiktoken(bundled_file("cl100k_base"), "gpt4", CL100K_SPECIAL_TOKENS)


BYTES = (st.binary(max_size=300)
         | st.lists(st.sampled_from([b"a", b"b", b"aa", b"the", b" cat", b" ", b"\xec\x95", b"\xf0\x9f"]),
                    max_size=120).map(b"".join))


def plain_merge(tokenizer: BPETokenizer, data: bytes) -> list[int]:
    return merge_chunk(data, tokenizer.byte_ids, tokenizer.pair_ranks, tokenizer.merged_ids)


def plain_twin(tokenizer: BPETokenizer) -> BPETokenizer:
    """The same tokenizer encoding through the plain functions (no fast encoder)."""
    twin = copy.copy(tokenizer)
    twin.fast = None
    return twin


# ------------------------------------------------------------------------------------------------ merge rule
@given(BYTES)
def test_heap_merge_equals_plain_trained(small, data):
    assert small.fast.merge_heap(data) == plain_merge(small, data)


@given(BYTES)
def test_heap_merge_equals_plain_cl100k(cl100k, data):
    assert cl100k.fast.merge_heap(data) == plain_merge(cl100k, data)


SHORT_BYTES = BYTES.filter(lambda data: 2 <= len(data) <= 128)


@given(st.lists(SHORT_BYTES, min_size=1, max_size=40))
def test_batch_merge_equals_plain(small, cl100k, datas):
    """The NumPy rounds (many chunks merged together) against the plain loop, for both rank kinds."""
    for tokenizer in (small, cl100k):
        assert tokenizer.fast.merge_batch(datas) == [plain_merge(tokenizer, data) for data in datas]


TEXTS = st.text(max_size=300) | st.lists(st.sampled_from(["the", " cat", " ", "aaaa", "안녕", "🎉", "\n", "12345",
                                                          "x" * 200, " " * 150]), max_size=60).map("".join)


@given(TEXTS)
def test_fast_encode_equals_plain_encode(small, cl100k, text):
    """The whole fast path (chunk cache, batch or heap, whole-token lookup) against pretokenize + merge_chunk, on a
    warm cache and a cold one."""
    for tokenizer in (small, cl100k):
        plain = plain_twin(tokenizer)
        expected = plain.encode_ordinary(text)
        assert tokenizer.encode_ordinary(text) == expected
        fresh = BPETokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.pattern, merge_rank=tokenizer.merge_rank)
        assert fresh.encode_ordinary(text) == expected
        for chunk in pretokenize(text, tokenizer.pattern):
            assert tokenizer.encode_chunk_bytes(chunk.encode()) == plain.encode_chunk_bytes(chunk.encode())


def test_plain_encode_on_a_real_text_sample(cl100k):
    """Enough text for the batch path and for cache hits, plain == fast; and the plain path really runs plain."""
    text = ("The quick brown fox jumps over the lazy dog. It's 2024!\n" * 3 + "def f(x):\n    return x + 1\n"
            + "한국어 문장은 띄어쓰기를 합니다. "
            + " ".join(f"w{index}x{index * 7919 % 1000}q" for index in range(200)))
    plain = plain_twin(cl100k)
    assert plain.fast is None and cl100k.fast is not None
    assert plain.encode(text) == cl100k.encode(text) == BPETokenizer(
        cl100k.vocab, cl100k.merges, "gpt4", merge_rank="token_id").encode(text)


def test_encode_many_new_chunks_at_once(cl100k):
    """Enough distinct new chunks in one call to take the batch path; same ids as chunk by chunk."""
    words = [f" w{i}x{i * 7919 % 1000}q" for i in range(300)] + ["안녕하세요" * (i % 5 + 1) for i in range(20)]
    fresh = BPETokenizer(cl100k.vocab, cl100k.merges, "gpt4", merge_rank="token_id")
    assert fresh.encode_ordinary("".join(words)) == [t for w in words for t in cl100k.encode_chunk_bytes(w.encode())]


def test_merge_rule_by_hand():
    """1 bytes, 2 pairs, 3 lowest rank (leftmost on ties), 4 repeat: "aaab" with merges aa, then aa+a."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256: b"aa", 257: b"aaa", 258: b"ab"})
    tokenizer = BPETokenizer(vocab, [(97, 97), (256, 97), (97, 98)], ignore_merges=False)
    assert plain_merge(tokenizer, b"aaab") == [257, 98]  # aa first (rank 0, leftmost), then aa+a (rank 1)
    assert tokenizer.encode("aaab") == [257, 98]
    assert tokenizer.encode("aaaab") == [256, 256, 98]  # leftmost aa twice; ab never forms
    # ignore_merges: a chunk that is a token is taken whole, even if merging would not reach it
    vocab[259] = b"aaaab"
    whole = BPETokenizer(vocab, [(97, 97), (256, 97), (97, 98)])
    assert whole.encode("aaaab") == [259] and whole.encode_chunk_bytes(b"aaaab") == [259]


@given(st.text(alphabet="ab", min_size=1, max_size=40))
def test_token_id_ranking_ties_like_tiktoken(text):
    """With merge_rank="token_id" every split of a token has the token's rank, so ties go leftmost -- tiktoken's
    rule -- even where one token has several splits ("aba" = ab+a = a+ba)."""
    ranks = {bytes([i]): i for i in range(256)}
    for token in (b"ab", b"ba", b"aba", b"bab", b"abab", b"baba", b"ababa", b"aa", b"bb"):
        ranks[token] = len(ranks)
    reference = tiktoken.Encoding(name="ties", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    from scratch.tokenizer.tiktoken_format import derive_merges

    ours = BPETokenizer({rank: token for token, rank in ranks.items()}, derive_merges(ranks),
                        merge_rank="token_id")
    data = text.encode()
    assert ours.encode_chunk_bytes(data) == reference._core_bpe.encode_single_piece(data)
    assert ours.fast.merge_heap(data) == plain_merge(ours, data)


def test_threads_share_one_tokenizer(cl100k):
    """The chunk cache is filled under a lock: threads encoding new text at the same time get the right ids."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [" ".join(f"w{thread}x{i}y{i * 31 % 97}" for i in range(400)) for thread in range(6)]
    expected = [cl100k.encode(text) for text in texts]
    fresh = BPETokenizer(cl100k.vocab, cl100k.merges, "gpt4", merge_rank="token_id")
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(fresh.encode, texts)) == expected


# ------------------------------------------------------------------------------------------------ round trips
@given(st.text(max_size=300))
def test_roundtrip_trained(small, text):
    assert small.decode(small.encode_ordinary(text)) == text


@given(st.text(max_size=300))
def test_roundtrip_cl100k(cl100k, text):
    ids = cl100k.encode(text, disallowed_special=())
    assert cl100k.decode(ids) == text
    assert all(0 <= token_id < cl100k.n_vocab for token_id in ids)


@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(SPECIALS)), max_size=8))
def test_roundtrip_with_special_tokens(small, parts):
    text = "".join(parts)
    ids = small.encode(text, allowed_special="all")
    assert small.decode(ids) == text
    assert ids.count(small.special_tokens["<|endoftext|>"]) == text.count("<|endoftext|>")


def test_special_token_rules(small):
    eot = small.special_tokens["<|endoftext|>"]
    assert small.special_tokens == {"<|endoftext|>": small.n_vocab - 2, "<|pad|>": small.n_vocab - 1}
    assert small.encode("a<|endoftext|>", allowed_special="all")[-1] == eot
    assert small.encode("a<|endoftext|>", allowed_special={"<|endoftext|>"})[-1] == eot
    plain = small.encode("a<|endoftext|>", disallowed_special=())
    assert eot not in plain and small.decode(plain) == "a<|endoftext|>"
    with pytest.raises(ValueError, match=r"disallowed special token '<\|pad\|>'"):
        small.encode("x<|pad|>", allowed_special={"<|endoftext|>"})
    assert small.encode_ordinary("<|pad|>") == small.encode("<|pad|>", disallowed_special=())


def test_special_tokens_match_longest_first(small):
    """Where one special token is a prefix of another, the longer one wins wherever it occurs (as in Hugging Face's
    added-token matching), in the allowed and the disallowed check alike; a lone prefix is still itself."""
    specials = {"<|x|>": small.n_vocab, "<|x|>y": small.n_vocab + 1}
    tok = BPETokenizer(small.vocab, small.merges, small.pattern, specials)
    a, b = tok.encode_ordinary("a"), tok.encode_ordinary("b")
    assert tok.encode("a<|x|>yb", allowed_special="all") == a + [specials["<|x|>y"]] + b
    assert tok.encode("a<|x|>b", allowed_special="all") == a + [specials["<|x|>"]] + b
    with pytest.raises(ValueError, match=r"disallowed special token '<\|x\|>y'"):
        tok.encode("a<|x|>yb")


# ------------------------------------------------------------------------------------------------ decoding
@given(st.data())
def test_stream_decoder_equals_decode_for_any_split(cl100k, data):
    """Any id sequence (so also bytes that never form valid UTF-8), pushed one id at a time."""
    ids = data.draw(st.one_of(
        st.lists(st.integers(0, 100255), max_size=30),
        st.text(max_size=40).map(lambda text: cl100k.encode_ordinary(text)),
        st.lists(st.sampled_from(list(range(0, 256)) + [100257]), max_size=30).map(
            lambda ranks: [cl100k.id_of(bytes([r])) if r < 256 else r for r in ranks])))
    decoder = cl100k.stream_decoder()
    assert isinstance(decoder, StreamDecoder)
    pieces = [decoder.push(token_id) for token_id in ids]
    assert "".join(pieces) + decoder.flush() == cl100k.decode(ids)
    assert decoder.flush() == ""


def test_stream_decoder_holds_back_incomplete_characters(cl100k):
    ids = cl100k.encode("🎉!")
    assert len(ids) >= 3  # the emoji is split over several byte tokens
    decoder = cl100k.stream_decoder()
    outputs = [decoder.push(token_id) for token_id in ids]
    assert outputs[0] == "" and "".join(outputs) == "🎉!"
    partial = cl100k.stream_decoder()
    partial.push(ids[0])
    assert partial.flush() == "\ufffd"  # an unfinished character at the end: U+FFFD, as decode() does


@pytest.mark.parametrize("bad", [100261, -1, 10**9, "5", None])
def test_unknown_ids_raise_naming_the_id(cl100k, bad):
    with pytest.raises(ValueError, match=f"token id {bad!r}"):
        cl100k.decode([15339, bad])
    with pytest.raises(ValueError, match=f"token id {bad!r}"):
        cl100k.token_bytes(bad)
    with pytest.raises(ValueError, match=f"token id {bad!r}"):
        cl100k.stream_decoder().push(bad)


def test_decode_errors_strict(cl100k):
    ids = cl100k.encode("🎉")
    with pytest.raises(UnicodeDecodeError):
        cl100k.decode(ids[:1], errors="strict")
    assert cl100k.decode_bytes(ids[:1]) == cl100k.token_bytes(ids[0]) and "🎉".encode().startswith(
        cl100k.token_bytes(ids[0]))


def test_pickle_roundtrip(small):
    import pickle

    small.encode("warm the cache")
    again = pickle.loads(pickle.dumps(small))
    assert not again.fast.cache  # the cache and its lock are not pickled; they start over
    assert again.encode(CORPUS[:300]) == small.encode(CORPUS[:300]) and again.merges == small.merges
    assert pickle.loads(pickle.dumps(plain_twin(small))).encode(CORPUS[:300]) == small.encode(CORPUS[:300])


def test_helpers(cl100k):
    assert cl100k.id_of("hello") == cl100k.id_of(b"hello") == 15339
    assert cl100k.id_of("<|endoftext|>") == 100257
    assert cl100k.token_bytes(100257) == b"<|endoftext|>"
    with pytest.raises(ValueError, match="not a token"):
        cl100k.id_of("certainly not one token, this")
    assert cl100k.split_view("hello world") == [(15339, "hello"), (1917, " world")]
    assert cl100k.split_view("<|endoftext|>") == [(100257, "<|endoftext|>")]
    assert "n_vocab=100277" in repr(cl100k)


# ------------------------------------------------------------------------------------------------ construction
def byte_vocab() -> dict[int, bytes]:
    return {i: bytes([i]) for i in range(256)}


def test_constructor_errors():
    vocab = byte_vocab()
    del vocab[0x41]
    with pytest.raises(ValueError, match="0x41"):
        BPETokenizer(vocab, [])
    with pytest.raises(ValueError, match=r"merge 0 \(97, 999\): right id 999 is not in the vocabulary"):
        BPETokenizer(byte_vocab(), [(97, 999)])
    with pytest.raises(ValueError, match=r"merge 0 \(97, 98\).*b'ab' are not a token"):
        BPETokenizer(byte_vocab(), [(97, 98)])
    with pytest.raises(ValueError, match="special token '<s>' has id 65"):
        BPETokenizer(byte_vocab(), [], special_tokens={"<s>": 65})
    with pytest.raises(ValueError, match="merge_rank"):
        BPETokenizer(byte_vocab(), [], merge_rank="score")
    with pytest.raises(ValueError, match="invalid pre-tokenizer regex"):
        BPETokenizer(byte_vocab(), [], pattern="(unclosed")


def test_non_identity_byte_ids():
    """Single bytes may have any ids (cl100k's do not run 0..255); the merged id is found by its bytes."""
    vocab = {i: bytes([255 - i]) for i in range(256)}
    vocab[300] = b"hi"
    tokenizer = BPETokenizer(vocab, [(255 - ord("h"), 255 - ord("i"))], pattern="gpt2", ignore_merges=False)
    assert tokenizer.encode("hi") == [300]
    assert tokenizer.encode(" hi") == [255 - ord(" "), 300]
    assert tokenizer.n_vocab == 301 and tokenizer.decode([300, 0]) == "hi\ufffd"  # id 0 is byte 0xff here


def test_attributes(small):
    assert small.pattern == "gpt4" and small.ignore_merges is True
    assert len(small.merges) == 300 - 256 - len(SPECIALS)
    assert small.n_vocab == 300 and len(small.vocab) == 300 - len(SPECIALS)
    left, right = small.merges[0]
    assert small.vocab[256] == small.vocab[left] + small.vocab[right]


def test_train_rejects_small_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", 257, special_tokens=("<a>", "<b>"))


def test_train_on_iterable_and_pattern_tuple():
    tokenizer = BPETokenizer.train(iter(["hello hello world", "hello 123456"]), 270, pattern="gpt2")
    assert tokenizer.decode(tokenizer.encode("hello 123456 world")) == "hello 123456 world"
    assert tokenizer.encode("hello") == [tokenizer.id_of("hello")]
    seq = BPETokenizer(tokenizer.vocab, tokenizer.merges, pattern=(r"\p{N}{1,3}", r" ?\p{L}+"))
    assert seq.decode(seq.encode("hello 123456 world!!")) == "hello 123456 world!!"
    pieces = [seq.token_bytes(t) for t in seq.encode("123456")]
    ends = {sum(map(len, pieces[:k])) for k in range(len(pieces) + 1)}
    assert 3 in ends  # the first regex cut "123" | "456", and no token crosses that cut


# ------------------------------------------------------------------------------------------------ save / load
def test_save_load_roundtrip(small, tmp_path):
    path = tmp_path / "tok.json"
    small.save(path)
    again = BPETokenizer.load(path)
    assert (again.vocab, again.merges, again.special_tokens, again.pattern, again.ignore_merges) == \
        (small.vocab, small.merges, small.special_tokens, small.pattern, small.ignore_merges)
    assert load_tokenizer(path).encode(CORPUS[:500]) == small.encode(CORPUS[:500])
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # the temporary file is gone
    data = json.loads(path.read_text())
    assert data["format"] == "scratch-bpe" and data["version"] == 1


def test_save_load_keeps_tuple_pattern_and_token_id_ranking(tmp_path):
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({b"ab": 256, b"ba": 257, b"aba": 258})
    from scratch.tokenizer.tiktoken_format import derive_merges

    tokenizer = BPETokenizer({r: t for t, r in ranks.items()}, derive_merges(ranks), pattern=(r"\d", r"\s+"),
                             merge_rank="token_id", ignore_merges=False)
    tokenizer.save(tmp_path / "t.json")
    again = BPETokenizer.load(tmp_path / "t.json")
    assert again.pattern == (r"\d", r"\s+") and again.merge_rank == "token_id" and not again.ignore_merges
    assert again.encode("ababa 1 ba") == tokenizer.encode("ababa 1 ba")


def corrupt(payload: dict, **changes) -> str:
    payload = dict(payload)
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    return json.dumps(payload)


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated or corrupt JSON"),
    ("not_json", "truncated or corrupt JSON"),
    ("binary", "truncated or corrupt JSON"),
    ("wrong_format", "not a scratch-bpe tokenizer file"),
    ("list", "not a scratch-bpe tokenizer file"),
    ("wrong_version", "version 2 is not supported"),
    ("missing_merges", "missing field 'merges'"),
    ("bad_base64", "corrupt scratch-bpe file"),
    ("bad_merge", "corrupt scratch-bpe file: merge 0"),
])
def test_load_rejects_bad_files(small, tmp_path, case, message):
    good = tmp_path / "good.json"
    small.save(good)
    text = good.read_text()
    payload = json.loads(text)
    bad_vocab = dict(payload["vocab"], **{"3": "not base64!"})
    contents = {
        "truncated": text[: len(text) // 2],
        "not_json": "hello",
        "binary": b"\xff\xfe\x00garbage",
        "wrong_format": corrupt(payload, format="hf-tokenizers"),
        "list": "[1, 2, 3]",
        "wrong_version": corrupt(payload, version=2),
        "missing_merges": corrupt(payload, merges=None),
        "bad_base64": corrupt(payload, vocab=bad_vocab),
        "bad_merge": corrupt(payload, merges=[[1, 99999]] + payload["merges"]),
    }[case]
    path = tmp_path / "bad.json"
    path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    with pytest.raises(ValueError, match=message) as error:
        BPETokenizer.load(path)
    assert str(path) in str(error.value)


# ------------------------------------------------------------------------------------------------ load_tokenizer
def test_load_tokenizer_by_name():
    tokenizer = load_tokenizer("cl100k_base")
    assert tokenizer.encode("hello world") == [15339, 1917]
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        load_tokenizer("no-such-tokenizer")


def test_load_tokenizer_tiktoken_files(tmp_path):
    gpt2 = load_tokenizer(require_shared("tokenizers", "gpt2", "gpt2.tiktoken"))
    assert gpt2.pattern == "gpt2" and gpt2.special_tokens == {"<|endoftext|>": 50256}
    llama3 = load_tokenizer(require_shared("tokenizers", "llama3"))  # the folder: tokenizer.model is a rank file
    assert llama3.pattern == "llama3" and llama3.special_tokens["<|eot_id|>"] == 128009
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("YQ== 0\nnot-a-line\n")
    with pytest.raises(ValueError, match="line 2"):
        load_tokenizer(bad)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_sentencepiece_model_is_sniffed():
    path = require_shared("tokenizers", "llama2", "tokenizer.model")
    from scratch.tokenizer.sentencepiece import SentencePieceBPE

    assert isinstance(load_tokenizer(path), SentencePieceBPE)


def test_load_tokenizer_hugging_face_folder():
    from scratch.tokenizer.hf import HFTokenizer

    tokenizer = load_tokenizer(require_shared("tokenizers", "gpt2"))    # vocab.json + merges.txt
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.encode("Hello world") == [15496, 995]


# ------------------------------------------------------------------------------------------------ pathological
@pytest.mark.parametrize("text", ["a" * 1_000_000, " " * 1_000_000, "ab" * 500_000, "한" * 200_000])
def test_long_runs_stay_near_linear(cl100k, text, monkeypatch):
    """Work is counted: BPE runs on few distinct chunks (the cache and Meta-style run cutting at 25,000
    characters), and the heap merge pops O(bytes) entries."""
    tokenizer = BPETokenizer(cl100k.vocab, cl100k.merges, "gpt4", merge_rank="token_id")  # fresh, empty cache
    chunk_bytes = []
    inner = tokenizer.fast.encode_chunks

    def counted(chunks):
        chunk_bytes.extend(len(chunk.encode()) for chunk in chunks)
        return inner(chunks)

    monkeypatch.setattr(tokenizer.fast, "encode_chunks", counted)
    ids = tokenizer.encode_ordinary(text)
    assert tokenizer.decode(ids) == text
    assert len(chunk_bytes) <= 4, "the same 25,000-character piece must come from the cache"
    assert max(chunk_bytes, default=0) <= 3 * MAX_RUN_CHARS
    assert tokenizer.fast.heap_steps <= 3 * sum(chunk_bytes)  # each merge pushes at most two entries


def test_long_chunks_are_cut_exactly_as_pretokenize_cuts(small):
    """encode notices an overlong chunk among its cache misses instead of scanning every chunk; the chunks it
    encodes are still exactly pretokenize()'s, and no chunk longer than max_run is ever cached."""
    tokenizer = BPETokenizer(small.vocab, small.merges, "gpt4")
    tokenizer.max_run = 5
    texts = ["abcdefghijkl xy", "a,a,a,a,a,a the cat", " " * 12 + "x", "the cat sat", " abcdef", "abcdefghijkl xy"]
    for text in texts:
        chunks = pretokenize(text, "gpt4", max_run=5)
        assert tokenizer.encode_ordinary(text) == [t for c in chunks for t in tokenizer.encode_chunk_bytes(c.encode())]
        assert max(map(len, tokenizer.fast.cache)) <= 5
    tokenizer.max_run = 1000  # a new limit empties the cache: cached chunks obeyed the old one
    assert tokenizer.encode_ordinary("abcdefghijkl") == small.encode_ordinary("abcdefghijkl")
    assert set(tokenizer.fast.cache) == {"abcdefghijkl"}


def test_heap_steps_are_linear_in_chunk_length(cl100k):
    tokenizer = BPETokenizer(cl100k.vocab, cl100k.merges, "gpt4", merge_rank="token_id")
    for n in (1_000, 10_000):
        before = tokenizer.fast.heap_steps
        tokenizer.fast.merge_heap(bytes(range(97, 123)) * (n // 26))
        assert tokenizer.fast.heap_steps - before <= 3 * n
