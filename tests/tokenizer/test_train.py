"""BPE training: hand-checked merges, the determinism rules, reference (train.py) == fast (train_fast.py) under
hypothesis, progress, bad input."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch.tokenizer import train
from scratch.tokenizer.train import count_chunks, train_merges_reference
from scratch.tokenizer.train_fast import train_merges

TRAINERS = [train_merges_reference, train_merges]
TRAINER_IDS = ["reference", "fast"]

# ----------------------------------------------------------------------------------------------------------------
# Hand-checked examples.


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
def test_textbook_example(trainer):
    # "aaabdaaabac" (the classic example), by hand: (a,a) counts 4 (overlapping) -> 256: "256 a b d 256 a b a c";
    # (256,a), (a,b) tie at 2 -> smallest (a,b) -> 257; (256,257) -> 258: "258 d 258 a c"; four pairs at 1 ->
    # smallest (a,c) -> 259; then (d,258) -> 260, (258,260) -> 261, (261,259) -> 262; one token left: stop.
    a, b, c, d = 97, 98, 99, 100
    expected = [(a, a), (a, b), (256, 257), (a, c), (d, 258), (258, 260), (261, 259)]
    assert trainer({"aaabdaaabac": 1}, 100) == expected
    assert trainer({"aaabdaaabac": 1}, 3) == expected[:3]


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
@pytest.mark.parametrize("chunk, expected", [
    ("aa", [(97, 97)]),
    ("aaa", [(97, 97), (256, 97)]),            # non-overlapping: "aaa" -> [X, a]
    ("aaaa", [(97, 97), (256, 256)]),          # -> [X, X] -> [Y]
    ("aaaaa", [(97, 97), (256, 97), (256, 257)]),  # [X, X, a]: (X, a) ties (X, X) and is smaller
    ("abababab", [(97, 98), (256, 256), (257, 257)]),
    ("héllo", [(104, 195), (108, 108)]),       # é is the bytes (195, 169); all pairs tie: smallest first
])
def test_runs_and_bytes(trainer, chunk, expected):
    assert trainer({chunk: 1}, len(expected)) == expected


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
def test_pairs_counted_overlapping(trainer):
    # (a,a) counts 2 in "aaa"; counted non-overlapping it would tie (space,!) at 1 and lose to the smaller pair.
    assert trainer({"aaa": 1, " !": 1}, 1) == [(97, 97)]


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
def test_ties_go_to_smallest_pair(trainer):
    assert trainer({"cd": 1, "ab": 1}, 1) == [(97, 98)]
    assert trainer({"ba": 1, "ab": 1}, 1) == [(97, 98)]
    assert trainer({"ac": 1, "ab": 1}, 1) == [(97, 98)]
    assert trainer({"cd": 1, "ab": 1}, 5) == [(97, 98), (99, 100)]


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
def test_counts_weight_pairs_and_chunks_do_not_join(trainer):
    assert trainer({"ab": 1, "cd": 5}, 1) == [(99, 100)]
    # "b" ends one chunk and "c" starts the next: (b, c) is never a pair.
    assert trainer({"ab": 3, "cd": 3}, 10) == [(97, 98), (99, 100)]
    assert trainer({"ab": 0, "cd": 1}, 10) == [(99, 100)]  # zero counts are ignored
    assert trainer({}, 10) == []
    assert trainer({"x": 7, "": 3}, 10) == []
    assert trainer({"abc": 1}, 0) == []


def test_merge_ids_are_sequential_and_defined_before_use():
    merges = train_merges(count_chunks("the cat sat on the mat; the hat " * 5), 40)
    for i, (left, right) in enumerate(merges):
        assert 0 <= left < 256 + i and 0 <= right < 256 + i
    assert len(set(merges)) == len(merges)


# ----------------------------------------------------------------------------------------------------------------
# The fast trainer gives the reference's merge list (hypothesis).

ALPHABETS = {
    "ascii": "ab c\n.",
    "ascii_wide": "abcdefghij klmnop,.!'\n",
    "korean": "한국어 문장입니다",
    "emoji": "😀👍🏽🎉 a",
    "runs": "aaaa b",
}
_alphabet = st.sampled_from(sorted(ALPHABETS)).map(ALPHABETS.get)
texts = _alphabet.flatmap(lambda letters: st.text(alphabet=letters, max_size=120))
words = st.dictionaries(
    _alphabet.flatmap(lambda letters: st.text(alphabet=letters, min_size=1, max_size=14)),
    st.integers(min_value=1, max_value=6), max_size=12)
# The trainers are quick on these tiny corpora, so take more examples than the profile's default (more still under
# HYPOTHESIS_PROFILE=thorough).
MANY = settings(max_examples=max(150, settings().max_examples))

runs = st.lists(st.sampled_from(["a" * n for n in range(1, 9)] + ["ab" * n for n in range(1, 5)] + ["aab", "bba"]),
                max_size=10).map(lambda parts: " ".join(parts))


@MANY
@given(text=st.one_of(texts, runs), num_merges=st.integers(0, 50))
def test_fast_equals_reference_on_texts(text, num_merges):
    counts = count_chunks(text, pattern="gpt2")
    assert train_merges(counts, num_merges) == train_merges_reference(counts, num_merges)


@MANY
@given(counts=words, num_merges=st.integers(0, 50))
def test_fast_equals_reference_on_weighted_words(counts, num_merges):
    assert train_merges(counts, num_merges) == train_merges_reference(counts, num_merges)


@given(counts=words, seed=st.integers(0, 2**32 - 1))
def test_result_does_not_depend_on_chunk_order(counts, seed):
    items = list(counts.items())
    random.Random(seed).shuffle(items)
    shuffled = dict(items)
    expected = train_merges_reference(counts, 30)
    assert train_merges_reference(shuffled, 30) == expected
    assert train_merges(shuffled, 30) == expected


def test_fast_equals_reference_on_a_real_text_sample():
    text = ("def count(words):\n    return {w: len(w) for w in words}\n"
            "The quick brown fox jumps over the lazy dog. It's 2024!\n"
            "한국어 문장은 띄어쓰기를 합니다. 안녕하세요 😀😀😀 aaaaaaaa    \n") * 3
    counts = count_chunks(text)
    assert train_merges(counts, 150) == train_merges_reference(counts, 150)


# ----------------------------------------------------------------------------------------------------------------
# Against Hugging Face tokenizers' BpeTrainer.

# Each byte spelled as one letter, U+0100 + byte: tokenizers numbers its alphabet in character order, so its ids are
# then the byte values themselves, and its tie rule (the smallest pair of ids) is ours -- on any bytes, UTF-8 of
# any script included. (Through GPT-2's byte-to-unicode table the ids would follow the stand-in characters, which
# put space and the bytes 0x80-0xA0 out of byte order, and tied pairs would come in another order.)
BYTE_LETTERS = [chr(0x100 + value) for value in range(256)]


def hf_train_merges(chunk_counts: dict[str, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """tokenizers' BpeTrainer on our pre-tokenized chunks (each chunk one word, repeated `count` times), with
    vocab_size = 256 + num_merges; its merges as byte strings."""
    import json

    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.BPE())                 # no pre-tokenizer: every sequence is one chunk
    trainer = trainers.BpeTrainer(vocab_size=256 + num_merges, initial_alphabet=BYTE_LETTERS, show_progress=False)
    words = ["".join(BYTE_LETTERS[value] for value in chunk.encode("utf-8"))
             for chunk, count in chunk_counts.items() for _ in range(count)]
    tokenizer.train_from_iterator(words, trainer=trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [merge.split(" ") if isinstance(merge, str) else merge for merge in merges]
    return [tuple(bytes(ord(char) - 0x100 for char in side) for side in pair) for pair in pairs]


def as_bytes(merges: list[tuple[int, int]]) -> list[tuple[bytes, bytes]]:
    vocab = {i: bytes([i]) for i in range(256)}
    for i, (left, right) in enumerate(merges):
        vocab[256 + i] = vocab[left] + vocab[right]
    return [(vocab[left], vocab[right]) for left, right in merges]


def up_to_a_repeated_token(merges: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The merges up to and including the first whose token another merge already made ("aaa" as (aa, a), then as
    (a, aa)): tokenizers gives that token its old id again, we a new one, so later ids -- and tie-breaks -- differ."""
    made = set()
    for i, (left, right) in enumerate(merges):
        if left + right in made:
            return merges[:i + 1]
        made.add(left + right)
    return merges


@given(text=st.one_of(texts, runs, st.text(max_size=80)), num_merges=st.integers(1, 60))
def test_merges_equal_hf_tokenizers(text, num_merges):
    """Same counting (overlapping), same left-to-right merging, same tie rule, on ASCII, Korean, emoji and any
    Unicode text: the merge lists agree (up to a token made twice, see up_to_a_repeated_token)."""
    counts = count_chunks(text, pattern="gpt2")
    ours = up_to_a_repeated_token(as_bytes(train_merges(counts, num_merges)))
    theirs = hf_train_merges(counts, num_merges)[:len(ours)]
    assert ours == theirs


def hf_byte_level_train_merges(text: str, num_merges: int) -> list[tuple[bytes, bytes]]:
    """tokenizers' whole pipeline: its ByteLevel pre-tokenizer (GPT-2's regex and byte-to-unicode table) and
    BpeTrainer on raw text; merges as byte strings. Only for ASCII-letter text: those bytes are their own
    characters in GPT-2's table (so its ids follow byte order, as ours)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=256 + num_merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([text], trainer=trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [merge.split(" ") if isinstance(merge, str) else merge for merge in merges]
    return [(left.encode("ascii"), right.encode("ascii")) for left, right in pairs]


letter_lines = st.sampled_from(["ab", "abc", "aab", "abcde"]).flatmap(
    lambda letters: st.lists(st.text(alphabet=letters, min_size=1, max_size=12), min_size=1, max_size=30))


@given(lines=letter_lines, num_merges=st.integers(1, 40))
def test_merges_equal_hf_tokenizers_pre_tokenizing_itself_on_letter_corpora(lines, num_merges):
    """tokenizers pre-tokenizing the raw text with its own ByteLevel step, on lines of ASCII letters (where GPT-2's
    stand-in characters keep byte order): the same merges."""
    text = "\n".join(lines)
    ours = up_to_a_repeated_token(as_bytes(train_merges(count_chunks(text, pattern="gpt2"), num_merges)))
    assert ours == hf_byte_level_train_merges(text, num_merges)[:len(ours)]


def test_merges_equal_hf_tokenizers_on_a_mixed_script_corpus():
    text = ("def count(words):\n    return {w: len(w) for w in words}\n"
            "한국어 문장은 띄어쓰기를 합니다. 안녕하세요 😀😀😀 aaaaaaaa  Ünïcödé façade naïve café — 日本語\n") * 3
    counts = count_chunks(text, pattern="gpt2")
    ours = up_to_a_repeated_token(as_bytes(train_merges(counts, 150)))
    assert len(ours) > 100 and any(len(left + right) > 3 and left[0] >= 0x80 for left, right in ours)
    assert ours == hf_train_merges(counts, 150)[:len(ours)]


# ----------------------------------------------------------------------------------------------------------------
# count_chunks.


def test_count_chunks_counts_pretokenized_chunks():
    assert count_chunks("the cat the cat") == {"the": 1, " cat": 2, " the": 1}
    assert count_chunks(["ab ab", "ab"]) == {"ab": 2, " ab": 1}
    assert count_chunks(iter(["ab", "ab"])) == {"ab": 2}
    assert count_chunks([]) == {}
    assert count_chunks("2024", pattern="gpt4") == {"202": 1, "4": 1}
    assert count_chunks("2024", pattern="gpt2") == {"2024": 1}


def test_special_tokens_are_split_out_and_never_counted():
    eot = "<|endoftext|>"
    counts = count_chunks(f"hello world{eot}hello{eot}{eot} there", special_tokens=[eot])
    assert counts == Counter(count_chunks("hello world")) + Counter(count_chunks("hello")) \
        + Counter(count_chunks(" there"))
    assert not any("<|" in chunk or "|>" in chunk for chunk in counts)
    # The longer special wins where one is a prefix of another.
    counts = count_chunks("a<|x|>y<|x|>b", special_tokens=["<|x|>", "<|x|>y"])
    assert counts == {"a": 1, "b": 1}
    # Without the special list the markup is ordinary text.
    assert any("<|" in chunk for chunk in count_chunks(f"a{eot}b"))


# ----------------------------------------------------------------------------------------------------------------
# Progress reporting.


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
def test_progress_callable_gets_every_merge(trainer):
    calls = []
    counts = {"aaabdaaabac": 2}
    merges = trainer(counts, 5, progress=lambda *args: calls.append(args))
    assert [call[0] for call in calls] == [1, 2, 3, 4, 5]
    assert all(call[1] == 5 for call in calls)
    assert [call[2] for call in calls] == merges
    assert [call[3] for call in calls] == [8, 4, 4, 2, 2]  # (a,a) twice per "aaab", times count 2


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
def test_progress_true_prints_lines_to_stderr(trainer, capsys, monkeypatch):
    monkeypatch.setattr(train, "PROGRESS_EVERY", 2)
    trainer({"aaabdaaabac": 1}, 100, progress=True)  # stops after 7 merges: lines at 2, 4, 6 and the end
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "bpe train: 2/100 merges", "bpe train: 4/100 merges", "bpe train: 6/100 merges", "bpe train: 7/100 merges"]
    # the pair (261, 259) as the text it joins, not as ids
    assert "last merge b'aaabdaaab' + b'ac', count 1" in lines[-1] and lines[-1].endswith(" s")


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
@pytest.mark.parametrize("progress", [None, False])
def test_progress_off_is_silent(trainer, progress, capsys):
    trainer({"aaabdaaabac": 1}, 100, progress=progress)
    assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("trainer", TRAINERS, ids=TRAINER_IDS)
def test_bad_trainer_arguments(trainer):
    with pytest.raises(ValueError, match="num_merges must be >= 0, got -1"):
        trainer({"ab": 1}, -1)
    with pytest.raises(TypeError, match="num_merges must be an int, got str: '3'"):
        trainer({"ab": 1}, "3")
    with pytest.raises(TypeError, match="num_merges must be an int, got float: 2.0"):
        trainer({"ab": 1}, 2.0)
    with pytest.raises(TypeError, match="chunk_counts must be a mapping"):
        trainer([("ab", 1)], 1)
    with pytest.raises(TypeError, match="keys must be str chunks, got bytes: b'ab'"):
        trainer({b"ab": 1}, 1)
    with pytest.raises(ValueError, match="count of chunk 'ab' must be >= 0, got -2"):
        trainer({"ab": -2}, 1)
    with pytest.raises(TypeError, match="count of chunk 'ab' must be an int, got float"):
        trainer({"ab": 1.5}, 1)
    with pytest.raises(ValueError, match="not encodable as UTF-8"):
        trainer({"a\ud800": 1}, 1)
    with pytest.raises(TypeError, match="progress must be None, a bool or a callable, got str"):
        trainer({"ab": 1}, 1, progress="yes")


def test_bad_count_chunks_arguments():
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got bytes"):
        count_chunks(["ok", b"bytes"])
    with pytest.raises(TypeError, match="texts must be a str or an iterable of str, got int"):
        count_chunks(5)
    with pytest.raises(TypeError, match="texts must be a str or an iterable of str, got bytes"):
        count_chunks(b"abc")
    with pytest.raises(TypeError, match="special_tokens must be an iterable of strings, not one string"):
        count_chunks("abc", special_tokens="<|endoftext|>")
    with pytest.raises(TypeError, match="every special token must be a non-empty string, got ''"):
        count_chunks("abc", special_tokens=[""])
    with pytest.raises(ValueError, match="invalid pre-tokenizer regex"):
        count_chunks("abc", pattern="(unclosed")


@pytest.mark.parametrize("seed", range(3))
def test_fast_equals_reference_on_larger_random_corpora(seed):
    # Longer words and more merges than hypothesis draws: runs of a, b and Korean/emoji mixed, weighted counts.
    rng = random.Random(seed)
    pieces = ["a", "b", "aa", "ab", "한", "국", "😀", " ", " a", "ba"]
    counts = {"".join(rng.choices(pieces, k=rng.randint(1, 25))): rng.randint(1, 9) for _ in range(80)}
    assert train_merges(counts, 300) == train_merges_reference(counts, 300)
