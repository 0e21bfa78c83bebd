"""The fast encoder behind BPETokenizer.encode_ordinary: the ids of bpe.py's plain loop (pretokenize, then
`merge_chunk` inside each chunk), at close to tiktoken's speed in pure Python + NumPy.

What it adds, each kept because bench/bench_encode.py measures it (figures in docs/tokenizer.md) and each
property-tested equal to the plain loop (tests/tokenizer/test_bpe.py):
- a chunk cache: real text repeats its words, so a chunk is merged the first time it is seen and afterwards costs
  one C-level dict lookup; the cycle collector is paused while the cache fills;
- batch merging: the chunks one call has not seen yet are merged together, one NumPy round per merge step;
- a heap merge, O(n log n) per chunk where the plain loop is O(n^2): for chunks too long to batch, it keeps a
  megabyte of one repeated character near-linear (a bound on pathological text; ordinary text has no such chunk).
Not here: the merge rule (bpe.merge_chunk), special tokens, decoding.
"""
from __future__ import annotations

import gc
import threading
from heapq import heapify, heappop, heappush
from itertools import chain

import numpy as np

from scratch.tokenizer.pretokenize import apply_pattern, pretokenize, resolve_pattern

LONG_CHUNK_BYTES = 128  # longer chunks use the heap merge (a batch round packs a position into 8 bits)
BATCH_MIN = 64  # this many new chunks in one call are merged together with NumPy, fewer one by one (heap)
CACHE_LIMIT = 1 << 20  # chunk-cache entries; past this the cache starts over (memory stays bounded on any input)
_NO_RANK = 1 << 40  # "never merges" inside merge_batch (int64 room to pack a rank with an 8-bit position)


class ChunkCache(dict):
    """chunk text -> list of ids (never handed out: encode copies). A hit is one C-level dict lookup. A miss
    (`__missing__`) stores an empty placeholder list, remembered in `pending`, and returns it; the encoder then
    merges all pending chunks at once and fills the placeholders in place, so every occurrence it already
    collected sees the ids without a second lookup."""

    __slots__ = ("pending",)

    def __init__(self):
        super().__init__()
        self.pending: dict[str, list[int]] = {}

    def __missing__(self, chunk: str) -> list[int]:
        placeholder = self[chunk] = self.pending[chunk] = []
        return placeholder


class FastEncoder:
    """Encoding for one BPETokenizer, reading its tables (byte_ids, pair_ranks, merged_ids, id_of_bytes) and
    adding a chunk cache; the pattern and ignore_merges are taken when it is built (build a new one after changing
    them). Threads may share it: the cache's pending placeholders belong to one call at a time (a lock). Pickled
    (e.g. to worker processes) without the cache, the lock and the NumPy tables; they rebuild."""

    def __init__(self, tokenizer):
        self.byte_ids: list[int] = tokenizer.byte_ids
        self.pair_ranks: dict[tuple[int, int], int] = tokenizer.pair_ranks
        self.merged_ids = tokenizer.merged_ids
        self.id_of_bytes: dict[bytes, int] = tokenizer.id_of_bytes
        self.ignore_merges: bool = tokenizer.ignore_merges
        self.token_id_ranks = tokenizer.merge_rank == "token_id"  # the rank is the merged id
        self.regex = resolve_pattern(tokenizer.pattern)
        self.id_bits = max(max(tokenizer.vocab) + 1, 2).bit_length()  # a pair packs into one int64 for NumPy
        self.heap_steps = 0  # merge-heap pops so far (a work counter for the near-linear tests)
        # Switches for bench/bench_encode.py --paths, which turns each path off to show what it buys.
        self.batch_min = BATCH_MIN
        self.pause_gc = True
        self._fresh_state()

    def _fresh_state(self) -> None:
        self.cache = ChunkCache()
        self.cache_max_run: int | None = None  # the max_run the cached chunks were cut with
        self.lock = threading.Lock()
        self.arrays = None  # NumPy copies of the pair table, built on the first batch (see merge_batch)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("cache", "cache_max_run", "lock", "arrays"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fresh_state()

    # ---------------------------------------------------------------- text -> ids
    def encode_ordinary(self, text: str, max_run: int) -> list[int]:
        """The ids of pretokenize(text, pattern, max_run) chunk by chunk. The hot loop is C: one regex findall,
        one cache lookup per chunk, one flatten."""
        # The chunks are pretokenize()'s, found faster: the cache never holds a chunk longer than max_run, so such
        # a chunk is always a miss; only then is the text cut Meta-style and split again. No length scan of
        # every chunk (as pretokenize does) on the way.
        ids = self._ids_of_chunks(apply_pattern([text], self.regex), max_run, cut_if_long=True)
        if ids is None:
            ids = self._ids_of_chunks(pretokenize(text, self.regex, max_run), max_run, cut_if_long=False)
        return ids

    def _ids_of_chunks(self, chunks: list[str], max_run: int, cut_if_long: bool) -> list[int] | None:
        """The ids of the chunks, or None (with nothing left in the cache) if cut_if_long and a chunk is longer
        than max_run."""
        with self.lock:
            cache = self.cache
            if len(cache) > CACHE_LIMIT or max_run != self.cache_max_run:  # full, or cut with another limit
                cache.clear()
                self.cache_max_run = max_run
            # A cold cache allocates one small list per new chunk (100k+ on a 10 MB text) and no reference cycles;
            # the cycle collector, triggered by those allocations, would walk them again and again.
            collecting = gc.isenabled() and self.pause_gc
            if collecting:
                gc.disable()
            try:
                parts = list(map(cache.__getitem__, chunks))
                if cache.pending:
                    pending, cache.pending = cache.pending, {}
                    try:
                        if max(map(len, pending)) > max_run:
                            for chunk in pending:  # long chunks stay out of the cache (see encode_ordinary)
                                if cut_if_long or len(chunk) > max_run:
                                    del cache[chunk]
                            if cut_if_long:
                                return None
                        for chunk, ids in self.encode_chunks(pending).items():
                            pending[chunk].extend(ids)  # the placeholder that `parts` already holds
                    except BaseException:  # e.g. a lone surrogate: leave no empty placeholder behind
                        for chunk in pending:
                            cache.pop(chunk, None)
                        raise
                return list(chain.from_iterable(parts))
            finally:
                if collecting:
                    gc.enable()

    def encode_chunks(self, chunks: list[str] | dict[str, object]) -> dict[str, list[int]]:
        """chunk -> ids for many chunks: whole-token lookup, then NumPy rounds for many short chunks, the heap for
        long ones and for a few."""
        chunks = list(chunks)
        datas = [chunk.encode("utf-8") for chunk in chunks]
        found = list(map(self.id_of_bytes.get, datas)) if self.ignore_merges else [None] * len(datas)
        encoded: dict[str, list[int]] = {}
        short_chunks: list[str] = []
        short_datas: list[bytes] = []
        for chunk, data, token_id in zip(chunks, datas, found):
            if token_id is not None:
                encoded[chunk] = [token_id]
            elif 2 <= len(data) <= LONG_CHUNK_BYTES:
                short_chunks.append(chunk)
                short_datas.append(data)
            else:
                encoded[chunk] = self.merge_heap(data)  # one byte, or long
        if len(short_datas) >= self.batch_min:
            encoded.update(zip(short_chunks, self.merge_batch(short_datas)))
        else:
            encoded.update(zip(short_chunks, map(self.merge_heap, short_datas)))
        return encoded

    # ---------------------------------------------------------------- BPE inside one chunk, fast
    def merge_heap(self, data: bytes) -> list[int]:
        """bpe.merge_chunk in O(n log n): a heap of (rank, position) over a linked list of tokens. Entries go
        stale when a neighbour merges; a popped entry is used only if the pair at that position is still the one
        pushed."""
        rank_of, merged_ids = self.pair_ranks.get, self.merged_ids
        ids = [self.byte_ids[byte] for byte in data]
        size = len(ids)
        next_at = list(range(1, size + 1))  # size marks the end
        prev_at = list(range(-1, size - 1))  # -1 marks the start
        heap = []
        for at in range(size - 1):
            rank = rank_of((ids[at], ids[at + 1]))
            if rank is not None:
                heap.append((rank, at, ids[at], ids[at + 1]))
        heapify(heap)
        steps = 0
        while heap:
            rank, at, left, right = heappop(heap)
            steps += 1
            after = next_at[at]
            if after >= size or ids[at] != left or ids[after] != right:
                continue  # stale: this position merged or its right neighbour changed since the push
            new = merged_ids[rank]
            ids[at], ids[after] = new, -1  # -1: the right token is absorbed
            beyond = next_at[after]
            next_at[at] = beyond
            if beyond < size:
                prev_at[beyond] = at
                rank = rank_of((new, ids[beyond]))
                if rank is not None:
                    heappush(heap, (rank, at, new, ids[beyond]))
            before = prev_at[at]
            if before >= 0:
                rank = rank_of((ids[before], new))
                if rank is not None:
                    heappush(heap, (rank, before, ids[before], new))
        self.heap_steps += steps
        return [token_id for token_id in ids if token_id >= 0]

    def _pair_arrays(self):
        """The pair table for NumPy: sorted packed keys (left << id_bits | right) and their ranks, rank -> merged
        id, byte -> id, and the rank of every pair of single bytes."""
        if self.arrays is None:
            count = len(self.pair_ranks)
            pairs = np.fromiter(chain.from_iterable(self.pair_ranks), dtype=np.int64, count=2 * count)
            keys = (pairs[0::2] << self.id_bits) | pairs[1::2]
            ranks = np.fromiter(self.pair_ranks.values(), dtype=np.int64, count=count)
            order = np.argsort(keys)
            if not count:  # no merges: one key that never matches keeps searchsorted in range
                keys, ranks, order = np.array([-1], np.int64), np.array([_NO_RANK], np.int64), np.array([0])
            keys, ranks = keys[order], ranks[order]
            merged_ids = None if self.token_id_ranks else np.asarray(self.merged_ids, dtype=np.int64)
            byte_ids = np.asarray(self.byte_ids, dtype=np.int64)
            # rank of every pair of single bytes, indexed by (byte1 << 8) | byte2: the first round needs no search
            byte_pairs = ((byte_ids[:, None] << self.id_bits) | byte_ids[None, :]).ravel()
            at = np.minimum(np.searchsorted(keys, byte_pairs), len(keys) - 1)
            byte_pair_ranks = np.where(keys[at] == byte_pairs, ranks[at], _NO_RANK)
            self.arrays = (keys, ranks, merged_ids, byte_ids, byte_pair_ranks)
        return self.arrays

    def merge_batch(self, datas: list[bytes]) -> list[list[int]]:
        """bpe.merge_chunk for many short chunks (2..255 bytes each) at once: each round merges, in every chunk not
        yet finished, its lowest-ranked pair (leftmost on ties), for all chunks with a few NumPy calls. Pair ranks
        are found by binary search in the sorted pair keys; after a merge only the two pairs touching the new token
        are looked up again. A chunk leaves the batch when none of its pairs has a rank."""
        sorted_keys, sorted_ranks, merged_ids, byte_ids, byte_pair_ranks = self._pair_arrays()
        id_bits, last = self.id_bits, len(sorted_keys) - 1

        def rank_of(left: np.ndarray, right: np.ndarray) -> np.ndarray:
            keys = (left << id_bits) | right
            order = np.argsort(keys)  # searching in sorted order touches memory in order
            keys = keys[order]
            at = np.minimum(np.searchsorted(sorted_keys, keys), last)
            found = np.empty_like(keys)
            found[order] = np.where(sorted_keys[at] == keys, sorted_ranks[at], _NO_RANK)
            return found

        results: list = [None] * len(datas)
        lengths = np.fromiter(map(len, datas), dtype=np.int64, count=len(datas))  # per chunk
        data = np.frombuffer(b"".join(datas), dtype=np.uint8).astype(np.int64)
        ids = byte_ids[data]  # all chunks' tokens, end to end
        starts = np.cumsum(lengths) - lengths
        ranks = np.empty_like(ids)  # ranks[i]: the pair (i, i + 1), or no rank at a chunk's last token
        ranks[:-1] = byte_pair_ranks[(data[:-1] << 8) | data[1:]]
        ranks[starts + lengths - 1] = _NO_RANK
        chunk_of = np.arange(len(datas))
        while len(lengths):
            local = np.arange(len(ids)) - np.repeat(starts, lengths)  # position inside its chunk, < 256
            best = np.minimum.reduceat((ranks << 8) | local, starts)  # lowest rank, then leftmost, per chunk
            done = (best >> 8) >= _NO_RANK
            if done.any():  # finished chunks leave
                finished = np.repeat(done, lengths)
                flat, cut = ids[finished].tolist(), 0
                for chunk, length in zip(chunk_of[done].tolist(), lengths[done].tolist()):
                    results[chunk] = flat[cut:cut + length]
                    cut += length
                ids, ranks = ids[~finished], ranks[~finished]
                lengths, chunk_of, best = lengths[~done], chunk_of[~done], best[~done]
                starts = np.cumsum(lengths) - lengths
                if not len(lengths):
                    break
            at = starts + (best & 255)  # the left token of each chunk's merge
            ids[at] = best >> 8 if merged_ids is None else merged_ids[best >> 8]
            keep = np.ones(len(ids), dtype=bool)
            keep[at + 1] = False  # the right token is absorbed
            ids, ranks = ids[keep], ranks[keep]
            shifted = np.arange(len(at))  # one token fewer in every chunk before this one
            at, starts, lengths = at - shifted, starts - shifted, lengths - 1
            ranks[at] = _NO_RANK
            right = at[at + 1 < starts + lengths]
            ranks[right] = rank_of(ids[right], ids[right + 1])
            left = at[at > starts] - 1
            ranks[left] = rank_of(ids[left], ids[left + 1])
        return results
