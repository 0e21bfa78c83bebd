"""SentencePiece BPE (as in Llama 2): read a `.model` protobuf, encode by piece score, decode with byte fallback.

This is SentencePiece's *BPE* model only (trainer_spec.model_type == BPE), not its Unigram model, and not its
trainer. It follows Google's sentencepiece library: text is normalized (a dummy "▁" prefix, spaces escaped as "▁"),
then split into characters and merged bottom-up: at each step the adjacent pair whose concatenation is a piece with
the highest score merges (the leftmost pair on ties). Unlike GPT-2's byte-level BPE there is no pre-tokenizer and no
merge list: the scores *are* the merge priorities. A character that ends up outside the vocabulary falls back to its
UTF-8 bytes as `<0xNN>` pieces ("byte fallback"). The `.model` file is parsed here with a minimal protobuf
wire-format reader (field numbers from sentencepiece_model.proto), so the `sentencepiece` package is not needed.
"""
from __future__ import annotations

import codecs
import heapq
import numbers
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

import regex

from scratch.safe_read import read_bytes
from scratch.tokenizer.chat_template import ChatTemplateMixin

SPACE = "\u2581"  # "▁" LOWER ONE EIGHTH BLOCK: SentencePiece's visible stand-in for " "

# ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TYPE_NAMES = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user-defined",
              UNUSED: "unused", BYTE: "byte"}
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}  # TrainerSpec.ModelType
_WORD = regex.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")  # a word: a run of "▁" then text without "▁"
_WORD_PIECE = regex.compile(f"{SPACE}*[^{SPACE}]*")


# sentencepiece turns every byte of an invalid UTF-8 sequence into its own U+FFFD; Python's "replace" handler
# gives one U+FFFD per *maximal* invalid subsequence, and Python reports exactly those ranges, so one U+FFFD
# per byte of the reported range reproduces sentencepiece.
def _replace_each_byte(error: UnicodeDecodeError) -> tuple[str, int]:
    return "\ufffd" * (error.end - error.start), error.end


codecs.register_error("scratch_spm_replace", _replace_each_byte)


# ---------------------------------------------------------------------------------------------------------------
# Protobuf wire format: a message is a sequence of (key, value); key = field_number << 3 | wire_type.
# wire types: 0 varint, 1 fixed 64-bit, 2 length-delimited (strings, bytes, sub-messages), 5 fixed 32-bit.
# ---------------------------------------------------------------------------------------------------------------

def _read_varint(buf: bytes, pos: int, source: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError(f"{source}: truncated protobuf (varint runs past the end at byte {pos})")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"{source}: malformed protobuf (varint longer than 10 bytes at byte {pos})")


def iter_fields(buf: bytes, source: str = "<protobuf>") -> Iterator[tuple[int, int, int | bytes]]:
    """(field_number, wire_type, value) for each field of one message; value is an int (varint, fixed32/64 as
    raw unsigned) or bytes (length-delimited). A truncated or malformed message raises ValueError naming `source`."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos, source)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError(f"{source}: malformed protobuf (field number 0 at byte {pos})")
        if wire == 0:
            value, pos = _read_varint(buf, pos, source)
        elif wire == 2:
            length, pos = _read_varint(buf, pos, source)
            if pos + length > end:
                raise ValueError(f"{source}: truncated protobuf (field {number} needs {length} bytes, "
                                 f"{end - pos} left)")
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise ValueError(f"{source}: truncated protobuf (fixed{size * 8} field {number} at byte {pos})")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        else:  # 3/4 are the deprecated groups, 6/7 do not exist
            raise ValueError(f"{source}: malformed protobuf (unsupported wire type {wire} for field {number})")
        yield number, wire, value


def _as_float32(raw: int) -> float:
    return struct.unpack("<f", raw.to_bytes(4, "little"))[0]


def _as_int32(raw: int) -> int:
    raw &= 0xFFFFFFFFFFFFFFFF  # negative int32s are written as 10-byte two's-complement varints
    return raw - (1 << 64) if raw >= 1 << 63 else raw


@dataclass(frozen=True)
class NormalizerSpec:
    """The parts of sentencepiece's NormalizerSpec (ModelProto field 3) that change encoding. Defaults are the
    proto2 defaults; Llama 2 keeps add_dummy_prefix and escape_whitespaces but sets remove_extra_whitespaces=False."""
    name: str = ""
    add_dummy_prefix: bool = True  # field 3: "world" alone and in "hello world" both become "▁world"
    remove_extra_whitespaces: bool = True  # field 4: strip leading/trailing spaces, collapse runs of spaces
    escape_whitespaces: bool = True  # field 5: " " -> "▁"
    has_charsmap: bool = False  # field 2: a compiled normalization table (e.g. NFKC); not supported here


@dataclass(frozen=True)
class TrainerSpec:
    """The parts of TrainerSpec (ModelProto field 2) that change encoding or name the special ids."""
    model_type: int = 1  # field 3: 1 UNIGRAM (the proto default), 2 BPE, 3 WORD, 4 CHAR
    byte_fallback: bool = False  # field 35
    treat_whitespace_as_suffix: bool = False  # field 24
    unk_id: int = 0  # field 40
    bos_id: int = 1  # field 41
    eos_id: int = 2  # field 42
    pad_id: int = -1  # field 43
    unk_surface: str = " \u2047 "  # field 44: how decode() shows <unk> (" ⁇ ")


def _parse_bool(wire: int, value, field: str, source: str) -> bool:
    if wire != 0:
        raise ValueError(f"{source}: malformed protobuf ({field} has wire type {wire}, expected a varint)")
    return bool(value)


def parse_model_proto(data: bytes, source: str = "<model>") -> tuple[list[tuple[str, float, int]], TrainerSpec,
                                                                       NormalizerSpec]:
    """Decode a sentencepiece ModelProto: (pieces as (piece, score, type), trainer spec, normalizer spec)."""
    pieces: list[tuple[str, float, int]] = []
    trainer: dict = {}
    normalizer: dict = {}
    for number, wire, value in iter_fields(data, source):
        if wire != 2 and number in (1, 2, 3):
            raise ValueError(f"{source}: malformed protobuf (ModelProto field {number} is not length-delimited)")
        if number == 1:  # repeated SentencePiece {1: piece, 2: score (float), 3: type (enum)}
            piece, score, kind = None, 0.0, NORMAL
            for field, field_wire, payload in iter_fields(value, source):
                if field == 1 and field_wire == 2:
                    piece = payload.decode("utf-8")
                elif field == 2 and field_wire == 5:
                    score = _as_float32(payload)
                elif field == 3 and field_wire == 0:
                    kind = payload
            if not piece:
                raise ValueError(f"{source}: piece {len(pieces)} has no text")
            if kind not in TYPE_NAMES:
                raise ValueError(f"{source}: piece {len(pieces)} {piece!r} has unknown type {kind}")
            pieces.append((piece, score, kind))
        elif number == 2:
            for field, field_wire, payload in iter_fields(value, source):
                if field == 3:
                    trainer["model_type"] = payload
                elif field == 35:
                    trainer["byte_fallback"] = _parse_bool(field_wire, payload, "byte_fallback", source)
                elif field == 24:
                    trainer["treat_whitespace_as_suffix"] = _parse_bool(field_wire, payload,
                                                                        "treat_whitespace_as_suffix", source)
                elif field in (40, 41, 42, 43):
                    trainer[{40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}[field]] = _as_int32(payload)
                elif field == 44 and field_wire == 2:
                    trainer["unk_surface"] = payload.decode("utf-8")
        elif number == 3:
            for field, field_wire, payload in iter_fields(value, source):
                if field == 1 and field_wire == 2:
                    normalizer["name"] = payload.decode("utf-8")
                elif field == 2 and field_wire == 2:
                    normalizer["has_charsmap"] = len(payload) > 0
                elif field in (3, 4, 5):
                    key = {3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}[field]
                    normalizer[key] = _parse_bool(field_wire, payload, key, source)
    if not pieces:
        raise ValueError(f"{source}: no pieces (not a sentencepiece model?)")
    return pieces, TrainerSpec(**trainer), NormalizerSpec(**normalizer)


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------------

class SentencePieceBPE(ChatTemplateMixin):  # + apply_chat_template (chat_template.py)
    """SentencePiece BPE encoder/decoder over a table of (piece, score, type), ids = positions in the table."""

    def __init__(self, pieces: Iterable[tuple[str, float, int]], *, normalizer: NormalizerSpec | None = None,
                 trainer: TrainerSpec | None = None, source: str = "<pieces>"):
        self.pieces: list[tuple[str, float, int]] = [(str(piece), float(score), int(kind))
                                                      for piece, score, kind in pieces]
        if trainer is None:
            trainer = TrainerSpec(model_type=2, byte_fallback=any(kind == BYTE for _, _, kind in self.pieces))
        self.normalizer = normalizer if normalizer is not None else NormalizerSpec(remove_extra_whitespaces=False)
        self.trainer = trainer
        if trainer.model_type != 2:
            kind = MODEL_TYPES.get(trainer.model_type, trainer.model_type)
            raise ValueError(f"{source}: sentencepiece model type is {kind}, only BPE is supported")
        if self.normalizer.has_charsmap:
            raise ValueError(f"{source}: normalization rule {self.normalizer.name!r} (a precompiled charsmap) is not "
                             f"supported; only the identity normalizer (as in Llama 2)")
        if trainer.treat_whitespace_as_suffix:
            raise ValueError(f"{source}: treat_whitespace_as_suffix=true is not supported")
        # Two lookups, as in sentencepiece: normal/user-defined/unused pieces take part in merging; control,
        # unknown and byte pieces are reachable only by id (so "<s>" typed in text is never the <s> token).
        self._mergeable: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        for piece_id, (piece, _, kind) in enumerate(self.pieces):
            if kind not in TYPE_NAMES:
                raise ValueError(f"{source}: piece {piece_id} {piece!r} has unknown type {kind}")
            table = self._mergeable if kind in (NORMAL, USER_DEFINED, UNUSED) else self._reserved
            if piece in table:
                raise ValueError(f"{source}: piece {piece!r} appears twice (ids {table[piece]} and {piece_id})")
            table[piece] = piece_id
        self.scores = [score for _, score, _ in self.pieces]
        self.types = [kind for _, _, kind in self.pieces]
        size = len(self.pieces)
        for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
            value = getattr(trainer, name)
            if not -1 <= value < size:
                raise ValueError(f"{source}: {name}={value} is outside the vocabulary of {size} pieces")
        if not 0 <= trainer.unk_id < size:
            raise ValueError(f"{source}: unk_id must name a piece, got {trainer.unk_id}")
        self._byte_ids: list[int] | None = None
        if trainer.byte_fallback:
            missing = [f"<0x{byte:02X}>" for byte in range(256) if self._reserved.get(f"<0x{byte:02X}>") is None]
            if missing:
                raise ValueError(f"{source}: byte_fallback is on but byte pieces are missing: {missing[:4]}...")
            self._byte_ids = [self._reserved[f"<0x{byte:02X}>"] for byte in range(256)]
        self._byte_of = {token_id: byte for byte, token_id in enumerate(self._byte_ids or [])}
        # User-defined pieces are matched whole (longest first) before merging, and never merged further.
        user = sorted((piece for piece, _, kind in self.pieces if kind == USER_DEFINED), key=len, reverse=True)
        self._user_defined = regex.compile("|".join(regex.escape(piece) for piece in user)) if user else None
        # Words can be encoded one at a time (and cached) if no piece has a "▁" after another character and "▁"
        # is itself known (so unknown characters never touch across a cut). See _encode_by_words.
        self._word_split = SPACE in self._mergeable and all(
            _WORD_PIECE.fullmatch(piece) for piece, _, kind in self.pieces if kind in (NORMAL, USER_DEFINED, UNUSED))
        self._word_cache: dict[str, tuple[int, ...]] = {}

    # -- constructors ------------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SentencePieceBPE":
        """Load a sentencepiece `.model` file (a serialized ModelProto)."""
        data = read_bytes(path, "sentencepiece")      # a regular file of sane size (not /dev/zero, not a FIFO)
        try:
            pieces, trainer, normalizer = parse_model_proto(data, source=str(path))
        except ValueError as error:
            if data[:1] in (b"{", b"[") or data[:64].isascii() and b"\n" in data[:200]:
                raise ValueError(f"{error}; this looks like a text file, not a sentencepiece .model protobuf (a "
                                 "tiktoken rank file or a JSON vocabulary?)") from None
            raise
        return cls(pieces, normalizer=normalizer, trainer=trainer, source=str(path))

    @classmethod
    def from_pieces(cls, pieces: Iterable, *, add_dummy_prefix: bool = True, remove_extra_whitespaces: bool = False,
                    byte_fallback: bool | None = None, unk_id: int | None = None, bos_id: int | None = None,
                    eos_id: int | None = None) -> "SentencePieceBPE":
        """From a piece table: (piece, score, type) triples with a float score, or the [piece, type, score] rows
        of a tokens.json (an int second slot). Defaults are Llama 2's settings; byte_fallback defaults to
        "the table has byte pieces"; unk/bos/eos default to the pieces "<unk>", "<s>", "</s>" (-1 if absent)."""
        table = []
        for piece_id, row in enumerate(pieces):
            if len(row) != 3:
                raise ValueError(f"piece {piece_id}: expected (piece, score, type), got {row!r}")
            piece, score, kind = row
            if isinstance(score, int) and not isinstance(score, bool):
                score, kind = (0.0 if kind is None else kind), score  # tokens.json order: [piece, type, score]
            table.append((piece, float(score), int(kind)))
        index = {piece: piece_id for piece_id, (piece, _, _) in enumerate(table)}
        if unk_id is None:
            unk_id = index.get("<unk>", next((piece_id for piece_id, (_, _, kind) in enumerate(table)
                                              if kind == UNKNOWN), 0))
        trainer = TrainerSpec(
            model_type=2,
            byte_fallback=any(kind == BYTE for _, _, kind in table) if byte_fallback is None else byte_fallback,
            unk_id=unk_id,
            bos_id=index.get("<s>", -1) if bos_id is None else bos_id,
            eos_id=index.get("</s>", -1) if eos_id is None else eos_id)
        normalizer = NormalizerSpec(name="identity", add_dummy_prefix=add_dummy_prefix,
                                    remove_extra_whitespaces=remove_extra_whitespaces)
        return cls(table, normalizer=normalizer, trainer=trainer)

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return len(self.pieces)

    @property
    def unk_id(self) -> int:
        return self.trainer.unk_id

    @property
    def bos_id(self) -> int:
        return self.trainer.bos_id

    @property
    def eos_id(self) -> int:
        return self.trainer.eos_id

    @property
    def pad_id(self) -> int:
        return self.trainer.pad_id

    def id_to_piece(self, token_id: int) -> str:
        token_id = self._check_id(token_id)
        return self.pieces[token_id][0]

    def piece_to_id(self, piece: str) -> int:
        """The id of `piece`, or unk_id if there is none (as sentencepiece)."""
        found = self._mergeable.get(piece)
        if found is None:
            found = self._reserved.get(piece, self.unk_id)
        return found

    def _check_id(self, token_id) -> int:
        """`token_id` as a Python int (NumPy integers welcome: generate returns them), checked to be a piece."""
        if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
            raise ValueError(f"token ids must be integers, got {token_id!r}")
        if not 0 <= token_id < len(self.pieces):
            raise ValueError(f"token id {int(token_id)} is outside the vocabulary (0..{len(self.pieces) - 1})")
        return int(token_id)

    # -- encoding ----------------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """Llama 2: "Hello world" -> "▁Hello▁world" (dummy prefix, spaces escaped); "" stays ""."""
        spec = self.normalizer
        if spec.remove_extra_whitespaces:
            text = regex.sub(" {2,}", " ", text.lstrip(" "))  # leading spaces go, runs of spaces become one
        if not text:
            return ""  # sentencepiece adds no dummy prefix to empty (or all-space, when stripping) text
        if spec.add_dummy_prefix:
            text = " " + text
        space = SPACE if spec.escape_whitespaces else " "
        text = text.replace(" ", space) if spec.escape_whitespaces else text
        if spec.remove_extra_whitespaces:
            # subtle: trailing spaces are stripped AFTER escaping, so a literal "▁" at the end goes too
            text = text.rstrip(space)
        return text

    def _initial_symbols(self, normalized: str) -> tuple[list[str], list[bool]]:
        """Characters, except that a user-defined piece is one frozen symbol (longest match wins)."""
        if self._user_defined is None:
            return list(normalized), [False] * len(normalized)
        symbols, frozen, pos = [], [], 0
        for match in self._user_defined.finditer(normalized):
            symbols.extend(normalized[pos:match.start()])
            frozen.extend([False] * (match.start() - pos))
            symbols.append(match.group())
            frozen.append(True)
            pos = match.end()
        symbols.extend(normalized[pos:])
        frozen.extend([False] * (len(normalized) - pos))
        return symbols, frozen

    def merge_reference(self, symbols: list[str], frozen: list[bool]) -> tuple[list[str], dict]:
        """The plain BPE loop (the oracle): scan every adjacent pair, merge the one whose concatenation is a piece
        with the highest score (leftmost on ties), repeat until no pair is a piece. O(n^2) per text."""
        symbols, frozen = list(symbols), list(frozen)
        unused_splits: dict[str, tuple[str, str]] = {}
        while True:
            best, best_score = -1, 0.0
            for at in range(len(symbols) - 1):
                if frozen[at] or frozen[at + 1]:
                    continue
                piece_id = self._mergeable.get(symbols[at] + symbols[at + 1])
                if piece_id is not None and (best < 0 or self.scores[piece_id] > best_score):
                    best, best_score = at, self.scores[piece_id]
            if best < 0:
                return symbols, unused_splits
            merged = symbols[best] + symbols[best + 1]
            if self.types[self._mergeable[merged]] == UNUSED:
                unused_splits[merged] = (symbols[best], symbols[best + 1])
            symbols[best:best + 2] = [merged]
            del frozen[best + 1]

    def merge_fast(self, symbols: list[str], frozen: list[bool]) -> tuple[list[str], dict]:
        """The same merges with a priority queue (sentencepiece's way): O(n log n). Symbols live in a linked list;
        a queued pair goes stale when either side has changed since, which the stored lengths detect."""
        size = len(symbols)
        piece = list(symbols)
        prev = list(range(-1, size - 1))
        next_ = list(range(1, size + 1))
        if size:
            next_[-1] = -1
        heap: list[tuple[float, int, int, int, int]] = []
        mergeable, scores = self._mergeable, self.scores

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0 or frozen[left] or frozen[right]:
                return
            piece_id = mergeable.get(piece[left] + piece[right])
            if piece_id is not None:
                # max-heap by score, then min by left position (= leftmost, since positions keep text order)
                heapq.heappush(heap, (-scores[piece_id], left, right, len(piece[left]), len(piece[right])))

        for at in range(size - 1):
            push(at, at + 1)
        unused_splits: dict[str, tuple[str, str]] = {}
        while heap:
            _, left, right, left_len, right_len = heapq.heappop(heap)
            # stale: one side was merged away or grew since this pair was queued
            if not piece[left] or not piece[right] or next_[left] != right \
                    or len(piece[left]) != left_len or len(piece[right]) != right_len:
                continue
            merged = piece[left] + piece[right]
            if self.types[mergeable[merged]] == UNUSED:
                unused_splits[merged] = (piece[left], piece[right])
            piece[left], piece[right] = merged, ""
            next_[left] = next_[right]
            if next_[right] >= 0:
                prev[next_[right]] = left
            push(prev[left], left)
            push(left, next_[left])
        return [text for text in piece if text], unused_splits

    def _to_ids(self, pieces: list[str], unused_splits: dict) -> list[int]:
        ids: list[int] = []
        byte_ids = self._byte_ids
        previous_unknown = False

        def emit(piece: str) -> None:
            nonlocal previous_unknown
            piece_id = self._mergeable.get(piece)
            if piece_id is None:
                piece_id = self._reserved.get(piece, -1)
            if piece_id >= 0 and self.types[piece_id] == UNUSED and piece in unused_splits:
                # an unused piece may be passed through while merging but is not emitted: split it back
                left, right = unused_splits[piece]
                emit(left)
                emit(right)
                return
            if piece_id >= 0:
                ids.append(piece_id)
            elif byte_ids is not None:  # byte fallback: unknown text -> its UTF-8 bytes as <0xNN> pieces
                ids.extend(byte_ids[byte] for byte in piece.encode("utf-8"))
            elif not previous_unknown:
                ids.append(self.unk_id)  # a run of unknown pieces becomes one <unk>, as in sentencepiece
            previous_unknown = piece_id < 0

        for piece in pieces:
            emit(piece)
        return ids

    def _encode_by_words(self, normalized: str) -> list[int]:
        """The fast path: cut the text before each "▁" that follows another character ("▁▁a▁b" -> "▁▁a", "▁b"),
        encode each word once (cached). Exact when every piece is "▁"-run + non-"▁" text, as in Llama 2: then no
        piece can hold a "▁" after another character, so no merge crosses such a cut, and merges inside one word
        do not depend on the others (checked in __init__, property-tested against the whole-text loop)."""
        ids: list[int] = []
        cache = self._word_cache
        pos = 0
        user = self._user_defined.finditer(normalized) if self._user_defined is not None else ()
        for match in [*user, None]:
            end = match.start() if match is not None else len(normalized)
            for word in _WORD.findall(normalized, pos, end):
                found = cache.get(word)
                if found is None:
                    if len(cache) >= 1 << 20:
                        cache.clear()
                    merged, splits = self.merge_fast(list(word), [False] * len(word))
                    found = cache[word] = tuple(self._to_ids(merged, splits))
                ids.extend(found)
            if match is not None:
                ids.extend(self._to_ids([match.group()], {}))
                pos = match.end()
        return ids

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, *, reference: bool = False) -> list[int]:
        """Token ids of `text`. reference=True uses the plain O(n^2) merge loop instead of the priority queue."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        normalized = self.normalize(text)
        if reference or not self._word_split:
            symbols, frozen = self._initial_symbols(normalized)
            merged, splits = (self.merge_reference if reference else self.merge_fast)(symbols, frozen)
            ids = self._to_ids(merged, splits)
        else:
            ids = self._encode_by_words(normalized)
        if add_bos:
            if self.bos_id < 0:
                raise ValueError("add_bos=True but this vocabulary has no BOS piece")
            ids.insert(0, self.bos_id)
        if add_eos:
            if self.eos_id < 0:
                raise ValueError("add_eos=True but this vocabulary has no EOS piece")
            ids.append(self.eos_id)
        return ids

    def encode_pieces(self, text: str) -> list[str]:
        """The pieces of encode(text), e.g. "Hello world" -> ["▁Hello", "▁world"]."""
        return [self.pieces[token_id][0] for token_id in self.encode(text)]

    # -- decoding ----------------------------------------------------------------------------------------------
    def _segments(self, ids: Iterable[int]) -> list[str | bytes]:
        """Decoded surface per run: str for pieces, bytes for each run of byte pieces (decoded by the caller)."""
        out: list[str | bytes] = []
        strip_space = self.normalizer.add_dummy_prefix or self.normalizer.remove_extra_whitespaces
        # The first piece loses one leading "▁" (the dummy prefix); control pieces do not count. With
        # remove_extra_whitespaces, pieces keep losing one "▁" until one leaves some text (as sentencepiece).
        first = True
        keep_stripping = self.normalizer.remove_extra_whitespaces
        run = bytearray()
        for token_id in ids:
            token_id = self._check_id(token_id)
            kind = self.types[token_id]
            if kind == BYTE and token_id in self._byte_of:
                run.append(self._byte_of[token_id])
                first = False
                continue
            if run:
                out.append(bytes(run))
                run = bytearray()
            if kind == CONTROL:
                continue
            if kind == UNKNOWN:
                out.append(self.trainer.unk_surface)
                first = False
                continue
            piece = self.pieces[token_id][0]
            if first and strip_space and piece.startswith(SPACE):
                piece = piece[1:]
            first = keep_stripping and not piece
            out.append(piece.replace(SPACE, " "))
        if run:
            out.append(bytes(run))
        return out

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, spaces shown as spaces ("▁Hello" -> b" Hello", <0xE2> -> b"\\xe2");
        control pieces are b"" and <unk> its surface " ⁇ "."""
        token_id = self._check_id(token_id)
        kind = self.types[token_id]
        if kind == BYTE and token_id in self._byte_of:
            return bytes([self._byte_of[token_id]])
        if kind == CONTROL:
            return b""
        if kind == UNKNOWN:
            return self.trainer.unk_surface.encode("utf-8")
        return self.pieces[token_id][0].replace(SPACE, " ").encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: byte pieces are reassembled into UTF-8 (each invalid byte becomes U+FFFD, as in
        sentencepiece), "▁" becomes " ", the dummy-prefix space is dropped, control pieces vanish."""
        return "".join(segment if isinstance(segment, str) else segment.decode("utf-8", "scratch_spm_replace")
                       for segment in self._segments(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids` (byte pieces not decoded, so partial UTF-8 survives)."""
        return b"".join(segment if isinstance(segment, bytes) else segment.encode("utf-8")
                        for segment in self._segments(ids))

    def __repr__(self) -> str:
        return f"SentencePieceBPE(n_vocab={self.n_vocab}, byte_fallback={self.trainer.byte_fallback})"
