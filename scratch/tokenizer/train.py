"""Byte-level BPE training (Sennrich et al. 2016, on UTF-8 bytes as in GPT-2): learn the merge list from a corpus.

`train_merges_reference` below is the four steps, literally: 1 init -- each pre-tokenized chunk starts as its
bytes (ids 0..255); 2 count -- every adjacent pair, weighted by the chunk's count; 3 merge -- the most frequent pair
becomes id 256 + merge index everywhere, left to right, non-overlapping; 4 repeat until `num_merges` merges or no
pair is left. Rules that fix the result: pairs are counted overlapping (in "aaa" the pair (a, a) counts twice, as
in minbpe and HF tokenizers); ties go to the smallest (left_id, right_id); the order of the chunk counts does not
matter; no merge crosses a chunk boundary. `train_fast.train_merges` returns the identical list, fast enough for
megabytes (it is what BPETokenizer.train runs). After the trainer: the corpus as chunk counts (`count_chunks`), the
input checks and the progress reporter. Not here: encoding (bpe.py), SentencePiece/unigram training.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import regex

from scratch.tokenizer.pretokenize import pretokenize, resolve_pattern

Pair = tuple[int, int]
Word = tuple[list[int], int]  # a distinct chunk: its token ids so far, and how often it occurs in the corpus


def train_merges_reference(chunk_counts: Mapping[str, int], num_merges: int,
                           progress: bool | Progress | None = None) -> list[Pair]:
    """The merge list by the four steps (O(num_merges x corpus): the oracle, for small corpora). Same contract and
    result as `train_fast.train_merges`."""
    words = checked_words(chunk_counts, num_merges)  # 1 init: every chunk as its bytes, with its count
    reporter = ProgressReporter(progress, num_merges)
    merges: list[Pair] = []
    pair, count = None, 0
    for step in range(num_merges):
        pair_counts = count_pairs(words)  # 2 count
        if not pair_counts:
            break  # every chunk is one token: nothing left to merge
        pair = min(pair_counts, key=lambda candidate: (-pair_counts[candidate], candidate))  # ties: smallest pair
        count = pair_counts[pair]
        words = [(merge_pair(ids, pair, 256 + step), weight) for ids, weight in words]  # 3 merge
        merges.append(pair)
        reporter.merged(len(merges), pair, count)
    reporter.finished(len(merges), pair, count)  # 4 repeat (the loop)
    return merges


def count_pairs(words: list[Word]) -> dict[Pair, int]:
    """Step 2: every adjacent pair, overlapping, weighted by the chunk's count."""
    pair_counts: dict[Pair, int] = {}
    for ids, weight in words:
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + weight
    return pair_counts


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Step 3 for one chunk: replace each occurrence of `pair`, left to right, non-overlapping, by `new_id`."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


# ----------------------------------------------------------------------------------------------------------------
# The corpus as chunk counts (what both trainers take).

def count_chunks(texts: str | Iterable[str], pattern: str | tuple[str, ...] = "gpt4",
                 special_tokens: Iterable[str] = ()) -> dict[str, int]:
    """How often each pre-tokenized chunk occurs in `texts` (one string, or an iterable of strings).

    Special-token strings (e.g. "<|endoftext|>") are cut out of each text first and never counted, so no merge
    can learn them or reach across them. `pattern` is what `pretokenize` takes: a name ("gpt2", "gpt4"/"cl100k",
    "o200k", "llama3"), a regex, or a tuple of them. Each text is pre-tokenized on its own, so chunks never span
    two texts; blocks of ~16 KB count fastest (one C-level findall and Counter update each).
    """
    resolve_pattern(pattern)  # a bad pattern fails here, named
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be an iterable of strings, not one string: {special_tokens!r}")
    specials = list(special_tokens)
    for token in specials:
        if not isinstance(token, str) or not token:
            raise TypeError(f"every special token must be a non-empty string, got {token!r}")
    # Longest first, so "<|a|>" wins over a special that is its prefix.
    splitter = (regex.compile("|".join(regex.escape(token) for token in sorted(specials, key=len, reverse=True)))
                if specials else None)
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
    counts: Counter[str] = Counter()
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}: {text!r:.80}")
        pieces = splitter.split(text) if splitter is not None else (text,)
        for piece in pieces:
            if piece:
                counts.update(pretokenize(piece, pattern))
    return dict(counts)


# ----------------------------------------------------------------------------------------------------------------
# Input checks and progress (shared by both trainers).

Progress = Callable[[int, int, Pair, int], None]
PROGRESS_EVERY = 1000  # progress=True prints a line every this many merges (and one at the end)


def checked_words(chunk_counts: Mapping[str, int], num_merges: int) -> list[Word]:
    """Step 1 with the arguments checked: (byte ids, count) for every chunk with a positive count. A bad argument
    raises TypeError/ValueError naming it."""
    if isinstance(num_merges, bool) or not isinstance(num_merges, int):
        raise TypeError(f"num_merges must be an int, got {type(num_merges).__name__}: {num_merges!r}")
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    if not isinstance(chunk_counts, Mapping):
        raise TypeError(f"chunk_counts must be a mapping chunk -> count (see count_chunks), got "
                        f"{type(chunk_counts).__name__}")
    words = []
    for chunk, count in chunk_counts.items():
        if not isinstance(chunk, str):
            raise TypeError(f"chunk_counts keys must be str chunks, got {type(chunk).__name__}: {chunk!r:.80}")
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count of chunk {chunk!r:.80} must be an int, got {type(count).__name__}: {count!r}")
        if count < 0:
            raise ValueError(f"count of chunk {chunk!r:.80} must be >= 0, got {count}")
        try:
            ids = list(chunk.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise ValueError(f"chunk {chunk!r:.80} is not encodable as UTF-8 ({error.reason})") from None
        if count > 0:
            words.append((ids, count))
    return words


class ProgressReporter:
    """progress=None/False: silent; True: a line to stderr every PROGRESS_EVERY merges and at the end;
    a callable: called after every merge with (merges_done, num_merges, pair, count)."""

    def __init__(self, progress: bool | Progress | None, num_merges: int):
        if progress is not None and not isinstance(progress, bool) and not callable(progress):
            raise TypeError(f"progress must be None, a bool or a callable, got {type(progress).__name__}")
        self.callback = progress if callable(progress) else None
        self.lines = progress is True
        self.num_merges = num_merges
        self.start = time.perf_counter()
        self.token_bytes = [bytes([value]) for value in range(256)]   # id -> bytes, for the lines: merge i is 256 + i

    def merged(self, done: int, pair: Pair, count: int) -> None:
        if self.callback is not None:
            self.callback(done, self.num_merges, pair, count)
        if self.lines:
            self.token_bytes.append(self.token_bytes[pair[0]] + self.token_bytes[pair[1]])
            if done % PROGRESS_EVERY == 0:
                self.line(done, pair, count)

    def finished(self, done: int, pair: Pair | None, count: int) -> None:
        if self.lines and (done == 0 or done % PROGRESS_EVERY != 0):
            self.line(done, pair, count)

    def line(self, done: int, pair: Pair | None, count: int) -> None:
        # The pair as text (b' th' + b'e'), not ids: ids mean nothing to a reader of the log.
        last = (f"last merge {self.token_bytes[pair[0]]!r} + {self.token_bytes[pair[1]]!r}, count {count}"
                if pair is not None else "no pair")
        print(f"bpe train: {done}/{self.num_merges} merges, {last}, {time.perf_counter() - self.start:.1f} s",
              file=sys.stderr, flush=True)
