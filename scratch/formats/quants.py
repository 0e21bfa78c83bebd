"""GGML's block quantizations, decoded and encoded with NumPy, one whole array of blocks at a time.

A quantized GGUF tensor is a run of fixed-size blocks. Each block packs `block_size` weights (32, or 256 for the
"k-quants") as small integers plus one or two float16 scales; a weight is rebuilt as `d * q` ("_0" types, symmetric)
or `d * q + m` / `d * q - dmin * m` ("_1" types and k-quants, with an offset). The k-quants nest a second level: a
256-weight super-block holds 8 or 16 sub-blocks whose own 4- or 6-bit scales are multiplied by the float16 `d`.
Layouts follow ggml's C definitions (ggml-common.h, ggml-quants.c: `dequantize_row_*`, `quantize_row_*_ref`);
docs/quantization.md draws each block. Quantizers write what ggml's reference quantizers write (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1, BF16); the k-quant quantizers here are a plain range fit, not ggml's error-weighted search (same format,
a little more error). Host-side NumPy only: no backend, no file I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TYPES", "TYPES_BY_ID", "QuantType", "dequantize", "quantize", "storage_bytes", "DEQUANTIZABLE",
           "QUANTIZABLE"]


@dataclass(frozen=True)
class QuantType:
    """One ggml tensor type: its id in GGUF files, and how many weights and bytes one block holds."""

    name: str
    type_id: int
    block_size: int  # weights per block
    block_bytes: int  # bytes per block

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block_size


# ggml's type ids (ggml.h `enum ggml_type`) and block sizes. Ids 4 and 5 (Q4_2, Q4_3) were removed from ggml long ago.
# Every type is listed so a file can be parsed; DEQUANTIZABLE says which ones we can turn into numbers.
TYPES: dict[str, QuantType] = {t.name: t for t in (
    QuantType("F32", 0, 1, 4), QuantType("F16", 1, 1, 2),
    QuantType("Q4_0", 2, 32, 18), QuantType("Q4_1", 3, 32, 20),
    QuantType("Q5_0", 6, 32, 22), QuantType("Q5_1", 7, 32, 24),
    QuantType("Q8_0", 8, 32, 34), QuantType("Q8_1", 9, 32, 40),
    QuantType("Q2_K", 10, 256, 84), QuantType("Q3_K", 11, 256, 110), QuantType("Q4_K", 12, 256, 144),
    QuantType("Q5_K", 13, 256, 176), QuantType("Q6_K", 14, 256, 210), QuantType("Q8_K", 15, 256, 292),
    QuantType("IQ2_XXS", 16, 256, 66), QuantType("IQ2_XS", 17, 256, 74), QuantType("IQ3_XXS", 18, 256, 98),
    QuantType("IQ1_S", 19, 256, 50), QuantType("IQ4_NL", 20, 32, 18), QuantType("IQ3_S", 21, 256, 110),
    QuantType("IQ2_S", 22, 256, 82), QuantType("IQ4_XS", 23, 256, 136),
    QuantType("I8", 24, 1, 1), QuantType("I16", 25, 1, 2), QuantType("I32", 26, 1, 4), QuantType("I64", 27, 1, 8),
    QuantType("F64", 28, 1, 8), QuantType("IQ1_M", 29, 256, 56), QuantType("BF16", 30, 1, 2),
    QuantType("TQ1_0", 34, 256, 54), QuantType("TQ2_0", 35, 256, 66), QuantType("MXFP4", 39, 32, 17),
)}
TYPES_BY_ID: dict[int, QuantType] = {t.type_id: t for t in TYPES.values()}

# Types stored as plain little-endian numbers (no blocks): NumPy reads them directly.
PLAIN_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
}


def storage_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of `shape` (NumPy order: the last axis is the row ggml blocks run along) takes as `type_name`.
    ValueError when the row length is not a whole number of blocks."""
    qtype = TYPES[type_name]
    row = shape[-1] if shape else 1
    if row % qtype.block_size:
        raise ValueError(f"a {type_name} row holds whole blocks of {qtype.block_size} weights; "
                         f"the last axis of shape {shape} is {row}")
    return math.prod(shape) // qtype.block_size * qtype.block_bytes


# --- decoding ------------------------------------------------------------------------------------------------------
# Each decoder takes blocks as a (N, block_bytes) uint8 array and returns (N, block_size) float32, doing the
# arithmetic in the order ggml's C code does (so results are bit-identical to it, rounding included).

def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of every block, as a (N, 1) float32 column."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view("<f2").astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """(N, 16) bytes -> (N, 32) 4-bit values: the low nibbles are weights 0..15, the high nibbles weights 16..31."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


# Q2_K / Q3_K's 2-bit layout: weight 128n + 32j + 16k + l is bits 2j..2j+1 of packed byte 32n + 16k + l.
_PLANE_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1, 1)  # 2j, on the j axis of (N, n, j, k, l)


def _unpack_2bit_planes(packed: np.ndarray) -> np.ndarray:
    """(N, 64) bytes -> (N, 2 n, 4 j, 2 k, 16 l) values 0..3, uint8 (the inverse of _pack_2bit_planes)."""
    return (packed.reshape(packed.shape[0], 2, 1, 2, 16) >> _PLANE_SHIFTS) & 3


def _fifth_bits(blocks: np.ndarray, start: int) -> np.ndarray:
    """(N, 4) bytes at `start` = one little-endian uint32 per block whose bit j is weight j's fifth bit -> (N, 32)."""
    return np.unpackbits(blocks[:, start:start + 4], axis=1, bitorder="little")


def _dequantize_q8_0(blocks):  # d f16 | 32 x int8
    return _f16(blocks, 0) * blocks[:, 2:].view(np.int8).astype(np.float32)


def _dequantize_q4_0(blocks):  # d f16 | 16 bytes of nibbles; w = d * (q - 8)
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return _f16(blocks, 0) * q.astype(np.float32)


def _dequantize_q4_1(blocks):  # d f16 | m f16 | 16 bytes of nibbles; w = d * q + m
    return _f16(blocks, 0) * _nibbles(blocks[:, 4:]).astype(np.float32) + _f16(blocks, 2)


def _dequantize_q5_0(blocks):  # d f16 | 4 bytes of fifth bits | 16 bytes of nibbles; w = d * (q - 16)
    q = (_nibbles(blocks[:, 6:]) | (_fifth_bits(blocks, 2) << 4)).astype(np.int8) - np.int8(16)
    return _f16(blocks, 0) * q.astype(np.float32)


def _dequantize_q5_1(blocks):  # d f16 | m f16 | 4 bytes of fifth bits | 16 bytes of nibbles; w = d * q + m
    q = _nibbles(blocks[:, 8:]) | (_fifth_bits(blocks, 4) << 4)
    return _f16(blocks, 0) * q.astype(np.float32) + _f16(blocks, 2)


# The k-quants: 256 weights per super-block. Their weights are addressed as (half n, pass j, ...) in ggml's loops;
# below, each decoder reshapes the packed bytes so that C order of the result is weight order, then flattens.

def _dequantize_q2_k(blocks):
    # scales[16] (4-bit scale | 4-bit min per 16 weights) | qs[64] (2-bit) | d f16 | dmin f16.
    # Weight 128n + 32j + 16k + l = bits 2j..2j+1 of qs[32n + 16k + l], sub-block 8n + 2j + k.
    N = blocks.shape[0]
    q = _unpack_2bit_planes(blocks[:, 16:80]).astype(np.float32)  # (N, 2 n, 4 j, 2 k, 16 l)
    scales = blocks[:, :16].reshape(N, 2, 4, 2, 1)
    d = _f16(blocks, 80).reshape(N, 1, 1, 1, 1)
    dmin = _f16(blocks, 82).reshape(N, 1, 1, 1, 1)
    scale = d * (scales & 0x0F).astype(np.float32)
    offset = dmin * (scales >> 4).astype(np.float32)
    return (scale * q - offset).reshape(N, 256)


def _q3_k_scales(packed: np.ndarray) -> np.ndarray:
    """Q3_K's 16 signed 6-bit scales from 12 bytes: the low 4 bits of scale s are nibble s // 8 of byte s % 8, the
    high 2 bits are bits 2(s // 4).. of byte 8 + s % 4; stored with +32 added."""
    s = np.arange(16)
    low = (packed[:, s % 8] >> (4 * (s // 8)).astype(np.uint8)) & 0x0F
    high = (packed[:, 8 + s % 4] >> (2 * (s // 4)).astype(np.uint8)) & 0x03
    return (low | (high << 4)).astype(np.int8) - np.int8(32)


def _dequantize_q3_k(blocks):
    # hmask[32] (third bit) | qs[64] (low 2 bits) | scales[12] (16 x 6 bits) | d f16.
    # Weight 128n + 32j + 16k + l: low bits 2j.. of qs[32n + 16k + l], third bit 4n + j of hmask[16k + l]
    # (a cleared bit subtracts 4), sub-block 8n + 2j + k.
    N = blocks.shape[0]
    low = _unpack_2bit_planes(blocks[:, 32:96]).astype(np.int8)  # (N, 2 n, 4 j, 2 k, 16 l)
    hmask = blocks[:, :32].reshape(N, 1, 1, 2, 16)
    bit = np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1, 1)  # 4n + j
    high_clear = ((hmask >> bit) & 1) == 0
    q = (low - np.int8(4) * high_clear.astype(np.int8)).astype(np.float32)
    scales = _q3_k_scales(blocks[:, 96:108]).reshape(N, 2, 4, 2, 1).astype(np.float32)
    d = _f16(blocks, 108).reshape(N, 1, 1, 1, 1)
    return ((d * scales) * q).reshape(N, 256)


def _k4_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: 8 unsigned 6-bit scales and 8 6-bit mins from 12 bytes. Sub-blocks 0..3 keep theirs in the low
    6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 put their low 4 bits in the nibbles of bytes 8..11
    and their top 2 bits in the spare top bits of bytes 0..3 (scales) and 4..7 (mins)."""
    first_scale, first_min, last = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([first_scale & 63, (last & 0x0F) | ((first_scale >> 6) << 4)], axis=1)
    mins = np.concatenate([first_min & 63, (last >> 4) | ((first_min >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _dequantize_q4_k(blocks):
    # d f16 | dmin f16 | scales[12] | qs[128]. Weight 64c + 32h + l = nibble h of qs[32c + l], sub-block 2c + h.
    N = blocks.shape[0]
    qs = blocks[:, 16:144].reshape(N, 4, 1, 32)
    q = ((qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F).astype(np.float32)  # (N, 4, 2, 32)
    scales, mins = _k4_scales_mins(blocks[:, 4:16])
    scale = _f16(blocks, 0) * scales  # (N, 8)
    offset = _f16(blocks, 2) * mins
    return (scale.reshape(N, 4, 2, 1) * q - offset.reshape(N, 4, 2, 1)).reshape(N, 256)


def _dequantize_q5_k(blocks):
    # d f16 | dmin f16 | scales[12] | qh[32] | qs[128]. Weight 64c + 32h + l = nibble h of qs[32c + l] plus 16 *
    # bit 2c + h of qh[l], sub-block 2c + h.
    N = blocks.shape[0]
    qs = blocks[:, 48:176].reshape(N, 4, 1, 32)
    low = (qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F  # (N, 4, 2, 32)
    qh = blocks[:, 16:48].reshape(N, 1, 1, 32)
    high = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)) & 1
    q = (low | (high << 4)).astype(np.float32)
    scales, mins = _k4_scales_mins(blocks[:, 4:16])
    scale = _f16(blocks, 0) * scales
    offset = _f16(blocks, 2) * mins
    return (scale.reshape(N, 4, 2, 1) * q - offset.reshape(N, 4, 2, 1)).reshape(N, 256)


def _dequantize_q6_k(blocks):
    # ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] int8 | d f16; w = d * scale * (q - 32).
    # Weight 128n + 32g + l: nibble g // 2 of ql[64n + 32(g % 2) + l], bits 2g.. of qh[32n + l]; scale (weight // 16).
    N = blocks.shape[0]
    ql = blocks[:, :128].reshape(N, 2, 1, 2, 32)  # (N, n, ., g % 2, l)
    low = (ql >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1, 1)) & 0x0F  # (N, n, g // 2, g % 2, l)
    qh = blocks[:, 128:192].reshape(N, 2, 1, 1, 32)
    high = (qh >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 2, 2, 1)) & 3
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).astype(np.float32).reshape(N, 16, 16)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32).reshape(N, 16, 1)
    d = _f16(blocks, 208).reshape(N, 1, 1)
    return ((d * scales) * q).reshape(N, 256)


def _dequantize_bf16(blocks):  # the top 16 bits of a float32: widening is a shift, exact
    return (np.ascontiguousarray(blocks).view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)


_DECODERS = {
    "Q8_0": _dequantize_q8_0, "Q4_0": _dequantize_q4_0, "Q4_1": _dequantize_q4_1, "Q5_0": _dequantize_q5_0,
    "Q5_1": _dequantize_q5_1, "Q2_K": _dequantize_q2_k, "Q3_K": _dequantize_q3_k, "Q4_K": _dequantize_q4_k,
    "Q5_K": _dequantize_q5_k, "Q6_K": _dequantize_q6_k, "BF16": _dequantize_bf16,
}
DEQUANTIZABLE = tuple(PLAIN_DTYPES) + tuple(_DECODERS)

# Decoding runs over this many weights at a time: the temporaries stay in cache and peak memory stays at the output.
_CHUNK_WEIGHTS = 1 << 16


def dequantize(raw: np.ndarray, type_name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """The tensor of `shape` (NumPy order) stored in the bytes `raw` as `type_name`, as float32.

    Plain types (F32, F16, F64, I8..I64) are reinterpreted; with dtype=None they keep their stored dtype (a view of
    `raw`, no copy). Block types are decoded a chunk of blocks at a time into one preallocated output.
    """
    if type_name not in TYPES:
        raise ValueError(f"unknown ggml type {type_name!r}; known: {', '.join(TYPES)}")
    shape = tuple(int(n) for n in shape)
    expected = storage_bytes(type_name, shape)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size != expected:
        raise ValueError(f"{type_name} tensor of shape {shape} needs {expected} bytes as a 1-D uint8 array, got "
                         f"{raw.dtype} of shape {raw.shape}")
    if type_name in PLAIN_DTYPES:
        values = raw.view(PLAIN_DTYPES[type_name]).reshape(shape)
        return values if dtype is None else values.astype(dtype)
    decode = _DECODERS.get(type_name)
    if decode is None:
        raise ValueError(f"dequantizing {type_name} is not implemented; supported: {', '.join(DEQUANTIZABLE)}")
    qtype = TYPES[type_name]
    blocks = raw.reshape(-1, qtype.block_bytes)  # (N, block_bytes)
    out = np.empty((blocks.shape[0], qtype.block_size), dtype=np.float32)  # (N, block_size)
    step = max(1, _CHUNK_WEIGHTS // qtype.block_size)
    for start in range(0, blocks.shape[0], step):
        out[start:start + step] = decode(blocks[start:start + step])
    out = out.reshape(shape)
    return out if dtype is None or np.dtype(dtype) == np.float32 else out.astype(dtype)


# --- encoding ------------------------------------------------------------------------------------------------------
# Each encoder takes (N, block_size) float32 and returns (N, block_bytes) uint8.

def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves round away from zero (NumPy's round goes to even). x + 0.5 then floor would be wrong for
    0.49999997, whose sum rounds up to 1.0 in float32; the fraction is exact, so compare it instead."""
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    return np.copysign(whole + ((magnitude - whole) >= 0.5), x)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    """(N, 1) float32 -> (N, 2) bytes of float16 (round to nearest even, as ggml's FP32_TO_FP16)."""
    return values.astype("<f2").view(np.uint8)


def _abs_max_signed(blocks: np.ndarray) -> np.ndarray:
    """Each block's weight of largest magnitude, sign kept (the first one on a tie, as ggml's loop), (N, 1)."""
    index = np.abs(blocks).argmax(axis=1)[:, None]
    return np.take_along_axis(blocks, index, axis=1)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, and 0 where d is 0 (an all-zero block encodes as zeros); inf for a subnormal d, as in C."""
    safe = np.where(d == 0, np.float32(1), d)
    with np.errstate(over="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / safe)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(N, 32) values 0..15 -> (N, 16) bytes: weight j in the low nibble of byte j, weight j + 16 in the high."""
    return (q[:, :16] & 0x0F) | (q[:, 16:] << 4)


def _pack_fifth_bits(q: np.ndarray) -> np.ndarray:
    """(N, 32) values 0..31 -> (N, 4) bytes: bit j of the little-endian uint32 is bit 4 of weight j."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _truncate_to_uint8(x: np.ndarray, top: int) -> np.ndarray:
    """C's (int8_t) cast (toward zero) of a non-negative float, capped at `top` as ggml's MIN(top, ...)."""
    return np.minimum(np.trunc(_finite_or_zero(x)), top).astype(np.uint8)


def _finite_or_zero(x: np.ndarray) -> np.ndarray:
    """subtle: a block whose scale is subnormal has 1/d = inf, so its codes come out inf or NaN. Converting those
    to an integer is undefined in C; x86's conversion gives 0x80000000, whose low byte is 0 -- what ggml's reference
    writes there, and the gguf package too. Say so explicitly instead of relying on NumPy's cast."""
    return np.where(np.isfinite(x), x, np.float32(0))


def _quantize_q8_0(blocks):
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    q = _finite_or_zero(_round_half_away(blocks * _inverse(d))).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _quantize_q4_0(blocks):
    # The weight of largest magnitude maps to -8 exactly: d = max / -8 (the sign flip uses the extra negative code).
    d = _abs_max_signed(blocks) / np.float32(-8)
    q = _truncate_to_uint8(blocks * _inverse(d) + np.float32(8.5), 15)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _quantize_q4_1(blocks):
    low = blocks.min(axis=1, keepdims=True)
    d = (blocks.max(axis=1, keepdims=True) - low) / np.float32(15)
    q = _truncate_to_uint8((blocks - low) * _inverse(d) + np.float32(0.5), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(low), _pack_nibbles(q)], axis=1)


def _quantize_q5_0(blocks):
    d = _abs_max_signed(blocks) / np.float32(-16)
    q = _truncate_to_uint8(blocks * _inverse(d) + np.float32(16.5), 31)
    return np.concatenate([_f16_bytes(d), _pack_fifth_bits(q), _pack_nibbles(q)], axis=1)


def _quantize_q5_1(blocks):
    low = blocks.min(axis=1, keepdims=True)
    d = (blocks.max(axis=1, keepdims=True) - low) / np.float32(31)
    q = _truncate_to_uint8((blocks - low) * _inverse(d) + np.float32(0.5), 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(low), _pack_fifth_bits(q), _pack_nibbles(q)], axis=1)


def _quantize_bf16(blocks):
    """float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN (as ggml's fp32_to_bf16)."""
    bits = np.ascontiguousarray(blocks).view(np.uint32)
    rounded = ((bits.astype(np.uint64) + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)
    return rounded.view(np.uint8)


# The k-quants. ggml's reference quantizers search each sub-block for the scale (and min) that minimise a weighted
# squared error (make_qx_quants / make_qkx2_quants); these take the plain fit instead -- the sub-block's range, or
# its largest magnitude -- and then quantize the sub-block scales against the super-block's float16 `d` (and
# `dmin`). Same format, readable by any GGUF reader; a little more error than llama.cpp's (docs/quantization.md).

def _round_clip(x: np.ndarray, low: int, high: int) -> np.ndarray:
    return np.clip(np.rint(_finite_or_zero(x)), low, high)


def _range_fit(sub: np.ndarray, levels: int, scale_bits: int):
    """Asymmetric sub-blocks (Q2_K, Q4_K, Q5_K): w ~ d * sc * q - dmin * m, q in 0..levels. The min is capped at 0
    (as ggml does) so the offset is never negative. -> (d, dmin) (N, 1) float16-rounded, sc, m (N, S) ints, q."""
    low = np.minimum(sub.min(axis=2), 0)  # (N, S)
    scale = (sub.max(axis=2) - low) / np.float32(levels)
    top = (1 << scale_bits) - 1
    d = _as_f16(scale.max(axis=1, keepdims=True) / np.float32(top))
    dmin = _as_f16(-low.min(axis=1, keepdims=True) / np.float32(top))
    sc = _round_clip(scale * _inverse(d), 0, top)
    m = _round_clip(-low * _inverse(dmin), 0, top)
    step = (d * sc)[:, :, None]
    q = _round_clip((sub + (dmin * m)[:, :, None]) * _inverse(step), 0, levels)
    return d, dmin, sc.astype(np.uint8), m.astype(np.uint8), q.astype(np.uint8)


def _signed_fit(sub: np.ndarray, most_negative: int, scale_bits: int):
    """Symmetric sub-blocks (Q3_K, Q6_K): w ~ d * sc * q with q in most_negative..-most_negative-1 and signed
    scales; the largest magnitude maps to `most_negative` exactly (the extra negative code, as in Q4_0).
    -> d (N, 1) float16-rounded, sc (N, S) ints, q (N, S, W) ints."""
    index = np.abs(sub).argmax(axis=2)[:, :, None]
    scale = np.take_along_axis(sub, index, axis=2)[:, :, 0] / np.float32(most_negative)  # (N, S)
    top = (1 << (scale_bits - 1)) - 1
    largest = np.take_along_axis(scale, np.abs(scale).argmax(axis=1)[:, None], axis=1)
    d = _as_f16(largest / np.float32(-(top + 1)))
    sc = _round_clip(scale * _inverse(d), -(top + 1), top)
    q = _round_clip(sub * _inverse((d * sc)[:, :, None]), most_negative, -most_negative - 1)
    return d, sc.astype(np.int8), q.astype(np.int8)


def _as_f16(x: np.ndarray) -> np.ndarray:
    """x rounded to float16 and back: the scale the decoder will see, so the codes are fitted to it."""
    return x.astype(np.float16).astype(np.float32)


def _pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Inverse of _k4_scales_mins: 8 6-bit scales and mins -> 12 bytes."""
    first = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    first_min = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    last = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return np.concatenate([first, first_min, last], axis=1)


def _pack_2bit_planes(q: np.ndarray) -> np.ndarray:
    """Q2_K / Q3_K low bits: weight 128n + 32j + 16k + l -> bits 2j.. of byte 32n + 16k + l. (N, 256) -> (N, 64)."""
    planes = q.reshape(-1, 2, 4, 2, 16) & 3  # (N, n, j, k, l)
    return np.bitwise_or.reduce(planes << _PLANE_SHIFTS, axis=2).reshape(-1, 64)


def _quantize_q2_k(blocks):
    d, dmin, sc, m, q = _range_fit(blocks.reshape(-1, 16, 16), 3, 4)
    return np.concatenate([sc | (m << 4), _pack_2bit_planes(q), _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def _quantize_q3_k(blocks):
    d, sc, q = _signed_fit(blocks.reshape(-1, 16, 16), -4, 6)
    stored = (q.reshape(-1, 256) + 4).astype(np.uint8)  # 0..7: two low bits, and the third bit set when q >= 0
    high = (stored >> 2).reshape(-1, 8, 2, 16)  # (N, 4n + j, k, l) -> bit 4n + j of hmask[16k + l]
    hmask = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8).reshape(1, 8, 1, 1), axis=1).reshape(-1, 32)
    scales = (sc.astype(np.int16) + 32).astype(np.uint8)  # (N, 16) 6-bit
    low, top = scales & 0x0F, scales >> 4
    packed = np.concatenate([low[:, :8] | (low[:, 8:] << 4),
                             top[:, 0:4] | (top[:, 4:8] << 2) | (top[:, 8:12] << 4) | (top[:, 12:16] << 6)], axis=1)
    return np.concatenate([hmask, _pack_2bit_planes(stored), packed, _f16_bytes(d)], axis=1)


def _quantize_q4_k(blocks):
    d, dmin, sc, m, q = _range_fit(blocks.reshape(-1, 8, 32), 15, 6)
    halves = q.reshape(-1, 4, 2, 32)  # (N, c, h, l): nibble h of qs[32c + l]
    qs = (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(sc, m), qs], axis=1)


def _quantize_q5_k(blocks):
    d, dmin, sc, m, q = _range_fit(blocks.reshape(-1, 8, 32), 31, 6)
    halves = q.reshape(-1, 4, 2, 32) & 0x0F
    qs = (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(-1, 128)
    high = (q >> 4).reshape(-1, 8, 32)  # (N, 2c + h, l) -> bit 2c + h of qh[l]
    qh = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(sc, m), qh, qs], axis=1)


def _quantize_q6_k(blocks):
    d, sc, q = _signed_fit(blocks.reshape(-1, 16, 16), -32, 8)
    stored = (q.reshape(-1, 2, 4, 32) + 32).astype(np.uint8)  # (N, n, g, l), 0..63
    low, high = stored & 0x0F, stored >> 4
    ql = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(-1, 128)  # nibble g // 2 of ql[64n + 32(g % 2) + l]
    qh = np.bitwise_or.reduce(high << (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1), axis=2).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(d)], axis=1)


_ENCODERS = {
    "Q8_0": _quantize_q8_0, "Q4_0": _quantize_q4_0, "Q4_1": _quantize_q4_1, "Q5_0": _quantize_q5_0,
    "Q5_1": _quantize_q5_1, "BF16": _quantize_bf16, "Q2_K": _quantize_q2_k, "Q3_K": _quantize_q3_k,
    "Q4_K": _quantize_q4_k, "Q5_K": _quantize_q5_k, "Q6_K": _quantize_q6_k,
}
QUANTIZABLE = ("F32", "F16") + tuple(_ENCODERS)


def quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    """float weights -> the bytes ggml stores for `type_name`, shaped (..., bytes per row) like the input's rows.

    The last axis must hold whole blocks. F32 and F16 are plain casts (float16 rounds to nearest even).
    """
    if type_name not in QUANTIZABLE:
        raise ValueError(f"quantizing to {type_name!r} is not implemented; supported: {', '.join(QUANTIZABLE)}")
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"quantize wants floating-point weights, got {x.dtype}")
    shape = x.shape if x.ndim else (1,)
    storage_bytes(type_name, shape)  # checks the row holds whole blocks
    if type_name in PLAIN_DTYPES:
        return np.ascontiguousarray(x, dtype=PLAIN_DTYPES[type_name]).view(np.uint8).reshape(*shape[:-1], -1)
    qtype = TYPES[type_name]
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, qtype.block_size)  # (N, block_size)
    out = np.empty((blocks.shape[0], qtype.block_bytes), dtype=np.uint8)
    step = max(1, _CHUNK_WEIGHTS // qtype.block_size)
    for start in range(0, blocks.shape[0], step):
        out[start:start + step] = _ENCODERS[type_name](blocks[start:start + step])
    return out.reshape(*shape[:-1], -1)
