"""The tokenizer inside a GGUF file: llama.cpp's `tokenizer.ggml.*` metadata -> one of our tokenizers.

A GGUF checkpoint carries its vocabulary as metadata, under the key names of llama.cpp's gguf spec:
`tokenizer.ggml.model` names the algorithm -- "gpt2" is byte-level BPE (tokens written in GPT-2's byte alphabet,
`merges` as "left right" strings, and the pre-tokenizer named by `tokenizer.ggml.pre`), "llama" is SentencePiece
BPE (`scores` are the merge priorities, `<0xNN>` byte tokens are the fallback); `token_type` marks each token
(1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte -- SentencePiece's numbering); special ids and
flags are `bos_token_id`, `eos_token_id`, `add_bos_token`, ...; `tokenizer.chat_template` is the Jinja chat
template. The encoding itself is bpe.py's / sentencepiece.py's; this file only maps the metadata. Not here: the
"bert" (WordPiece), "t5" (Unigram), "rwkv" and "plamo2" vocabularies.
"""
from __future__ import annotations

from pathlib import Path

from scratch.tokenizer.chat_template import encode_with_special_tokens
from scratch.tokenizer.hf import BYTE_LEVEL_SPLITS, IGNORE_MERGES, PRE_TOKENIZERS, GPT2, HFTokenizer, token_to_bytes
from scratch.tokenizer.pretokenize import PATTERNS
from scratch.tokenizer.sentencepiece import (BYTE, CONTROL, NORMAL, TYPE_NAMES, UNKNOWN, USER_DEFINED, NormalizerSpec,
                                             SentencePieceBPE, TrainerSpec)

__all__ = ["from_gguf", "from_gguf_metadata", "GGUFByteLevelBPE", "GGUFSentencePiece", "GGUF_PRE_TOKENIZERS"]

# `tokenizer.ggml.pre` -> the regexes applied in sequence (each keeps its matches and the text between them), as
# llama.cpp's llama-vocab.cpp lists them for each name. hf.py holds the ones our shared vocabularies use.
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    **PRE_TOKENIZERS,
    # subtle: llama.cpp's own "default" BPE splitting is an odd four-regex list; files that say "default" (or
    # nothing) are GPT-2-style conversions, and transformers reads them with GPT-2's regex, as we do.
    "default": (GPT2,),
    "olmo": (GPT2,), "jais": (GPT2,), "roberta-bpe": (GPT2,), "trillion": (GPT2,),
    # digits one by one, then GPT-2's regex (the StarCoder family)
    **{name: PRE_TOKENIZERS["starcoder"] for name in ("smollm", "command-r", "codeshell", "exaone", "minerva-7b")},
    **{name: (PATTERNS["llama3"],) for name in ("llama-v3", "falcon3", "pixtral", "dbrx", "smaug-bpe")},
    **{name: (_QWEN2,) for name in ("qwen2", "deepseek-r1-qwen", "megrez")},
    "tekken": (_TEKKEN,),
    **{name: (PATTERNS["o200k"],) for name in ("gpt-4o", "llama4")},
}
# llama.cpp looks a whole pre-token up in the vocabulary before merging for the Llama 3 family only
_IGNORE_MERGES = {**IGNORE_MERGES, "llama-v3": True, "falcon3": True}
_SPECIAL_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                 "pad_token": "padding_token_id"}


class GGUFVocabularyMixin:
    """What a GGUF says beyond the vocabulary: special ids and the add-BOS/EOS flags (transformers' names)."""

    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    eot_token_id: int | None = None  # end of turn (llama.cpp's tokenizer.ggml.eot_token_id), where a file sets it
    add_bos_token: bool = False
    add_eos_token: bool = False

    def _set_gguf_fields(self, metadata: dict, n_tokens: int, source: str, add_bos_default: bool) -> None:
        for attribute, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                               ("pad_token_id", "padding_token_id"), ("unk_token_id", "unknown_token_id"),
                               ("eot_token_id", "eot_token_id")):
            value = metadata.get(f"tokenizer.ggml.{key}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_tokens:
                raise ValueError(f"{source}: tokenizer.ggml.{key} = {value!r} is not a token id (0..{n_tokens - 1})")
            setattr(self, attribute, value)
        self.add_bos_token = _flag(metadata, "tokenizer.ggml.add_bos_token", add_bos_default, source)
        self.add_eos_token = _flag(metadata, "tokenizer.ggml.add_eos_token", False, source)

    def encode_with_flags(self, text: str) -> list[int]:
        """Ids of `text` with BOS/EOS added as the file's add_bos_token / add_eos_token flags say (what llama.cpp
        and transformers' encode(text) give)."""
        ids = self.encode(text)
        if self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        if self.add_eos_token and self.eos_token_id is not None:
            ids = ids + [self.eos_token_id]
        return ids


class GGUFByteLevelBPE(GGUFVocabularyMixin, HFTokenizer):
    """Byte-level BPE from a GGUF ("gpt2" model): HFTokenizer's rules (added tokens matched in text first)."""


class GGUFSentencePiece(GGUFVocabularyMixin, SentencePieceBPE):
    """SentencePiece BPE from a GGUF ("llama" model). Unlike a `.model` file read by SentencePieceBPE, control and
    user-defined tokens typed in the text are matched whole (as llama.cpp and transformers' GGUF tokenizers do),
    and text after one of them gets no "▁" prefix (the prefix marks the start of the text only)."""

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, *, reference: bool = False
               ) -> list[int]:
        ids = self.encode_chat(text) if not reference else super().encode(text, reference=True)
        if add_bos:
            ids.insert(0, self._required("bos_id"))
        if add_eos:
            ids.append(self._required("eos_id"))
        return ids

    def encode_chat(self, text: str) -> list[int]:
        # SentencePieceBPE.encode on the pieces between special tokens (it matches none itself)
        rest = self.continuation_encoder()
        return encode_with_special_tokens(text, self.chat_special_ids(), lambda piece: SentencePieceBPE.encode(
            self, piece), lambda piece: SentencePieceBPE.encode(rest, piece))

    def _required(self, name: str) -> int:
        value = getattr(self, name)
        if value < 0:
            raise ValueError(f"{name.replace('_id', '').upper()} requested but this vocabulary has none")
        return value


def _flag(metadata: dict, key: str, default: bool, source: str) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {key} = {value!r} is not a bool")
    return value


def _string_list(metadata: dict, key: str, source: str, required: bool = True) -> list[str] | None:
    value = metadata.get(key)
    if value is None:
        if required:
            raise ValueError(f"{source}: no {key} in the GGUF metadata (not a file with a tokenizer?)")
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{source}: {key} must be an array of strings")
    return value


def _number_list(metadata: dict, key: str, n_tokens: int, kinds: tuple, source: str) -> list | None:
    value = metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n_tokens or \
            not all(isinstance(item, kinds) and not isinstance(item, bool) for item in value):
        raise ValueError(f"{source}: {key} must be an array of {n_tokens} numbers (one per token)")
    return value


def _chat_template(metadata: dict) -> str | dict[str, str] | None:
    """`tokenizer.chat_template`, plus named ones (`tokenizer.chat_template.NAME`, listed in
    `tokenizer.chat_templates`) as a dict with the plain one as "default"."""
    default = metadata.get("tokenizer.chat_template")
    names = metadata.get("tokenizer.chat_templates") or []
    named = {name: metadata[f"tokenizer.chat_template.{name}"] for name in names
             if isinstance(name, str) and isinstance(metadata.get(f"tokenizer.chat_template.{name}"), str)}
    if not named:
        return default if isinstance(default, str) else None
    return {**({"default": default} if isinstance(default, str) else {}), **named}


def _byte_level(metadata: dict, tokens: list[str], types: list[int] | None, source: str) -> GGUFByteLevelBPE:
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{source}: unknown pre-tokenizer tokenizer.ggml.pre = {pre!r}; known: "
                         f"{', '.join(sorted(GGUF_PRE_TOKENIZERS))}")
    merges_text = _string_list(metadata, "tokenizer.ggml.merges", source)
    types = types or [NORMAL] * len(tokens)
    vocab: dict[int, bytes] = {}
    added: dict[str, int] = {}
    flags: dict[str, bool] = {}
    for token_id, (token, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):  # matched whole in text; control tokens are the special ones
            added.setdefault(token, token_id)
            flags[token] = kind == CONTROL
            continue
        data = token_to_bytes(token)
        # subtle: a token outside the byte alphabet stands for its UTF-8 text (transformers spells it the same way)
        vocab[token_id] = data if data is not None else token.encode("utf-8")
    id_of = {}
    for token_id, token in enumerate(tokens):
        id_of.setdefault(token, token_id)
    pairs = []
    for index, merge in enumerate(merges_text):
        parts = merge.split(" ")
        if len(parts) != 2 or parts[0] not in id_of or parts[1] not in id_of:
            raise ValueError(f"{source}: tokenizer.ggml.merges[{index}] = {merge!r} is not two tokens of the "
                             "vocabulary separated by one space")
        pairs.append((id_of[parts[0]], id_of[parts[1]]))
    try:
        tokenizer = GGUFByteLevelBPE(vocab, pairs, GGUF_PRE_TOKENIZERS[pre], added,
                                     ignore_merges=_IGNORE_MERGES.get(pre, False),
                                     byte_level_pattern=BYTE_LEVEL_SPLITS.get(pre, ()), special_flags=flags)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    tokenizer._set_gguf_fields(metadata, len(tokens), source, add_bos_default=False)
    return tokenizer


def _sentencepiece(metadata: dict, tokens: list[str], types: list[int] | None, source: str) -> GGUFSentencePiece:
    scores = _number_list(metadata, "tokenizer.ggml.scores", len(tokens), (int, float), source)
    if scores is None:
        raise ValueError(f"{source}: a 'llama' (SentencePiece) vocabulary needs tokenizer.ggml.scores")
    types = types or [NORMAL] * len(tokens)
    bad = next((index for index, kind in enumerate(types) if kind not in TYPE_NAMES), None)
    if bad is not None:
        raise ValueError(f"{source}: tokenizer.ggml.token_type[{bad}] = {types[bad]} is not a token type (1..6)")

    def special(key: str, default: int) -> int:
        value = metadata.get(f"tokenizer.ggml.{key}", default)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tokens) else -1

    unk_default = next((index for index, kind in enumerate(types) if kind == UNKNOWN), 0)
    trainer = TrainerSpec(model_type=2, byte_fallback=any(kind == BYTE for kind in types),
                          unk_id=max(special("unknown_token_id", unk_default), 0), bos_id=special("bos_token_id", -1),
                          eos_id=special("eos_token_id", -1), pad_id=special("padding_token_id", -1))
    normalizer = NormalizerSpec(
        name="identity",
        add_dummy_prefix=_flag(metadata, "tokenizer.ggml.add_space_prefix", True, source),
        remove_extra_whitespaces=_flag(metadata, "tokenizer.ggml.remove_extra_whitespaces", False, source))
    try:
        tokenizer = GGUFSentencePiece(zip(tokens, map(float, scores), types), normalizer=normalizer,
                                      trainer=trainer, source=source)
    except ValueError as error:
        raise ValueError(str(error) if str(error).startswith(source) else f"{source}: {error}") from None
    # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise
    tokenizer._set_gguf_fields(metadata, len(tokens), source, add_bos_default=True)
    return tokenizer


def from_gguf_metadata(metadata: dict, source: str = "<gguf>"):
    """Our tokenizer for a GGUF's metadata dict (key -> value, as `read_gguf(path).metadata` gives it), with its
    chat template and special-token names attached."""
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise ValueError(f"{source}: no tokenizer.ggml.model in the GGUF metadata: this file has no tokenizer")
    tokens = _string_list(metadata, "tokenizer.ggml.tokens", source)
    types = _number_list(metadata, "tokenizer.ggml.token_type", len(tokens), (int,), source)
    if model == "gpt2":
        tokenizer = _byte_level(metadata, tokens, types, source)
    elif model == "llama":
        tokenizer = _sentencepiece(metadata, tokens, types, source)
    else:
        raise ValueError(f"{source}: tokenizer.ggml.model = {model!r} is not supported (only 'gpt2', byte-level "
                         "BPE, and 'llama', SentencePiece BPE)")
    names = {name: tokens[metadata[f"tokenizer.ggml.{key}"]] for name, key in _SPECIAL_KEYS.items()
             if isinstance(metadata.get(f"tokenizer.ggml.{key}"), int)
             and 0 <= metadata[f"tokenizer.ggml.{key}"] < len(tokens)}
    tokenizer.set_chat_template(_chat_template(metadata), names)
    return tokenizer


def from_gguf(path: str | Path):
    """The tokenizer of a GGUF file (read with scratch.formats.gguf; the tensors are not touched)."""
    from scratch.formats.gguf import read_gguf

    return from_gguf_metadata(read_gguf(path).metadata, str(path))
