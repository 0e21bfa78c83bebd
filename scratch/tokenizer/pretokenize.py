"""Pre-tokenization: cut text into chunks ("pre-tokens") before BPE runs inside each chunk.

BPE never merges across a chunk boundary, so the regex decides what can become one token: GPT-2's pattern keeps a
leading space with the word (" world"), splits contractions ("'s"), and keeps letters, digits and punctuation
apart. GPT-4's cl100k pattern also caps digit runs at three ("2024" -> "202", "4") and lets one non-letter lead a
word. The patterns are the published regexes (the `regex` package supports the \\p{L} classes and possessive
quantifiers they use); any other regex string may be passed, or a tuple of regexes applied one after another (each
splits every piece into its matches and the text between them, both kept -- Hugging Face's `Split(behavior=
"isolated")`, llama.cpp's `unicode_regex_split`), which is how several Hugging Face pre-tokenizers are written.

Long runs: a megabyte of one repeated character is one chunk, and both the regex engine and BPE slow down on it.
When a chunk would exceed MAX_RUN_CHARS, `pretokenize` cuts the text like Meta's Llama 3 tokenizer (no piece holds
more than MAX_RUN_CHARS consecutive whitespace or non-whitespace characters) and applies the regex to each piece.
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


def resolve_pattern(pattern: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """The regex for a pattern name ("gpt2", "gpt4"/"cl100k", "o200k", "llama3"), or `pattern` itself if it is a
    regex; a tuple (or list) of names/regexes resolves element by element. An invalid regex raises ValueError
    naming it."""
    if isinstance(pattern, (tuple, list)):
        if not pattern:
            raise ValueError("a pattern sequence needs at least one regex, got an empty sequence")
        return tuple(resolve_pattern(each) for each in pattern)
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


def split_isolated(pieces: list[str], compiled: regex.Pattern) -> list[str]:
    """Split every piece into the regex's matches AND the text between them, both kept in order, empty pieces
    dropped (Hugging Face `Split(pattern, behavior="isolated")`). Joining the result gives the joined input."""
    out: list[str] = []
    for piece in pieces:
        last = 0
        for match in compiled.finditer(piece):
            start, end = match.span()
            if start > last:
                out.append(piece[last:start])
            if end > start:
                out.append(piece[start:end])
            last = end
        if last < len(piece):
            out.append(piece[last:])
    return out


_ALL_WHITESPACE = regex.compile(r"\s+").fullmatch


def gpt4_findall_fast(text: str) -> list[str]:
    r"""`findall` of the published GPT-4 (cl100k) regex, faster with the `regex` package (docs/tokenizer.md, Speed).

    The published regex and the original cl100k one (the same as Llama 3's) differ in one place only: `\s++$`
    makes the text's trailing whitespace a single chunk, where the original regex cuts it after its last newline
    (" \n " -> " \n", " "). Elsewhere the possessive quantifiers change nothing, because no alternative could
    backtrack usefully there. So: split with the faster original regex, then join the trailing whitespace chunks.
    The published regex stays the oracle: a property test checks the two agree on any text.
    """
    chunks = compile_pattern(PATTERNS["llama3"]).findall(text)
    first_trailing = len(chunks)
    # subtle: the regex's \s, not str.isspace (which also counts \x1c-\x1f)
    while first_trailing > 0 and _ALL_WHITESPACE(chunks[first_trailing - 1]):
        first_trailing -= 1
    if first_trailing < len(chunks) - 1:
        chunks[first_trailing:] = ["".join(chunks[first_trailing:])]
    return chunks


# Published regex -> an equivalent, faster splitter (each property-tested against its regex).
_FAST_FINDALL = {PATTERNS["gpt4"]: gpt4_findall_fast}


def apply_pattern(pieces: list[str], pattern: str | tuple[str, ...]) -> list[str]:
    """The chunks of every piece under `pattern`, in order, with no long-run cutting (see pretokenize)."""
    if isinstance(pattern, (tuple, list)):
        for each in pattern:
            pieces = split_isolated(pieces, compile_pattern(each))
        return pieces
    findall = _FAST_FINDALL.get(PATTERNS.get(pattern, pattern)) or compile_pattern(pattern).findall
    if len(pieces) == 1:
        return findall(pieces[0])
    chunks: list[str] = []
    for piece in pieces:
        chunks.extend(findall(piece))
    return chunks


def pretokenize(text: str, pattern: str | tuple[str, ...] = "gpt4", max_run: int = MAX_RUN_CHARS) -> list[str]:
    """The chunks of `text` under `pattern`.

    A single regex (or name) keeps only its matches, like tiktoken's `findall` (the built-in patterns match every
    character, so joining the chunks gives `text` back). A tuple of regexes is applied in sequence with the
    "isolated" rule, which never loses text.

    Long runs: only if some chunk would be longer than `max_run` characters is the text first cut Meta-style
    (`split_long_runs`) and split again. So ordinary text gets exactly tiktoken's chunks, without paying for a
    scan for long runs (a Python loop over every character).
    """
    chunks = apply_pattern([text], pattern)
    if len(text) > max_run and chunks and max(map(len, chunks)) > max_run:
        chunks = apply_pattern(split_long_runs(text, max_run), pattern)
    return chunks
