"""The fast BPE trainer: the four steps of `train.train_merges_reference`, with the identical merge list, on
megabytes of text instead of kilobytes (the one BPETokenizer.train runs).

What changes is only the bookkeeping: step 2 counts the pairs once, then each merge updates the counts where it
changed something instead of recounting the corpus; an index pair -> words finds the words to rewrite; a heap of
(-count, left, right) with lazy invalidation finds the most frequent pair (smallest pair on ties). The hypothesis
tests in tests/tokenizer/test_train.py hold it to the reference; bench/bench_train.py times it against Hugging Face.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping

from scratch.tokenizer.train import Pair, Progress, ProgressReporter, checked_words


def train_merges(chunk_counts: Mapping[str, int], num_merges: int,
                 progress: bool | Progress | None = None) -> list[Pair]:
    """Learn `num_merges` byte-level BPE merges from chunk counts (see `train.count_chunks`); merge i makes id
    256 + i.

    Returns the (left_id, right_id) pairs in merge order; fewer if the corpus runs out of pairs. The rules (see
    train.py): pairs counted overlapping, merges applied left to right without overlaps, ties to the smallest pair,
    independent of the order of `chunk_counts`. Identical to `train.train_merges_reference`.
    `progress`: None/False silent; True prints a line to stderr every 1000 merges and at the end; a callable is
    called after every merge with (merges_done, num_merges, pair, count).

    How: each distinct chunk is one word (a list of ids) with its count; `pair_counts` holds the weighted count of
    every pair; `where` maps a pair to the words that may hold it; the heap finds the best pair. A merge rewrites
    only the words in `where[pair]` and patches the counts around each occurrence.
    """
    # A one-byte chunk has no pair and can never take part in a merge: leave it out.
    words = [(ids, count) for ids, count in checked_words(chunk_counts, num_merges) if len(ids) >= 2]
    reporter = ProgressReporter(progress, num_merges)
    ids_of = [ids for ids, _ in words]
    weight_of = [count for _, count in words]

    # 2 count, once: pair -> weighted count, and pair -> indices of the words that contain it.
    pair_counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for word, (ids, count) in enumerate(words):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
            holders = where.get(pair)
            if holders is None:
                where[pair] = {word}
            else:
                holders.add(word)
    heap = [(-count, left, right) for (left, right), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    pair, count = None, 0
    count_of = pair_counts.get
    while len(merges) < num_merges and heap:
        negative, left, right = heapq.heappop(heap)
        current = count_of((left, right), 0)
        # Lazy invalidation: counts only fall after an entry is pushed, so an entry may be too high. The entry that
        # matches is the true maximum, because every live pair has an entry >= its count; re-push a stale one.
        if current != -negative:
            if current > 0:
                heapq.heappush(heap, (-current, left, right))
            continue
        pair, count = (left, right), current
        new_id = 256 + len(merges)
        # 3 merge. Pairs with new_id are all new: index them (pair -> words) and push them once, with their final
        # counts.
        touched: dict[Pair, set[int]] = {}
        for word in where.pop(pair):
            ids = ids_of[word]
            weight = weight_of[word]
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
                    _decrement(pair_counts, where, (before, left), weight)
                    new_pair = (before, new_id)
                    pair_counts[new_pair] = count_of(new_pair, 0) + weight
                    if new_pair not in touched:
                        touched[new_pair] = {word}
                    else:
                        touched[new_pair].add(word)
                if i + 1 < end:
                    after = ids[i + 2]
                    _decrement(pair_counts, where, (right, after), weight)
                    new_pair = (new_id, after)
                    pair_counts[new_pair] = count_of(new_pair, 0) + weight
                    if new_pair not in touched:
                        touched[new_pair] = {word}
                    else:
                        touched[new_pair].add(word)
                ids[i] = new_id
                del ids[i + 1]
                i += 1
        pair_counts.pop(pair)  # its occurrences are all merged now and never come back (new ids are never a or b)
        for new_pair, holders in touched.items():
            new_count = count_of(new_pair, 0)
            if new_count > 0:
                heapq.heappush(heap, (-new_count, new_pair[0], new_pair[1]))
                where[new_pair] = holders
            # else: made and unmade within this merge, as (X, a) in "aaaa" -> [X, a, a] -> [X, X]
        merges.append(pair)
        reporter.merged(len(merges), pair, count)
    reporter.finished(len(merges), pair, count)  # 4 repeat (the loop)
    return merges


def _decrement(pair_counts: dict[Pair, int], where: dict[Pair, set[int]], pair: Pair, amount: int) -> None:
    """Take `amount` off a pair's count; a pair that reaches 0 is forgotten (an old pair never comes back: only
    pairs with the newest id ever grow), which keeps memory proportional to the live pairs."""
    count = pair_counts[pair] - amount
    if count:
        pair_counts[pair] = count
    else:
        del pair_counts[pair]
        where.pop(pair, None)
