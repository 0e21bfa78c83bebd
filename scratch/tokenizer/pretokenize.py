"""Pre-tokenization: cut text into chunks ("pre-tokens") before BPE runs inside each chunk.

BPE never merges across a chunk boundary, so the regex decides what can become one token: GPT-2's pattern keeps a
leading space with the word (" world"), splits contractions ("'s"), and keeps letters, digits and punctuation
apart. GPT-4's cl100k pattern also caps digit runs at three ("2024" -> "202", "4") and lets one non-letter lead a
word. The patterns are the published regexes (the `regex` package supports the \\p{L} classes and possessive
quantifiers they use); any other regex string may be passed.

Long runs: a megabyte of one repeated character is one chunk, and both the regex engine and BPE slow down on it.
Like Meta's Llama 3 tokenizer, `pretokenize` first cuts the text so that no piece holds more than
MAX_RUN_CHARS consecutive whitespace or consecutive non-whitespace characters, then applies the regex to each piece.
"""
from __future__ import annotations

from functools import lru_cache

import regex

# The published pre-tokenizer regexes, by name.
PATTERNS: dict[str, str] = {
    # GPT-2 (and r50k/p50k), as in the original release.
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    # GPT-4 (cl100k_base).
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    # GPT-4o (o200k_base): case-aware words with contractions attached.
    "o200k": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
    # Llama 3 / 3.1 / 3.2 (Meta's tokenizer.py).
    "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
PATTERNS["cl100k"] = PATTERNS["gpt4"]

MAX_RUN_CHARS = 25_000  # Meta's limit on consecutive whitespace / non-whitespace characters in one piece


def resolve_pattern(pattern: str) -> str:
    """The regex for a pattern name ("gpt2", "gpt4"/"cl100k", "o200k", "llama3"), or `pattern` itself if it is a
    regex. An invalid regex raises ValueError naming it."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a pattern name ({', '.join(PATTERNS)}) or a regex string, got {pattern!r}")
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    compile_pattern(pattern)  # fail early, with the regex named
    return pattern


@lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> regex.Pattern:
    try:
        return regex.compile(PATTERNS.get(pattern, pattern))
    except regex.error as error:
        raise ValueError(f"invalid pre-tokenizer regex {pattern!r}: {error}") from None


def split_long_runs(text: str, max_run: int = MAX_RUN_CHARS) -> list[str]:
    """Cut `text` so no piece has more than `max_run` consecutive whitespace or non-whitespace characters.

    Text without such runs comes back whole (the common case costs one scan). Joining the pieces gives `text`.
    """
    pieces: list[str] = []
    start = 0
    run_start = 0
    run_is_space = None
    for i, char in enumerate(text):
        is_space = char.isspace()
        if is_space != run_is_space:
            run_start, run_is_space = i, is_space
        elif i - run_start >= max_run:  # this char would make the run max_run + 1 long: cut before it
            pieces.append(text[start:i])
            start = run_start = i
    pieces.append(text[start:])
    return [piece for piece in pieces if piece] or [text]


_LONG_RUN = {}


def _has_long_run(text: str, max_run: int) -> bool:
    """Cheap check (C speed) for a run longer than max_run; most texts never pay for split_long_runs."""
    if max_run not in _LONG_RUN:
        _LONG_RUN[max_run] = regex.compile(r"\s{%d}|\S{%d}" % (max_run + 1, max_run + 1))
    return _LONG_RUN[max_run].search(text) is not None


def pretokenize(text: str, pattern: str = "gpt4", max_run: int = MAX_RUN_CHARS) -> list[str]:
    """The chunks of `text` under `pattern` (a name or a regex), after cutting overlong runs. Joining them gives
    `text` back for every built-in pattern (they match every character)."""
    compiled = compile_pattern(pattern)
    if len(text) <= max_run or not _has_long_run(text, max_run):
        return compiled.findall(text)
    chunks: list[str] = []
    for piece in split_long_runs(text, max_run):
        chunks.extend(compiled.findall(piece))
    return chunks
