"""GPT-2's byte-to-unicode table: the alphabet in which vocabulary files spell byte-level BPE tokens.

Byte-level BPE works on bytes, but vocab.json / merges.txt / tokenizer.json store tokens as *text*, and a raw
byte such as 0x20 (space) or 0x0A (newline) would break the space-separated merges.txt or be invisible. So GPT-2
gives every byte a printable stand-in character: the 188 bytes that are already printable, non-space characters
in Latin-1 (33..126 "!".."~", 161..172 "¡".."¬", 174..255 "®".."ÿ") stand for themselves, and the other 68
bytes (0..32, 127..160, 173), taken in increasing order, get the characters U+0100, U+0101, ... So space 0x20,
the 33rd byte without a printable form, is U+0120 "Ġ", and newline 0x0A is U+010A "Ċ".

The confusion to avoid: "Ġ" in a vocabulary file is not a letter of the token; it IS the byte 0x20. And a
printable Latin-1 character such as "é" in vocab.json is the single byte 0xE9, not the UTF-8 text "é" (which is
the two bytes 0xC3 0xA9, written "Ã©").

GGUF's "gpt2" vocabularies (llama.cpp's `tokenizer.ggml.tokens`) are spelled in it too, so it lives in the
file-format layer, where the tokenizer's readers and scratch.models' GGUF writer both import it. Host-side Python.
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["bytes_to_unicode", "unicode_to_bytes", "token_to_bytes", "bytes_to_token"]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """byte value -> its stand-in character in vocabulary files."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_to_bytes(token: str) -> bytes | None:
    """The bytes a vocabulary-file token stands for ("Ġworld" -> b" world"); None if it has a character outside the
    alphabet (then it is not a byte-level token, e.g. an added token stored as raw text)."""
    table = unicode_to_bytes()
    try:
        return bytes(table[char] for char in token)
    except KeyError:
        return None


def bytes_to_token(data: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[byte] for byte in data)
