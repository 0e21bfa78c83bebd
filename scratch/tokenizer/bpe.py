"""Byte-level BPE (Sennrich et al. 2016, run on UTF-8 bytes as in GPT-2): text -> token ids -> text.

Encoding is two steps: cut the text into pre-token chunks (`pretokenize`, pretokenize.py), then inside each chunk
`merge_chunk`: 1 start from the chunk's bytes as single-byte ids, 2 rank every adjacent pair, 3 merge the pair
with the lowest rank (leftmost on ties), 4 repeat until no adjacent pair has a rank. Training learns the ranks with
the same four steps, counting pairs instead of looking them up (train.py). One loop serves every vocabulary:
tiktoken rank files become a pair table (tiktoken_format.py), Hugging Face and SentencePiece files are read by
hf.py and sentencepiece.py. The ids match tiktoken's exactly (tests/tokenizer/test_tiktoken_exact.py).
A tokenizer encodes through `bpe_fast.FastEncoder` (chunk cache, NumPy batches, heap), property-tested to give the
ids of these plain functions; `tokenizer.fast = None` runs the plain ones. Not here: normalizers, byte fallback.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import regex

from scratch.atomic import atomic_write
from scratch.safe_read import read_bytes
from scratch.tokenizer.bpe_fast import FastEncoder
from scratch.tokenizer.chat_template import ChatTemplateMixin
from scratch.tokenizer.pretokenize import MAX_RUN_CHARS, pretokenize, resolve_pattern
from scratch.tokenizer.tiktoken_format import derive_merges, read_ranks
from scratch.tokenizer.train import count_chunks
from scratch.tokenizer.train_fast import train_merges

Pair = tuple[int, int]
NO_RANK = sys.maxsize  # "this pair never merges": larger than every rank, so min() never picks it over a real one


def merge_chunk(data: bytes, byte_ids: Sequence[int], pair_ranks: Mapping[Pair, int],
                merged_ids: Sequence[int]) -> list[int]:
    """BPE inside one chunk. pair_ranks: (left_id, right_id) -> rank, lower merges first; merged_ids[rank]: the id
    of the token that merge makes. O(n^2) in the chunk's length."""
    ids = [byte_ids[byte] for byte in data]  # 1 one id per byte (cl100k's byte ids are not the byte values)
    while len(ids) >= 2:
        ranks = [pair_ranks.get(pair, NO_RANK) for pair in zip(ids, ids[1:])]  # 2 rank every adjacent pair
        best = min(ranks)
        if best == NO_RANK:
            break  # 4 repeat until no pair merges
        at = ranks.index(best)  # 3 merge the lowest rank; index() finds the leftmost of equal ranks
        ids[at:at + 2] = [merged_ids[best]]
    return ids


FORMAT_NAME, FORMAT_VERSION = "scratch-bpe", 1
MERGE_RANKS = ("index", "token_id")


class BPETokenizer(ChatTemplateMixin):  # + apply_chat_template (chat_template.py)
    """A byte-level BPE vocabulary with its merge ranks, pre-tokenizer pattern and special tokens.

    vocab: id -> token bytes; every single byte needs an id (not necessarily its value: cl100k's are not).
    merges: (left_id, right_id) in priority order; the merged token is the id whose bytes are the concatenation.
    merge_rank="index" ranks merge i as i (trained and Hugging Face vocabularies); "token_id" ranks a merge by the
    id of the token it makes, so different splits of one token tie and the leftmost wins (tiktoken rank files).
    ignore_merges: a chunk that is itself a token becomes that token before any merging (tiktoken, Llama 3).

    The tables encoding reads, built here (read-only): `byte_ids[byte]` -> id, `pair_ranks[(left, right)]` ->
    rank, `merged_ids[rank]` -> id of the merged token, `id_of_bytes[token bytes]` -> id (the lowest id where a
    vocabulary lists the same bytes twice). `max_run`: the longest chunk (in characters) kept whole; longer ones
    make encode cut the text Meta-style (pretokenize.py). `fast`: the FastEncoder that encode uses, or None to
    run the plain loop (same ids, several times slower).
    """

    def __init__(self, vocab: dict[int, bytes], merges: list[Pair], pattern: str | tuple[str, ...] = "gpt4",
                 special_tokens: dict[str, int] | None = None, *, ignore_merges: bool = True,
                 merge_rank: str = "index"):
        if merge_rank not in MERGE_RANKS:
            raise ValueError(f"merge_rank must be one of {MERGE_RANKS}, got {merge_rank!r}")
        self.vocab = _checked_vocab(vocab)
        self.pattern = tuple(pattern) if isinstance(pattern, list) else pattern
        resolve_pattern(self.pattern)  # a bad regex fails here, named
        self.ignore_merges = bool(ignore_merges)
        self.merge_rank = merge_rank
        self.max_run = MAX_RUN_CHARS
        self.id_of_bytes: dict[bytes, int] = {}
        for token_id in sorted(self.vocab):
            self.id_of_bytes.setdefault(self.vocab[token_id], token_id)
        self.byte_ids = _single_byte_ids(self.id_of_bytes)
        self.merges, self.pair_ranks, self.merged_ids = self._pair_table(merges)
        self.special_tokens = self._checked_special_tokens(special_tokens or {})
        self.n_vocab = max(list(self.vocab) + list(self.special_tokens.values())) + 1
        self._decoder: dict[int, bytes] = dict(self.vocab)  # id -> bytes, special tokens included
        self._decoder.update((token_id, text.encode("utf-8")) for text, token_id in self.special_tokens.items())
        self._special_regexes: dict[frozenset, regex.Pattern] = {}
        self.fast: FastEncoder | None = FastEncoder(self)

    # ---------------------------------------------------------------- text -> ids
    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text`, treating special-token text as ordinary text: pre-tokenize, then BPE inside each chunk."""
        try:
            return self._encode_ordinary(text)
        except UnicodeEncodeError:
            # subtle: lone surrogates cannot be UTF-8 encoded; tiktoken replaces them with U+FFFD and goes on
            return self._encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def _encode_ordinary(self, text: str) -> list[int]:
        if self.fast is not None:
            return self.fast.encode_ordinary(text, self.max_run)
        ids: list[int] = []
        for chunk in pretokenize(text, self.pattern, self.max_run):
            ids.extend(self.encode_chunk_bytes(chunk.encode("utf-8")))
        return ids

    def encode_chunk_bytes(self, data: bytes) -> list[int]:
        """BPE on one pre-token given as bytes (any bytes, not only UTF-8): whole-token lookup, then merging."""
        if self.ignore_merges and data in self.id_of_bytes:
            return [self.id_of_bytes[data]]
        if self.fast is not None:
            return self.fast.merge_heap(bytes(data))  # O(n log n): a 25,000-byte chunk is not quadratic
        return merge_chunk(bytes(data), self.byte_ids, self.pair_ranks, self.merged_ids)

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

    def _special_regex(self, tokens: frozenset) -> regex.Pattern:
        if tokens not in self._special_regexes:
            alternatives = sorted(tokens, key=lambda token: (-len(token), token))  # longest first
            self._special_regexes[tokens] = regex.compile("|".join(regex.escape(token) for token in alternatives))
        return self._special_regexes[tokens]

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
            return self.id_of_bytes[bytes(token)]
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
        ranks = read_ranks(path)
        vocab = {rank: token for token, rank in ranks.items()}
        try:
            return cls(vocab, derive_merges(ranks, str(path)), pattern, special_tokens, ignore_merges=True,
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
            data = json.loads(read_bytes(path, "tokenizer").decode("utf-8"))   # regular file, size capped
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
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

    def drop_tokens(self, token_ids: Iterable[int]) -> None:
        """Take tokens out of `vocab`, `id_of_bytes` and decoding; `byte_ids` and the pair table keep them. For a
        subclass whose vocabulary lacks some single bytes: HFTokenizer gives them placeholder ids (this class needs
        an id for every byte), drops those ids here, and removes the bytes from the text before merging."""
        for token_id in token_ids:
            del self.id_of_bytes[self.vocab.pop(token_id)]
            del self._decoder[token_id]
        self.n_vocab = max([*self.vocab, *self.special_tokens.values()], default=-1) + 1

    # ---------------------------------------------------------------- checks and tables (used by __init__)
    def _pair_table(self, merges: Iterable[Pair]) -> tuple[list[Pair], dict[Pair, int], Sequence[int]]:
        """(the merges as pairs, pair -> rank, rank -> merged id); a merge that makes no vocabulary token raises
        ValueError naming it."""
        pairs: list[Pair] = []
        pair_ranks: dict[Pair, int] = {}
        merged_ids: list[int] = []
        vocab, id_of_bytes, by_index = self.vocab, self.id_of_bytes, self.merge_rank == "index"
        for index, merge in enumerate(merges):
            try:
                left, right = merge
                merged = id_of_bytes[vocab[left] + vocab[right]]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"merge {index} {tuple(merge) if isinstance(merge, (list, tuple)) else merge!r}: "
                                 + self._merge_problem(merge)) from None
            pair = (left, right)
            pairs.append(pair)
            merged_ids.append(merged)
            if pair not in pair_ranks:  # a repeated merge never fires: the first one has the lower rank
                pair_ranks[pair] = index if by_index else merged
        # under "token_id" the rank IS the merged id
        return pairs, pair_ranks, merged_ids if by_index else range(max(vocab) + 1)

    def _merge_problem(self, merge) -> str:
        if not isinstance(merge, (list, tuple)) or len(merge) != 2:
            return "a merge must be a pair (left_id, right_id)"
        left, right = merge
        for side, token_id in (("left", left), ("right", right)):
            if token_id not in self.vocab:
                return f"{side} id {token_id!r} is not in the vocabulary"
        return (f"the merged bytes {self.vocab[left] + self.vocab[right]!r} are not a token of the vocabulary "
                "(every merge must produce a vocabulary entry)")

    def _checked_special_tokens(self, special_tokens: dict[str, int]) -> dict[str, int]:
        for text, token_id in special_tokens.items():
            if not isinstance(text, str) or not text or not isinstance(token_id, int) or token_id < 0:
                raise ValueError(f"special tokens must be non-empty str -> non-negative int, got {text!r}: {token_id!r}")
            if token_id in self.vocab and self.vocab[token_id] != text.encode("utf-8"):
                raise ValueError(f"special token {text!r} has id {token_id}, which the vocabulary already uses for "
                                 f"{self.vocab[token_id]!r}")
        return dict(special_tokens)

    def __repr__(self) -> str:
        pattern = self.pattern if isinstance(self.pattern, tuple) or len(str(self.pattern)) < 20 else "<regex>"
        return (f"BPETokenizer(n_vocab={self.n_vocab}, merges={len(self.merges)}, pattern={pattern!r}, "
                f"special_tokens={len(self.special_tokens)})")


class StreamDecoder:
    """Decode ids one at a time, for printing tokens as a model generates them.

    A token may end inside a multi-byte UTF-8 character (an emoji is often 2-4 byte tokens), so `push` holds back
    an incomplete sequence until the bytes that complete it arrive; `flush` ends the stream (an unfinished sequence
    becomes U+FFFD under errors="replace"). The pieces joined equal `decode(ids)` for every split of the ids --
    Python's incremental UTF-8 decoder makes the same replacement choices as bytes.decode.
    """

    def __init__(self, tokenizer: BPETokenizer, errors: str = "replace"):
        self._token_bytes = tokenizer.token_bytes
        self._errors = errors
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


def _checked_vocab(vocab: dict[int, bytes]) -> dict[int, bytes]:
    checked: dict[int, bytes] = {}
    for token_id, token in vocab.items():
        if not isinstance(token_id, int) or token_id < 0 or not isinstance(token, (bytes, bytearray)):
            raise ValueError(f"vocab entries must be non-negative int -> bytes, got {token_id!r}: {token!r}")
        checked[token_id] = bytes(token)
    return checked


def _single_byte_ids(id_of_bytes: dict[bytes, int]) -> list[int]:
    """byte value -> its token id, for all 256 (ValueError naming the bytes that have no token)."""
    missing = [value for value in range(256) if bytes([value]) not in id_of_bytes]
    if missing:
        shown = ", ".join(f"0x{value:02x}" for value in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"vocabulary has no token for {len(missing)} single byte(s) ({shown}); byte-level BPE "
                         "needs all 256 so that any text can be encoded")
    return [id_of_bytes[bytes([value])] for value in range(256)]
