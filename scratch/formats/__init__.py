"""File formats read and written from scratch on the host: GGUF (llama.cpp's checkpoint format) and its block
quantizations.

`gguf` parses and writes the container (header, metadata, tensor infos, memory-mapped data); `quants` turns the
stored blocks into float32 and back (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the k-quants Q2_K..Q6_K);
`byte_alphabet` is GPT-2's byte-to-unicode table, in which tokenizer.json and GGUF vocabularies spell tokens.
Host-side NumPy and the standard library only: no backend, no model code (mapping GGUF tensors onto our models is
`scratch.models.gguf`'s job).
"""
from scratch.formats.gguf import MAGIC, GGUFError, GGUFFile, GGUFTensor, is_gguf, read_gguf, write_gguf
from scratch.formats.quants import TYPES, QuantType, dequantize, quantize

__all__ = [
    "MAGIC",
    "TYPES",
    "GGUFError",
    "GGUFFile",
    "GGUFTensor",
    "QuantType",
    "dequantize",
    "is_gguf",
    "quantize",
    "read_gguf",
    "write_gguf",
]
