"""Byte-level BPE (Sennrich et al. 2016, run on UTF-8 bytes as in GPT-2): text -> token ids -> text.

Encoding cuts the text into pre-token chunks (pretokenize.py), then inside each chunk: 1 start from the chunk's
bytes as single-byte ids, 2 look at every adjacent pair, 3 merge the pair with the lowest rank (leftmost on ties),
4 repeat until no adjacent pair has a rank. Training learns the ranks with the same four steps, counting pairs
instead of looking them up (train.py). One loop serves every vocabulary: tiktoken rank files are turned into a
pair table (tiktoken_format.py), Hugging Face and SentencePiece files are read by hf.py and sentencepiece.py.
It matches tiktoken id for id (tests/tokenizer/test_tiktoken_exact.py). Not here: normalizers, byte fallback.

Reading guide: `_bpe_reference` is the algorithm for one chunk, as the four steps say it -- read it first. The rest
of "BPE inside one chunk" is speed, each path property-tested equal to it: `_bpe_short` (a list scan, for short
chunks), `_bpe_heap` (a heap, so a 25,000-byte chunk is not quadratic) and `_bpe_batch` (NumPy rounds merging many
new chunks at once). Encoding a text is one regex split and one cache lookup per chunk (`_ChunkCache`): real text
repeats its words, so most chunks are merged only the first time they are seen.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import gc
import json
import sys
import threading
from heapq import heapify, heappop, heappush
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np
import regex

from scratch.atomic import atomic_write
from scratch.tokenizer.chat_template import ChatTemplateMixin
from scratch.tokenizer.pretokenize import MAX_RUN_CHARS, apply_pattern, pretokenize, resolve_pattern

NO_RANK = sys.maxsize  # "this pair never merges": larger than every rank, so min() never picks it over a real one
LONG_CHUNK_BYTES = 128  # chunks longer than this use the heap merge (O(n log n)) instead of the list scan (O(n^2))
BATCH_MIN = 64  # this many new chunks in one call are merged together with NumPy (_bpe_batch), fewer one by one
CACHE_LIMIT = 1 << 20  # chunk-cache entries; past this the cache starts over (memory stays bounded on any input)
_NO_RANK_NP = 1 << 40  # NO_RANK inside _bpe_batch (int64 room to pack a rank with an 8-bit position)
FORMAT_NAME, FORMAT_VERSION = "scratch-bpe", 1
MERGE_RANKS = ("index", "token_id")


class _ChunkCache(dict):
    """chunk text -> list of ids (never handed out: encode copies). A hit is one C-level dict lookup. A miss
    (`__missing__`) stores an empty placeholder list, remembered in `pending`, and returns it; encode_ordinary
    then merges all pending chunks at once and fills the placeholders in place, so every occurrence it already
    collected sees the ids without a second lookup."""

    __slots__ = ("pending",)

    def __init__(self):
        super().__init__()
        self.pending: dict[str, list[int]] = {}

    def __missing__(self, chunk: str) -> list[int]:
        placeholder = self[chunk] = self.pending[chunk] = []
        return placeholder


class StreamDecoder:
    """Decode ids one at a time, for printing tokens as a model generates them.

    A token may end inside a multi-byte UTF-8 character (an emoji is often 2-4 byte tokens), so `push` holds back
    an incomplete sequence until the bytes that complete it arrive; `flush` ends the stream (an unfinished sequence
    becomes U+FFFD under errors="replace"). The pieces joined equal `decode(ids)` for every split of the ids --
    Python's incremental UTF-8 decoder makes the same replacement choices as bytes.decode.
    """

    def __init__(self, tokenizer: "BPETokenizer", errors: str = "replace"):
        self._token_bytes = tokenizer.token_bytes
        self._errors = errors
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


class BPETokenizer(ChatTemplateMixin):  # + apply_chat_template (chat_template.py)
    """A byte-level BPE vocabulary with its merge ranks, pre-tokenizer pattern and special tokens.

    vocab: id -> token bytes; every single byte needs an id (not necessarily its value: cl100k's are not).
    merges: (left_id, right_id) in priority order; the merged token is the id whose bytes are the concatenation.
    merge_rank="index" ranks merge i as i (trained and Hugging Face vocabularies); "token_id" ranks a merge by the
    id of the token it makes, so different splits of one token tie and the leftmost wins (tiktoken rank files).
    ignore_merges: a chunk that is itself a token becomes that token before any merging (tiktoken, Llama 3).
    """

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[int, int]], pattern: str | tuple[str, ...] = "gpt4",
                 special_tokens: dict[str, int] | None = None, *, ignore_merges: bool = True,
                 merge_rank: str = "index"):
        if merge_rank not in MERGE_RANKS:
            raise ValueError(f"merge_rank must be one of {MERGE_RANKS}, got {merge_rank!r}")
        self.vocab: dict[int, bytes] = {}
        for token_id, token in vocab.items():
            if not isinstance(token_id, int) or token_id < 0 or not isinstance(token, (bytes, bytearray)):
                raise ValueError(f"vocab entries must be non-negative int -> bytes, got {token_id!r}: {token!r}")
            self.vocab[token_id] = bytes(token)
        self.pattern = tuple(pattern) if isinstance(pattern, list) else pattern
        self._regex = resolve_pattern(self.pattern)
        self.ignore_merges = bool(ignore_merges)
        self.merge_rank = merge_rank
        self._max_run = MAX_RUN_CHARS  # see the max_run property

        # bytes -> id (the lowest id if a vocabulary lists the same bytes twice)
        self._id_of_bytes: dict[bytes, int] = {}
        for token_id in sorted(self.vocab):
            self._id_of_bytes.setdefault(self.vocab[token_id], token_id)
        missing = [value for value in range(256) if bytes([value]) not in self._id_of_bytes]
        if missing:
            shown = ", ".join(f"0x{value:02x}" for value in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"vocabulary has no token for {len(missing)} single byte(s) ({shown}); byte-level BPE "
                             "needs all 256 so that any text can be encoded")
        self._byte_ids = [self._id_of_bytes[bytes([value])] for value in range(256)]

        # The pair table: (left, right) packed into one int -> rank; rank -> id of the merged token.
        self.merges: list[tuple[int, int]] = []
        self._shift = max(max(self.vocab) + 1, 2).bit_length()
        self._pair_rank: dict[int, int] = {}
        rank_new: list[int] = []
        vocab_ = self.vocab
        for index, merge in enumerate(merges):
            try:
                left, right = merge
                merged = self._id_of_bytes[vocab_[left] + vocab_[right]]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"merge {index} {tuple(merge) if isinstance(merge, (list, tuple)) else merge!r}: "
                                 + self._merge_problem(merge)) from None
            self.merges.append((left, right))
            rank_new.append(merged)
            key = left << self._shift | right
            if key not in self._pair_rank:  # a repeated merge never fires: the first one has the lower rank
                self._pair_rank[key] = index if merge_rank == "index" else merged
        # rank -> merged id; under "token_id" the rank IS the merged id
        self._rank_new = rank_new if merge_rank == "index" else range(max(self.vocab) + 1)

        self.special_tokens: dict[str, int] = {}
        for text, token_id in (special_tokens or {}).items():
            if not isinstance(text, str) or not text or not isinstance(token_id, int) or token_id < 0:
                raise ValueError(f"special tokens must be non-empty str -> non-negative int, got {text!r}: {token_id!r}")
            if token_id in self.vocab and self.vocab[token_id] != text.encode("utf-8"):
                raise ValueError(f"special token {text!r} has id {token_id}, which the vocabulary already uses for "
                                 f"{self.vocab[token_id]!r}")
            self.special_tokens[text] = token_id
        self.n_vocab = max(list(self.vocab) + list(self.special_tokens.values())) + 1
        self._decoder: dict[int, bytes] = dict(self.vocab)
        self._decoder.update((token_id, text.encode("utf-8")) for text, token_id in self.special_tokens.items())
        self._special_regexes: dict[frozenset, regex.Pattern] = {}
        self._cache = _ChunkCache()
        self._cache_lock = threading.Lock()  # the cache's pending placeholders belong to one call at a time
        self._arrays = None  # NumPy copies of the pair table, built on the first batch (see _bpe_batch)
        self.heap_steps = 0  # merge-heap pops so far (a work counter for the near-linear tests)

    def __getstate__(self) -> dict:
        """Pickling (e.g. to worker processes) leaves out the cache, its lock and the NumPy tables; they rebuild."""
        state = self.__dict__.copy()
        state.update(_cache=None, _cache_lock=None, _arrays=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache, self._cache_lock = _ChunkCache(), threading.Lock()

    def _merge_problem(self, merge) -> str:
        if not isinstance(merge, (list, tuple)) or len(merge) != 2:
            return "a merge must be a pair (left_id, right_id)"
        left, right = merge
        for side, token_id in (("left", left), ("right", right)):
            if token_id not in self.vocab:
                return f"{side} id {token_id!r} is not in the vocabulary"
        return (f"the merged bytes {self.vocab[left] + self.vocab[right]!r} are not a token of the vocabulary "
                "(every merge must produce a vocabulary entry)")

    def __repr__(self) -> str:
        pattern = self.pattern if isinstance(self.pattern, tuple) or len(str(self.pattern)) < 20 else "<regex>"
        return (f"BPETokenizer(n_vocab={self.n_vocab}, merges={len(self.merges)}, pattern={pattern!r}, "
                f"special_tokens={len(self.special_tokens)})")

    # ---------------------------------------------------------------- BPE inside one chunk
    def _bpe_reference(self, data: bytes) -> list[int]:
        """The plain rule, as an oracle: 1 single-byte ids; 2 rank every adjacent pair; 3 merge the lowest-ranked
        (leftmost on ties); 4 repeat. O(n^2) per chunk."""
        ids = [self._byte_ids[value] for value in data]
        while len(ids) >= 2:
            best_rank, best_at = NO_RANK, -1
            for at in range(len(ids) - 1):
                rank = self._pair_rank.get(ids[at] << self._shift | ids[at + 1], NO_RANK)
                if rank < best_rank:  # strict: the leftmost of equal ranks wins
                    best_rank, best_at = rank, at
            if best_at < 0:
                break
            ids[best_at:best_at + 2] = [self._rank_new[best_rank]]
        return ids

    def _bpe(self, data: bytes) -> list[int]:
        return self._bpe_heap(data) if len(data) > LONG_CHUNK_BYTES else self._bpe_short(data)

    def _bpe_short(self, data: bytes) -> list[int]:
        """Fast for short chunks: keep one rank per adjacent pair; after a merge only the two pairs touching the new
        token change. min() and index() scan in C, so a 10-byte word costs a few microseconds."""
        byte_ids, get, shift, rank_new = self._byte_ids, self._pair_rank.get, self._shift, self._rank_new
        ids = [byte_ids[value] for value in data]
        ranks = [get(left << shift | right, NO_RANK) for left, right in zip(ids, ids[1:])]
        while ranks:
            best = min(ranks)
            if best == NO_RANK:
                break
            at = ranks.index(best)  # leftmost of the lowest rank
            ids[at] = rank_new[best]
            del ids[at + 1]
            del ranks[at]
            if at:
                ranks[at - 1] = get(ids[at - 1] << shift | ids[at], NO_RANK)
            if at < len(ranks):
                ranks[at] = get(ids[at] << shift | ids[at + 1], NO_RANK)
        return ids

    def _bpe_heap(self, data: bytes) -> list[int]:
        """For long chunks: a heap of (rank, position) over a linked list of tokens, O(n log n). Entries go stale
        when a neighbour merges; a popped entry is used only if the pair at that position is still the one pushed."""
        byte_ids, get, shift, rank_new = self._byte_ids, self._pair_rank.get, self._shift, self._rank_new
        ids = [byte_ids[value] for value in data]
        n = len(ids)
        next_at = list(range(1, n + 1))  # n marks the end
        prev_at = list(range(-1, n - 1))  # -1 marks the start
        heap = []
        for at in range(n - 1):
            rank = get(ids[at] << shift | ids[at + 1], NO_RANK)
            if rank != NO_RANK:
                heap.append((rank, at, ids[at], ids[at + 1]))
        heapify(heap)
        steps = 0
        while heap:
            rank, at, left, right = heappop(heap)
            steps += 1
            after = next_at[at]
            if after >= n or ids[at] != left or ids[after] != right:
                continue  # stale: this position merged or its right neighbour changed since the push
            new = rank_new[rank]
            ids[at], ids[after] = new, -1  # -1: the right token is absorbed
            beyond = next_at[after]
            next_at[at] = beyond
            if beyond < n:
                prev_at[beyond] = at
                rank = get(new << shift | ids[beyond], NO_RANK)
                if rank != NO_RANK:
                    heappush(heap, (rank, at, new, ids[beyond]))
            before = prev_at[at]
            if before >= 0:
                rank = get(ids[before] << shift | new, NO_RANK)
                if rank != NO_RANK:
                    heappush(heap, (rank, before, ids[before], new))
        self.heap_steps += steps
        return [token_id for token_id in ids if token_id >= 0]

    def _pair_arrays(self):
        if self._arrays is None:
            keys = np.fromiter(self._pair_rank.keys(), dtype=np.int64, count=len(self._pair_rank))
            ranks = np.fromiter(self._pair_rank.values(), dtype=np.int64, count=len(self._pair_rank))
            order = np.argsort(keys)
            if not len(keys):  # no merges: one key that never matches keeps searchsorted in range
                keys, ranks, order = np.array([-1], np.int64), np.array([_NO_RANK_NP], np.int64), np.array([0])
            keys, ranks = keys[order], ranks[order]
            new_of = np.asarray(self._rank_new, dtype=np.int64) if self.merge_rank == "index" else None
            byte_ids = np.asarray(self._byte_ids, dtype=np.int64)
            # rank of every pair of single bytes, indexed by (byte1 << 8) | byte2: the first round needs no search
            byte_pairs = ((byte_ids[:, None] << self._shift) | byte_ids[None, :]).ravel()
            at = np.minimum(np.searchsorted(keys, byte_pairs), len(keys) - 1)
            byte_pair_ranks = np.where(keys[at] == byte_pairs, ranks[at], _NO_RANK_NP)
            self._arrays = (keys, ranks, new_of, byte_ids, byte_pair_ranks)
        return self._arrays

    def _bpe_batch(self, datas: list[bytes]) -> list[list[int]]:
        """Many short chunks (2..255 bytes each) at once: each round merges, in every chunk not yet finished, its
        lowest-ranked pair (leftmost on ties) -- the step of _bpe_short, done for all chunks with a few NumPy calls.
        Pair ranks are found by binary search in the sorted pair keys; after a merge only the two pairs touching
        the new token are looked up again. A chunk leaves the batch when none of its pairs has a rank."""
        sorted_keys, sorted_ranks, new_of, byte_ids, byte_pair_ranks = self._pair_arrays()
        shift, last = self._shift, len(sorted_keys) - 1

        def rank_of(left: np.ndarray, right: np.ndarray) -> np.ndarray:
            keys = (left << shift) | right
            order = np.argsort(keys)  # searching in sorted order touches memory in order: ~2x faster overall
            keys = keys[order]
            at = np.minimum(np.searchsorted(sorted_keys, keys), last)
            found = np.empty_like(keys)
            found[order] = np.where(sorted_keys[at] == keys, sorted_ranks[at], _NO_RANK_NP)
            return found

        results: list = [None] * len(datas)
        lengths = np.fromiter(map(len, datas), dtype=np.int64, count=len(datas))  # per chunk
        data = np.frombuffer(b"".join(datas), dtype=np.uint8).astype(np.int64)
        ids = byte_ids[data]  # all chunks' tokens, end to end
        starts = np.cumsum(lengths) - lengths
        ranks = np.empty_like(ids)  # ranks[i]: the pair (i, i + 1), or no rank at a chunk's last token
        ranks[:-1] = byte_pair_ranks[(data[:-1] << 8) | data[1:]]
        ranks[starts + lengths - 1] = _NO_RANK_NP
        chunk_of = np.arange(len(datas))
        while len(lengths):
            local = np.arange(len(ids)) - np.repeat(starts, lengths)  # position inside its chunk, < 256
            best = np.minimum.reduceat((ranks << 8) | local, starts)  # lowest rank, then leftmost, per chunk
            done = (best >> 8) >= _NO_RANK_NP
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
            ids[at] = new_of[best >> 8] if new_of is not None else best >> 8  # "token_id": the rank is the id
            keep = np.ones(len(ids), dtype=bool)
            keep[at + 1] = False  # the right token is absorbed
            ids, ranks = ids[keep], ranks[keep]
            shifted = np.arange(len(at))  # one token fewer in every chunk before this one
            at, starts, lengths = at - shifted, starts - shifted, lengths - 1
            ranks[at] = _NO_RANK_NP
            right = at[at + 1 < starts + lengths]
            ranks[right] = rank_of(ids[right], ids[right + 1])
            left = at[at > starts] - 1
            ranks[left] = rank_of(ids[left], ids[left + 1])
        return results

    def _encode_chunks(self, chunks: Iterable[str]) -> dict[str, list[int]]:
        """chunk -> ids for many chunks: whole-token lookup, then the heap for long chunks, NumPy rounds for many
        short ones, the list scan for a few."""
        chunks = list(chunks)
        datas = [chunk.encode("utf-8") for chunk in chunks]
        found = list(map(self._id_of_bytes.get, datas)) if self.ignore_merges else [None] * len(datas)
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
                encoded[chunk] = self._bpe(data)  # one byte, or long: the heap
        if len(short_datas) >= BATCH_MIN:
            encoded.update(zip(short_chunks, self._bpe_batch(short_datas)))
        else:
            encoded.update(zip(short_chunks, map(self._bpe_short, short_datas)))
        return encoded

    def encode_chunk_bytes(self, data: bytes) -> list[int]:
        """BPE on one pre-token given as bytes (any bytes, not only UTF-8): whole-token lookup, then merging."""
        if self.ignore_merges and data in self._id_of_bytes:
            return [self._id_of_bytes[data]]
        return self._bpe(bytes(data))

    # ---------------------------------------------------------------- text -> ids
    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`, treating special-token text as ordinary text. The hot loop is C: one regex findall, one
        cache lookup per chunk, one flatten. Chunks not in the cache yet are merged all together (_encode_chunks)."""
        try:
            return self._encode_text(text)
        except UnicodeEncodeError:
            # subtle: lone surrogates cannot be UTF-8 encoded; tiktoken replaces them with U+FFFD and goes on
            return self._encode_text(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def _encode_text(self, text: str) -> list[int]:
        # The chunks are pretokenize()'s, found faster: the cache never holds a chunk longer than max_run, so such
        # a chunk is always a miss; only then is the text cut Meta-style and split again. No length scan of
        # every chunk (as pretokenize does) on the way.
        ids = self._ids_of_chunks(apply_pattern([text], self._regex), cut_if_long=True)
        if ids is None:
            ids = self._ids_of_chunks(pretokenize(text, self._regex, self.max_run), cut_if_long=False)
        return ids

    @property
    def max_run(self) -> int:
        """Longest chunk (in characters) kept whole; longer ones make encode cut the text Meta-style."""
        return self._max_run

    @max_run.setter
    def max_run(self, value: int) -> None:
        self._max_run = int(value)
        if getattr(self, "_cache", None) is not None:
            self._cache.clear()  # cached chunks obey the old limit

    def _ids_of_chunks(self, chunks: list[str], cut_if_long: bool) -> list[int] | None:
        with self._cache_lock:
            return self._ids_of_chunks_locked(chunks, cut_if_long)

    def _ids_of_chunks_locked(self, chunks: list[str], cut_if_long: bool) -> list[int] | None:
        """The ids of the chunks, or None (with nothing left in the cache) if cut_if_long and a chunk is longer
        than max_run."""
        cache = self._cache
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        # A cold cache allocates one small list per new chunk (100k+ on a 10 MB text) and no reference cycles; the
        # cycle collector, triggered by those allocations, would walk them again and again (a third of the time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            parts = list(map(cache.__getitem__, chunks))
            if cache.pending:
                pending, cache.pending = cache.pending, {}
                try:
                    if max(map(len, pending)) > self._max_run:
                        for chunk in pending:  # long chunks stay out of the cache (see _encode_text)
                            if cut_if_long or len(chunk) > self._max_run:
                                del cache[chunk]
                        if cut_if_long:
                            return None
                    for chunk, ids in self._encode_chunks(pending).items():
                        pending[chunk].extend(ids)  # the placeholder that `parts` already holds
                except BaseException:  # e.g. a lone surrogate: leave no empty placeholder behind
                    for chunk in pending:
                        cache.pop(chunk, None)
                    raise
            return list(chain.from_iterable(parts))
        finally:
            if collecting:
                gc.enable()

    def _special_regex(self, tokens: frozenset) -> regex.Pattern:
        if tokens not in self._special_regexes:
            alternatives = sorted(tokens, key=lambda token: (-len(token), token))  # longest first
            self._special_regexes[tokens] = regex.compile("|".join(regex.escape(token) for token in alternatives))
        return self._special_regexes[tokens]

    def encode(self, text: str, allowed_special: Iterable[str] | str = frozenset(),
               disallowed_special: Iterable[str] | str = "all") -> list[int]:
        """Ids of `text` with tiktoken's special-token rules: special-token text listed in `allowed_special` (or
        all of them with "all") becomes the special id; text matching a disallowed one raises ValueError (by
        default every special not allowed is disallowed; pass disallowed_special=() to encode it as plain text)."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed:
            match = self._special_regex(frozenset(disallowed)).search(text)
            if match:
                token = match.group()
                raise ValueError(
                    f"Encountered text corresponding to disallowed special token {token!r}.\n"
                    f"If you want this text to be encoded as a special token, pass it to `allowed_special`, e.g. "
                    f"`allowed_special={{{token!r}, ...}}`.\n"
                    f"If you want this text to be encoded as normal text, disable the check for this token by "
                    f"passing `disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\n"
                    f"To disable this check for all special tokens, pass `disallowed_special=()`.\n")
        allowed &= set(self.special_tokens)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for match in self._special_regex(frozenset(allowed)).finditer(text):
            ids.extend(self.encode_ordinary(text[start:match.start()]))
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def encode_batch(self, texts: Iterable[str], allowed_special: Iterable[str] | str = frozenset(),
                     disallowed_special: Iterable[str] | str = "all") -> list[list[int]]:
        return [self.encode(text, allowed_special, disallowed_special) for text in texts]

    # ---------------------------------------------------------------- ids -> text
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join(map(self._decoder.__getitem__, ids))
        except (KeyError, TypeError) as error:
            bad = error.args[0] if isinstance(error, KeyError) else error
            raise ValueError(f"token id {bad!r} is not in the vocabulary (ids are 0..{self.n_vocab - 1})") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of `ids`. Bytes that are not valid UTF-8 (a character cut between tokens) become U+FFFD under the
        default errors="replace"; errors="strict" raises instead."""
        return self.decode_bytes(ids).decode("utf-8", errors)

    def stream_decoder(self, errors: str = "replace") -> StreamDecoder:
        return StreamDecoder(self, errors)

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._decoder[token_id]
        except (KeyError, TypeError):
            raise ValueError(f"token id {token_id!r} is not in the vocabulary (ids are 0..{self.n_vocab - 1})") from None

    def id_of(self, token: bytes | str) -> int:
        """The id of one token, given as its bytes or text (special tokens by their text)."""
        if isinstance(token, str):
            if token in self.special_tokens:
                return self.special_tokens[token]
            token = token.encode("utf-8")
        try:
            return self._id_of_bytes[bytes(token)]
        except (KeyError, TypeError):
            raise ValueError(f"{token!r} is not a token of this vocabulary") from None

    def split_view(self, text: str, allowed_special: Iterable[str] | str = "all") -> list[tuple[int, str]]:
        """(id, text of the token) for each token of `text`; a token that is part of a UTF-8 character shows as
        U+FFFD."""
        return [(token_id, self._decoder[token_id].decode("utf-8", "replace"))
                for token_id in self.encode(text, allowed_special=allowed_special)]

    # ---------------------------------------------------------------- construction
    @classmethod
    def train(cls, text_or_texts: str | Iterable[str], vocab_size: int, pattern: str | tuple[str, ...] = "gpt4",
              special_tokens: Iterable[str] = (), progress: bool = False) -> "BPETokenizer":
        """Learn vocab_size - 256 - len(special_tokens) merges from text (see train.py), then the special tokens
        get the ids after the merges."""
        from scratch.tokenizer.train import count_chunks
        from scratch.tokenizer.train_fast import train_merges

        special_tokens = tuple(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size must be at least 256 (bytes) + {len(special_tokens)} (special tokens), "
                             f"got {vocab_size!r}")
        texts = [text_or_texts] if isinstance(text_or_texts, str) else text_or_texts
        counts = count_chunks(texts, pattern, special_tokens=special_tokens)
        merges = train_merges(counts, vocab_size - 256 - len(special_tokens), progress=progress)
        vocab = {value: bytes([value]) for value in range(256)}
        for index, (left, right) in enumerate(merges):
            vocab[256 + index] = vocab[left] + vocab[right]
        specials = {token: 256 + len(merges) + k for k, token in enumerate(special_tokens)}
        return cls(vocab, merges, pattern, specials)

    @classmethod
    def from_tiktoken(cls, path: str | Path, pattern: str | tuple[str, ...] = "gpt4",
                      special_tokens: dict[str, int] | None = None) -> "BPETokenizer":
        """A tiktoken rank file (base64 token, space, rank per line): token id = rank, and the merges are every
        split of every token, ranked by the token they make (see tiktoken_format.derive_merges)."""
        from scratch.tokenizer.tiktoken_format import derive_merges, read_ranks

        ranks = read_ranks(path)
        vocab = {rank: token for token, rank in ranks.items()}
        try:
            return cls(vocab, derive_merges(ranks), pattern, special_tokens, ignore_merges=True,
                       merge_rank="token_id")
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> None:
        """Write our JSON format atomically (a temporary file in the same folder, then os.replace)."""
        path = Path(path)
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": list(self.pattern) if isinstance(self.pattern, tuple) else self.pattern,
            "ignore_merges": self.ignore_merges,
            "merge_rank": self.merge_rank,
            "special_tokens": self.special_tokens,
            "vocab": {str(token_id): base64.b64encode(token).decode("ascii") for token_id, token in self.vocab.items()},
            "merges": [list(merge) for merge in self.merges],
        }
        with atomic_write(path) as handle:
            json.dump(payload, handle, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a file written by `save`. A truncated or corrupt file, another format or another version raises
        ValueError naming the file and the problem."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable {FORMAT_NAME} tokenizer file (truncated or corrupt JSON: "
                             f"{error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: not a {FORMAT_NAME} tokenizer file (format is {found!r})")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: {FORMAT_NAME} version {data.get('version')!r} is not supported (this code "
                             f"reads version {FORMAT_VERSION})")
        try:
            vocab = {int(key): base64.b64decode(value, validate=True) for key, value in data["vocab"].items()}
            merges = [(int(left), int(right)) for left, right in data["merges"]]
            pattern = data["pattern"]
            pattern = tuple(pattern) if isinstance(pattern, list) else pattern
            specials = {str(text): int(token_id) for text, token_id in data["special_tokens"].items()}
            return cls(vocab, merges, pattern, specials, ignore_merges=bool(data["ignore_merges"]),
                       merge_rank=data.get("merge_rank", "index"))
        except KeyError as error:
            raise ValueError(f"{path}: corrupt {FORMAT_NAME} file: missing field {error.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError, binascii.Error) as error:
            raise ValueError(f"{path}: corrupt {FORMAT_NAME} file: {error}") from None
