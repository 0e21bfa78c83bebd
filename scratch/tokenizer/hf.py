"""Hugging Face byte-level BPE files: read `tokenizer.json` or GPT-2 style `vocab.json` + `merges.txt` into a
BPETokenizer, and write a `tokenizer.json` that the `tokenizers` library loads and encodes identically.

Only byte-level BPE (GPT-2, RoBERTa, Llama 3, StarCoder, Falcon, MPT, DeepSeek...) is read: WordPiece, Unigram,
SentencePiece-style Metaspace models and normalizers other than Unicode NFC/NFD/NFKC/NFKD are rejected with a
ValueError naming what was found (SentencePiece models are read by sentencepiece.py). The file format is the `tokenizers` library's JSON
serialization; the per-model pre-tokenizers are the published regex lists (llama.cpp's `llama-vocab.cpp`
`regex_exprs`, which transcribe each model's own tokenizer.json).
"""
from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Iterable

import regex

from scratch.atomic import atomic_write
from scratch.formats.byte_alphabet import bytes_to_token, bytes_to_unicode, token_to_bytes, unicode_to_bytes
from scratch.safe_read import LIMITS, read_json, read_text
from scratch.tokenizer.bpe import BPETokenizer
from scratch.tokenizer.pretokenize import PATTERNS, compile_pattern, pretokenize, resolve_pattern, split_isolated


# GPT-2's byte-to-unicode table (bytes_to_unicode, token_to_bytes, ...) is scratch.formats.byte_alphabet's:
# tokenizer.json and GGUF vocabularies spell tokens in it.


# ---------------------------------------------------------------------------------------------------------------
# Pre-tokenizers by llama.cpp name (`tokenizer.ggml.pre`): regexes applied in sequence, each splitting every piece
# into matches and gaps (both kept). They transcribe the models' tokenizer.json pre-tokenizers:
# ByteLevel(use_regex=True) is the GPT-2 regex, Digits(individual_digits=True) is \p{N}, Split(regex) is the regex.
# ---------------------------------------------------------------------------------------------------------------

GPT2 = PATTERNS["gpt2"]
ASCII_PUNCTUATION = r"!-/:-@\[-`{-~"  # Rust's is_ascii_punctuation: !"#$%&'()*+,-./ :;<=>?@ [\]^_` {|}~

# DeepSeek (V1 LLM) letters: the cased letters, as listed in its tokenizer.json. Written with escapes: llama.cpp's
# copy carries six of these characters NFC-normalized to look-alikes (U+1F7D -> U+03CE, U+1FD3 -> U+0390, U+1FDB ->
# U+038A, U+1FBE -> U+03B9, U+2126 -> U+03A9, U+212A -> "K"), which turns three ranges upside down and one,
# "K-U+212D", into a range that swallows most of the BMP's first 8k characters.
_DEEPSEEK_LETTERS = (
    r"A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    r"\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    r"\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    r"\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    r"\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    r"\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    r"\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    r"\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    r"\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    r"\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
_CJK = r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"  # 一-龥 ࠀ-一 가-퟿ as in DeepSeek's tokenizer.json

PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt-2": (GPT2,),
    "mpt": (GPT2,),  # GPT-NeoX tokenizer: ByteLevel(use_regex=True)
    "starcoder": (r"\p{N}", GPT2),  # Digits(individual_digits=True), ByteLevel(use_regex=True)
    "refact": (r"\p{N}", GPT2),
    # Punctuation(contiguous), ByteLevel(use_regex=True); then, on the byte-level text, Digits(individual=False)
    # and Split("[0-9][0-9][0-9]"): see BYTE_LEVEL_SPLITS
    "falcon": (r"[\p{P}" + ASCII_PUNCTUATION + r"]+", GPT2),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
    # ... Split(letters), Split(ASCII and full-width punctuation, quotes), Split(trailing space), Split(CJK),
    # Digits(individual_digits=True) as in DeepSeek-V2's published pre-tokenizer (llama.cpp writes "\p{N}+": the
    # same here, since the vocabulary has no multi-digit token)
    "deepseek-llm": (r"[\r\n]", r"\s?[" + _DEEPSEEK_LETTERS + r"]+",
                     r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", r"\s+$", _CJK, r"\p{N}"),
    "llama-bpe": (PATTERNS["llama3"],),
}
PRE_TOKENIZERS["gpt2"] = PRE_TOKENIZERS["gpt-2"]
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-bpe"]

# Splits that a tokenizer.json applies AFTER its ByteLevel step, i.e. to the byte-stand-in text, not to the text
# itself. Falcon's Digits step then also splits off the stand-ins "²³¹¼½¾" (bytes 0xB2 0xB3 0xB9 0xBC-0xBE, which
# are Unicode numbers), cutting characters like "½" (0xC2 0xBD) or Cyrillic "г" (0xD0 0xB3) between their bytes.
BYTE_LEVEL_SPLITS: dict[str, tuple[str, ...]] = {
    "falcon": (r"\p{N}+", r"[0-9][0-9][0-9]"),
}

UNICODE_FORMS = (None, "NFC", "NFD", "NFKC", "NFKD")  # the normalizers read (tokenizers' types of the same names)
IGNORE_MERGES = {"llama-bpe": True, "llama3": True}  # HF's default is False; Llama 3's tokenizer.json sets True


class HFTokenizer(BPETokenizer):
    """A BPETokenizer with Hugging Face's rules where they differ from tiktoken's:

    - added tokens (special or not) are matched in the text before pre-tokenization, so `encode` defaults to
      allowed_special="all" (a GPT-NeoX run of spaces or DeepSeek's "ü" is one added token);
    - `byte_level_pattern`: splits applied after the byte-level mapping (Falcon), see BYTE_LEVEL_SPLITS;
    - bytes that have no token (some vocabularies lack bytes that never occur in UTF-8, Falcon lacks a few control
      characters) are dropped, as the `tokenizers` BPE model does when it has no unknown token.
    """

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[int, int]], pattern="gpt2",
                 special_tokens: dict[str, int] | None = None, *, ignore_merges: bool = False,
                 byte_level_pattern: tuple[str, ...] = (), special_flags: dict[str, bool] | None = None,
                 normalizer: str | None = None):
        if normalizer not in UNICODE_FORMS:
            raise ValueError(f"normalizer must be one of {UNICODE_FORMS}, got {normalizer!r}")
        self.normalizer = normalizer  # a Unicode normal form applied to the text before anything else, or None
        vocab = dict(vocab)
        present = set(vocab.values())
        # subtle: BPETokenizer needs an id for every byte; missing ones get placeholder ids past the vocabulary,
        # dropped again below (drop_tokens); the bytes themselves are dropped before merging (_encode_hf_chunk).
        self.missing_bytes = frozenset(byte for byte in range(256) if bytes([byte]) not in present)
        self._missing = bytes(sorted(self.missing_bytes))
        first_placeholder = max([*vocab, *(special_tokens or {}).values(), -1]) + 1
        placeholders = range(first_placeholder, first_placeholder + len(self._missing))
        vocab.update(zip(placeholders, (bytes([byte]) for byte in self._missing)))
        super().__init__(vocab, merges, pattern, special_tokens, ignore_merges=ignore_merges)
        self.drop_tokens(placeholders)
        self.byte_level_pattern = tuple(resolve_pattern(tuple(byte_level_pattern))) if byte_level_pattern else ()
        self._byte_level_compiled = [compile_pattern(each) for each in self.byte_level_pattern]
        self._hf_cache: dict[str, tuple[int, ...]] = {}
        # True for special added tokens, False for the others ("user-defined"); all are matched in text
        self.special_flags = dict(special_flags or {token: True for token in self.special_tokens})

    def encode_ordinary(self, text: str) -> list[int]:
        if self.normalizer is not None:
            text = unicodedata.normalize(self.normalizer, text)
        if not self._missing and not self.byte_level_pattern:
            return super().encode_ordinary(text)  # the common case: BPETokenizer's own fast path
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates become U+FFFD, as in BPETokenizer.encode_ordinary
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        cache = self._hf_cache
        ids: list[int] = []
        for chunk in pretokenize(text, self.pattern, self.max_run):
            found = cache.get(chunk)
            if found is None:
                if len(cache) >= 1 << 20:
                    cache.clear()
                found = cache[chunk] = self._encode_hf_chunk(chunk)
            ids.extend(found)
        return ids

    def _encode_hf_chunk(self, chunk: str) -> tuple[int, ...]:
        data = chunk.encode("utf-8")
        if self.byte_level_pattern:
            table, back = bytes_to_unicode(), unicode_to_bytes()
            pieces = ["".join(table[byte] for byte in data)]
            for split in self._byte_level_compiled:
                pieces = split_isolated(pieces, split)
            parts = [bytes(back[char] for char in piece) for piece in pieces]
        else:
            parts = [data]
        ids: list[int] = []
        for part in parts:
            # subtle: `tokenizers` drops a byte that has no token BEFORE merging, so its neighbours still merge
            kept = part.translate(None, self._missing) if self._missing else part
            if kept:
                ids.extend(self.encode_chunk_bytes(kept))
        return tuple(ids)

    def encode(self, text: str, allowed_special: Iterable[str] | str = "all",
               disallowed_special: Iterable[str] | str = ()) -> list[int]:
        """Ids of `text` with Hugging Face's default: every added token in the text is matched (pass
        allowed_special=() to treat their text as ordinary text, tiktoken-style rules otherwise apply)."""
        if self.normalizer is not None:  # (tokenizers matches non-normalized added tokens before normalizing)
            text = unicodedata.normalize(self.normalizer, text)
        return super().encode(text, allowed_special, disallowed_special)

    def save(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face tokenizer.json (atomically): BPETokenizer's own format cannot hold the rules above.
        `from_hf`, `HFTokenizer.load` and `load_tokenizer` read it back."""
        to_hf(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HFTokenizer":
        return from_hf(path)


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------

def _read_json(path: Path):
    """A JSON file of the folder: regular, within its size cap, UTF-8, parseable (errors name the file)."""
    return read_json(path, path.name if path.name in LIMITS else "json")


def _pattern_from_pre_tokenizer(spec, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(regexes on the text, regexes on the byte-level text) for a tokenizer.json `pre_tokenizer`."""
    steps = spec.get("pretokenizers", []) if isinstance(spec, dict) and spec.get("type") == "Sequence" else [spec]
    before: list[str] = []
    after: list[str] = []
    seen_byte_level = False
    for step in steps:
        kind = step.get("type") if isinstance(step, dict) else None
        target = after if seen_byte_level else before
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise ValueError(f"{source}: ByteLevel pre-tokenizer with add_prefix_space=true is not supported")
            if step.get("use_regex", True):
                target.append(GPT2)
            seen_byte_level = True
        elif kind == "Split":
            behavior = str(step.get("behavior", "")).lower()
            if behavior != "isolated" or step.get("invert"):
                raise ValueError(f"{source}: Split pre-tokenizer with behavior {step.get('behavior')!r} "
                                 f"invert={step.get('invert')!r} is not supported (only Isolated)")
            pattern = step.get("pattern")
            if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
                target.append(from_oniguruma(pattern["Regex"]))
            elif isinstance(pattern, dict) and isinstance(pattern.get("String"), str):
                target.append(regex.escape(pattern["String"]))
            else:
                raise ValueError(f"{source}: Split pre-tokenizer without a pattern: {step!r}")
        elif kind == "Digits":
            target.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "Punctuation":
            behavior = str(step.get("behavior", "isolated")).lower()
            if behavior not in ("isolated", "contiguous"):
                raise ValueError(f"{source}: Punctuation pre-tokenizer behavior {behavior!r} is not supported")
            target.append(r"[\p{P}" + ASCII_PUNCTUATION + "]" + ("+" if behavior == "contiguous" else ""))
        else:
            raise ValueError(f"{source}: pre-tokenizer {kind!r} is not supported (byte-level BPE uses ByteLevel, "
                             "Split, Digits, Punctuation)")
    if not seen_byte_level:
        raise ValueError(f"{source}: the pre-tokenizer has no ByteLevel step: not a byte-level BPE tokenizer")
    if not before:
        raise ValueError(f"{source}: no splitting before the byte-level step; not supported")
    return tuple(before), tuple(after)


# subtle: `tokenizers` runs Split regexes with Oniguruma, where "X{1,3}+" is NOT possessive as in Python's `regex`
# (and Java/PCRE) but "(X{1,3})+", i.e. any number of X: cl100k's "\p{N}{1,3}+" would keep "12345" whole. Possessive
# ?+ *+ ++ mean the same in both. So intervals are translated both ways; an atomic group is Oniguruma's possessive.
_INTERVAL_PLUS = regex.compile(r"(\\p\{\w+\}|\\P\{\w+\}|\\.|\[(?:\\.|[^\]\\])*\]|[^\\()|{}\[\]])(\{\d+(?:,\d*)?\})\+")
_NON_ASCII_ESCAPE = regex.compile(r"(?<!\\)((?:\\\\)*)\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")


def to_oniguruma(pattern: str) -> str:
    """Our regex as Oniguruma reads it the same way: "X{m,n}+" (possessive) -> "(?>X{m,n})", and \\uXXXX /
    \\UXXXXXXXX escapes of non-ASCII characters written as the characters (Oniguruma has no \\U)."""
    def literal(match):
        char = chr(int(match.group(2) or match.group(3), 16))
        return match.group(0) if char.isascii() else match.group(1) + char
    return _NON_ASCII_ESCAPE.sub(literal, _INTERVAL_PLUS.sub(r"(?>\1\2)", pattern))


def from_oniguruma(pattern: str) -> str:
    """An Oniguruma regex as Python's `regex` reads it the same way: "X{m,n}+" -> "(?:X{m,n})+"."""
    return _INTERVAL_PLUS.sub(r"(?:\1\2)+", pattern)


def _added_from_types(types_path: Path) -> dict[str, tuple[int, bool]]:
    """Added tokens from a tokens.json table (type 3 control = special, 4 user-defined = not special)."""
    rows = _read_json(types_path)
    if not isinstance(rows, list):
        raise ValueError(f"{types_path}: expected a list of [piece, type, ...] rows, got {type(rows).__name__}")
    added = {}
    for token_id, row in enumerate(rows):
        if isinstance(row, list) and len(row) >= 2 and isinstance(row[0], str) and row[1] in (3, 4):
            added[row[0]] = (token_id, row[1] == 3)
    return added


def _added_by_reachability(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, tuple[int, bool]]:
    """Without a list of added tokens: a token that is neither one byte nor made by a merge (GPT-2's
    "<|endoftext|>"), or that is not written in the byte alphabet at all, can only be an added token."""
    made = {left + right for left, right in merges}
    return {token: (token_id, True) for token, token_id in vocab.items()
            if token not in made and (token_to_bytes(token) is None or len(token_to_bytes(token)) != 1)}


def _build(vocab: dict[str, int], merges: list[tuple[str, str]], added: dict[str, tuple[int, bool]],
           pattern, byte_level_pattern, ignore_merges: bool, source: str, normalizer: str | None = None
           ) -> HFTokenizer:
    for token, token_id in vocab.items():
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise ValueError(f"{source}: vocabulary token {token!r} has id {token_id!r}; ids are non-negative "
                             f"integers")
    ids: dict[int, bytes] = {}
    for token, token_id in vocab.items():
        if token in added:
            continue
        data = token_to_bytes(token)
        if data is None:
            raise ValueError(f"{source}: vocabulary token {token!r} (id {token_id}) is not written in the byte-level "
                             "alphabet and is not an added token")
        ids[token_id] = data
    pairs = []
    for index, (left, right) in enumerate(merges):
        if left not in vocab or right not in vocab:
            raise ValueError(f"{source}: merge {index} {left!r} {right!r} names a token missing from the vocabulary")
        pairs.append((vocab[left], vocab[right]))
    specials = {token: token_id for token, (token_id, _) in added.items()}
    flags = {token: special for token, (_, special) in added.items()}
    try:
        return HFTokenizer(ids, pairs, pattern, specials, ignore_merges=ignore_merges,
                           byte_level_pattern=byte_level_pattern, special_flags=flags, normalizer=normalizer)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _from_tokenizer_json(path: Path, pattern, ignore_merges: bool | None) -> HFTokenizer:
    data = _read_json(path)
    source = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{source}: not a tokenizer.json (no 'model' object)")
    model = data["model"]
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise ValueError(f"{source}: model type {kind!r} is not supported; only byte-level BPE")
    for option in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(option):
            raise ValueError(f"{source}: BPE option {option}={model[option]!r} is not supported")
    if model.get("byte_fallback"):
        raise ValueError(f"{source}: BPE with byte_fallback is SentencePiece-style, not byte-level BPE")
    decoder = data.get("decoder")
    decoder_kind = decoder.get("type") if isinstance(decoder, dict) else None
    if decoder_kind != "ByteLevel":
        raise ValueError(f"{source}: decoder {decoder_kind!r} is not supported; byte-level BPE needs ByteLevel")
    normalizer = data.get("normalizer")
    if isinstance(normalizer, dict) and normalizer.get("type") == "Sequence" and \
            len(normalizer.get("normalizers") or []) <= 1:
        normalizer = (normalizer.get("normalizers") or [None])[0]  # an empty or one-step Sequence
    form = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
    if form not in UNICODE_FORMS:
        raise ValueError(f"{source}: normalizer {form!r} is not supported (only NFC, NFD, NFKC, NFKD)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{source}: model.vocab must be an object of token -> id")
    if not isinstance(model.get("merges", []), list):
        raise ValueError(f"{source}: model.merges must be a list of pairs, got {model['merges']!r}")
    merges = []
    for index, merge in enumerate(model.get("merges", [])):
        if isinstance(merge, str):
            parts = merge.split(" ")
        elif isinstance(merge, list):
            parts = merge
        else:
            parts = []
        if len(parts) != 2:
            raise ValueError(f"{source}: merge {index} {merge!r} is not a pair (\"a b\" or [\"a\", \"b\"])")
        merges.append((parts[0], parts[1]))
    vocab = dict(vocab)
    added = {}
    if not isinstance(data.get("added_tokens") or [], list):
        raise ValueError(f"{source}: added_tokens must be a list of token objects, got {data['added_tokens']!r}")
    for entry in data.get("added_tokens") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or \
                not isinstance(entry.get("id"), int):
            raise ValueError(f"{source}: added token {entry!r} needs a string 'content' and an integer 'id'")
        added[entry["content"]] = (entry["id"], bool(entry.get("special", False)))
        vocab.setdefault(entry["content"], entry["id"])
    before, after = _pattern_from_pre_tokenizer(data.get("pre_tokenizer"), source)
    if pattern is not None:
        before, after = (tuple(pattern) if isinstance(pattern, (tuple, list)) else (pattern,)), ()
    if ignore_merges is None:
        ignore_merges = bool(model.get("ignore_merges", False))
    return _build(vocab, merges, added, _simplest(before), after, ignore_merges, source, form)


def _simplest(regexes: tuple[str, ...]) -> str | tuple[str, ...]:
    """A published pattern by its name ("gpt2", "llama3"...; findall, fast), anything else as a tuple (the
    "isolated" rule, which keeps text that a regex does not match, as Hugging Face's Split does)."""
    names = {regex_text: name for name, regex_text in PATTERNS.items()}
    if len(regexes) == 1 and regexes[0] in names:
        return names[regexes[0]]
    return regexes


def _read_merges_txt(path: Path) -> list[tuple[str, str]]:
    merges = []
    text = read_text(path, "merges.txt").replace("\r\n", "\n").replace("\r", "\n")   # universal newlines
    for number, line in enumerate(text.split("\n"), 1):
        if (number == 1 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _from_vocab_merges(folder: Path, pattern, ignore_merges) -> HFTokenizer:
    vocab = _read_json(folder / "vocab.json")
    if not isinstance(vocab, dict):
        raise ValueError(f"{folder / 'vocab.json'}: expected an object of token -> id")
    merges = _read_merges_txt(folder / "merges.txt")
    meta = _read_json(folder / "meta.json") if (folder / "meta.json").is_file() else {}
    if not isinstance(meta, dict):
        raise ValueError(f"{folder / 'meta.json'}: expected a JSON object, got {type(meta).__name__}")
    pre = meta.get("tokenizer.ggml.pre")
    if pre is not None and not isinstance(pre, str):
        raise ValueError(f"{folder / 'meta.json'}: tokenizer.ggml.pre must be a name, got {pre!r}")
    if (folder / "tokens.json").is_file():
        added = _added_from_types(folder / "tokens.json")
    elif isinstance(meta.get("control_or_user_defined_tokens"), list):
        entries = meta["control_or_user_defined_tokens"]
        if not all(isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
                   and isinstance(entry[1], str) for entry in entries):
            raise ValueError(f"{folder / 'meta.json'}: control_or_user_defined_tokens must list [id, text] pairs")
        added = {text: (token_id, True) for token_id, text in entries}
    else:
        added = _added_by_reachability(vocab, merges)
    byte_level_pattern: tuple[str, ...] = ()
    if pattern is None:
        if pre is None:
            pattern = "gpt2"  # GPT-2's own files: vocab.json + merges.txt with the GPT-2 regex
        elif pre in PRE_TOKENIZERS:
            pattern = PRE_TOKENIZERS[pre]
            byte_level_pattern = BYTE_LEVEL_SPLITS.get(pre, ())
        else:
            raise ValueError(f"{folder / 'meta.json'}: unknown pre-tokenizer {pre!r}; known: "
                             f"{', '.join(sorted(PRE_TOKENIZERS))} (or pass pattern=)")
        pattern = _simplest(pattern)
    if ignore_merges is None:
        ignore_merges = IGNORE_MERGES.get(pre, False)
    return _build(vocab, merges, added, pattern, byte_level_pattern, ignore_merges, str(folder))


def from_hf(path: str | os.PathLike, pattern: str | tuple[str, ...] | None = None, *,
            ignore_merges: bool | None = None) -> HFTokenizer:
    """Load a Hugging Face byte-level BPE tokenizer.

    path: a tokenizer.json file, or a folder with tokenizer.json, or with vocab.json + merges.txt (then the
    pre-tokenizer comes from meta.json's "tokenizer.ggml.pre" if present, else GPT-2's; added tokens from
    tokens.json types 3/4, meta.json, or, failing both, tokens no merge makes). pattern overrides the
    pre-tokenizer; ignore_merges overrides the whole-pre-token lookup (tokenizer.json says; else Llama 3 only).
    Not applied: an added token's lstrip/rstrip/single_word flags (RoBERTa's "<mask>"), post-processors (BOS/EOS).
    """
    path = Path(path)
    if path.is_file():
        return _from_tokenizer_json(path, pattern, ignore_merges)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(path / "tokenizer.json", pattern, ignore_merges)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return _from_vocab_merges(path, pattern, ignore_merges)
    raise FileNotFoundError(f"{path}: holds neither tokenizer.json nor vocab.json + merges.txt")


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------

def _split_step(regex_text: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": to_oniguruma(regex_text)}, "behavior": "Isolated", "invert": False}


def to_hf_json(tokenizer: BPETokenizer) -> dict:
    """The tokenizer.json object for `tokenizer`: Split(regex, Isolated) steps, ByteLevel(use_regex=False), a BPE
    model with our vocab, merges and ignore_merges, a ByteLevel decoder, and the special tokens as added tokens."""
    if getattr(tokenizer, "merge_rank", "index") != "index":
        raise ValueError("to_hf needs merges ranked by their index (merge_rank='index'); tiktoken-ranked "
                         "vocabularies tie different splits of one token, which Hugging Face's BPE cannot express")
    pattern = resolve_pattern(tokenizer.pattern)
    regexes = list(pattern) if isinstance(pattern, tuple) else [pattern]
    steps = [_split_step(each) for each in regexes]
    steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
    steps.extend(_split_step(each) for each in getattr(tokenizer, "byte_level_pattern", ()))
    vocab = {bytes_to_token(data): token_id for token_id, data in sorted(tokenizer.vocab.items())}
    # subtle: `tokenizers` keeps an added token's id only if the model vocabulary has its text under that id;
    # otherwise it renumbers it after the vocabulary (StarCoder's "<|endoftext|>" 0 would become 49114).
    for text, token_id in tokenizer.special_tokens.items():
        if vocab.setdefault(text, token_id) != token_id:
            raise ValueError(f"special token {text!r} (id {token_id}) reads as the vocabulary token id "
                             f"{vocab[text]} in the byte-level alphabet; tokenizer.json cannot hold both")
    merges = [[bytes_to_token(tokenizer.vocab[left]), bytes_to_token(tokenizer.vocab[right])]
              for left, right in tokenizer.merges]
    flags = getattr(tokenizer, "special_flags", {})
    added = [{"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": flags.get(text, True)}
             for text, token_id in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": form} if (form := getattr(tokenizer, "normalizer", None)) else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": bool(tokenizer.ignore_merges), "vocab": vocab, "merges": merges},
    }


def to_hf(tokenizer: BPETokenizer, path: str | os.PathLike) -> Path:
    """Write `tokenizer` as a Hugging Face tokenizer.json at `path` (a file, or a folder to hold tokenizer.json),
    atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    payload = to_hf_json(tokenizer)
    with atomic_write(path) as handle:
        json.dump(payload, handle, ensure_ascii=False)
    return path
