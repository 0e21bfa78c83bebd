"""Byte-level BPE training (Sennrich et al. 2016, on UTF-8 bytes as in GPT-2): learn the merge list from a corpus.

The four steps: 1 init -- each pre-tokenized chunk starts as its bytes (ids 0..255); 2 count -- every adjacent pair,
weighted by the chunk's count; 3 merge -- the most frequent pair becomes id 256 + merge index everywhere, left to
right, non-overlapping; 4 repeat until `num_merges` merges or no pair is left. `train_merges_reference` is those
steps literally; `train_merges` (incremental counts, pair -> words index, heap) returns the identical list.
Rules that fix the result: pairs are counted overlapping (in "aaa" the pair (a, a) counts twice, as in minbpe and
HF tokenizers); ties go to the smallest (left_id, right_id); the order of the chunk counts does not matter; no
merge crosses a chunk boundary. Not here: encoding (bpe.py), SentencePiece/unigram training.
"""
from __future__ import annotations

import heapq
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import regex

from scratch.tokenizer.pretokenize import pretokenize, resolve_pattern

Pair = tuple[int, int]
Progress = Callable[[int, int, Pair, int], None]

PROGRESS_EVERY = 1000  # progress=True prints a line every this many merges (and one at the end)


# ----------------------------------------------------------------------------------------------------------------
# Step 0: the corpus as chunk counts.

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
    splitter = (regex.compile("|".join(regex.escape(t) for t in sorted(specials, key=len, reverse=True)))
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


def _checked_inputs(chunk_counts: Mapping[str, int], num_merges: int) -> list[tuple[list[int], int]]:
    """Validate the arguments; return (byte ids, count) for every chunk with a positive count."""
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


class _Reporter:
    """progress=None/False: silent; True: a line to stderr every PROGRESS_EVERY merges and at the end;
    a callable: called after every merge with (merges_done, num_merges, pair, count)."""

    def __init__(self, progress: bool | Progress | None, num_merges: int):
        if progress is not None and not isinstance(progress, bool) and not callable(progress):
            raise TypeError(f"progress must be None, a bool or a callable, got {type(progress).__name__}")
        self.callback = progress if callable(progress) else None
        self.lines = progress is True
        self.num_merges = num_merges
        self.start = time.perf_counter()

    def merged(self, done: int, pair: Pair, count: int) -> None:
        if self.callback is not None:
            self.callback(done, self.num_merges, pair, count)
        if self.lines and done % PROGRESS_EVERY == 0:
            self.line(done, pair, count)

    def finished(self, done: int, pair: Pair | None, count: int) -> None:
        if self.lines and (done == 0 or done % PROGRESS_EVERY != 0):
            self.line(done, pair, count)

    def line(self, done: int, pair: Pair | None, count: int) -> None:
        last = f"last pair {pair} count {count}" if pair is not None else "no pair"
        print(f"bpe train: {done}/{self.num_merges} merges, {last}, {time.perf_counter() - self.start:.1f} s",
              file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# The reference: the four steps, literally. O(num_merges * corpus): the oracle, for small corpora.

def count_pairs(words: list[tuple[list[int], int]]) -> dict[Pair, int]:
    """Step 2: every adjacent pair, overlapping, weighted by the chunk's count."""
    pair_counts: dict[Pair, int] = {}
    for ids, count in words:
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
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


def train_merges_reference(chunk_counts: Mapping[str, int], num_merges: int,
                           progress: bool | Progress | None = None) -> list[Pair]:
    """The merge list by the textbook loop; same contract and result as `train_merges`, much slower."""
    words = _checked_inputs(chunk_counts, num_merges)  # 1 init: every chunk as its bytes
    reporter = _Reporter(progress, num_merges)
    merges: list[Pair] = []
    pair, count = None, 0
    for step in range(num_merges):
        pair_counts = count_pairs(words)  # 2 count
        if not pair_counts:
            break  # every chunk is one token: nothing left to merge
        # The most frequent pair; on a tie the smallest (left, right).
        pair = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        count = pair_counts[pair]
        words = [(merge_pair(ids, pair, 256 + step), n) for ids, n in words]  # 3 merge
        merges.append(pair)
        reporter.merged(len(merges), pair, count)
    reporter.finished(len(merges), pair, count)  # 4 repeat (the loop)
    return merges


# ----------------------------------------------------------------------------------------------------------------
# The fast trainer: the same steps, with the counts updated only where a merge changed something.

def _decrement(pair_counts: dict[Pair, int], where: dict[Pair, set[int]], pair: Pair, n: int) -> None:
    """Take `n` off a pair's count; a pair that reaches 0 is forgotten (an old pair never comes back: only pairs
    with the newest id ever grow), which keeps memory proportional to the live pairs."""
    count = pair_counts[pair] - n
    if count:
        pair_counts[pair] = count
    else:
        del pair_counts[pair]
        where.pop(pair, None)


def train_merges(chunk_counts: Mapping[str, int], num_merges: int,
                 progress: bool | Progress | None = None) -> list[Pair]:
    """Learn `num_merges` byte-level BPE merges from chunk counts (see `count_chunks`); merge i makes id 256 + i.

    Returns the (left_id, right_id) pairs in merge order; fewer if the corpus runs out of pairs. The rules:
    pairs are counted overlapping (in "aaa" the pair (a, a) counts twice); each merge is applied left to right,
    non-overlapping ("aaa" -> [X, a]); ties between equal counts go to the smallest (left_id, right_id); the result
    does not depend on the order of `chunk_counts`. Identical to `train_merges_reference`.
    `progress`: None/False silent; True prints a line to stderr every 1000 merges and at the end; a callable is
    called after every merge with (merges_done, num_merges, pair, count).

    How: each distinct chunk is one word (a list of ids) with its count; `pair_counts` holds the weighted count of
    every pair; `where` maps a pair to the words that may hold it; a heap of (-count, left, right) finds the best
    pair. A merge rewrites only the words in `where[pair]` and patches the counts around each occurrence.
    """
    # A one-byte chunk has no pair and can never take part in a merge: leave it out.
    words = [(ids, count) for ids, count in _checked_inputs(chunk_counts, num_merges) if len(ids) >= 2]
    reporter = _Reporter(progress, num_merges)
    ids_of = [ids for ids, _ in words]
    weight = [count for _, count in words]

    # 2 count, once: pair -> weighted count, and pair -> indices of the words that contain it.
    pair_counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for w, (ids, count) in enumerate(words):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            holders = where.get(pair)
            if holders is None:
                where[pair] = {w}
            else:
                holders.add(w)
    heap = [(-count, left, right) for (left, right), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    pair, count = None, 0
    get = pair_counts.get
    while len(merges) < num_merges and heap:
        negative, left, right = heapq.heappop(heap)
        current = get((left, right), 0)
        # Lazy invalidation: counts only fall after an entry is pushed, so an entry may be too high. The entry that
        # matches is the true maximum, because every live pair has an entry >= its count; re-push a stale one.
        if current != -negative:
            if current > 0:
                heapq.heappush(heap, (-current, left, right))
            continue
        pair, count = (left, right), current
        new_id = 256 + len(merges)
        # Pairs with new_id are all new: index them (pair -> words) and push them once, with their final counts.
        touched: dict[Pair, set[int]] = {}
        for w in where.pop(pair):
            ids = ids_of[w]
            n = weight[w]
            i = 0
            while True:
                # subtle: the word is rewritten in place, so each occurrence is patched against the word as it is
                # *now* (its left neighbour may already be new_id): in "aaaa" this gives [X, X] and counts exact.
                try:
                    i = ids.index(left, i)
                except ValueError:
                    break
                end = len(ids) - 1
                if i == end:
                    break
                if ids[i + 1] != right:
                    i += 1
                    continue
                if i > 0:
                    before = ids[i - 1]
                    _decrement(pair_counts, where, (before, left), n)
                    new = (before, new_id)
                    pair_counts[new] = get(new, 0) + n
                    if new not in touched:
                        touched[new] = {w}
                    else:
                        touched[new].add(w)
                if i + 1 < end:
                    after = ids[i + 2]
                    _decrement(pair_counts, where, (right, after), n)
                    new = (new_id, after)
                    pair_counts[new] = get(new, 0) + n
                    if new not in touched:
                        touched[new] = {w}
                    else:
                        touched[new].add(w)
                ids[i] = new_id
                del ids[i + 1]
                i += 1
        pair_counts.pop(pair)  # its occurrences are all merged now and never come back (new ids are never a or b)
        for p, holders in touched.items():
            c = get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p[0], p[1]))
                where[p] = holders
            # else: made and unmade within this merge, as (X, a) in "aaaa" -> [X, a, a] -> [X, X]
        merges.append(pair)
        reporter.merged(len(merges), pair, count)
    reporter.finished(len(merges), pair, count)
    return merges
