"""ggml block quantization: every dequantizer equals the `gguf` package's (llama.cpp's own Python reference) on
hypothesis-drawn random blocks -- any bytes, so every bit pattern of every field is exercised -- and our quantizers
write the same bytes as its quantizers, where it has them."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import quants as reference
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scratch.formats import quants
from scratch.formats.quants import DEQUANTIZABLE, QUANTIZABLE, TYPES, dequantize, quantize, storage_bytes

BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "BF16")
ENCODED = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16")  # gguf.quants has quantizers for these


def test_type_table_equals_ggml():
    """Ids, weights per block and bytes per block of every type, as gguf's constants list them."""
    theirs = {t.name: (t.value, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType
              if t in gguf.GGML_QUANT_SIZES}
    for name, qtype in TYPES.items():
        assert theirs[name] == (qtype.type_id, qtype.block_size, qtype.block_bytes), name
    assert set(BLOCK_TYPES) | {"F32", "F16"} <= set(DEQUANTIZABLE)
    assert TYPES["Q4_0"].bits_per_weight == 4.5 and TYPES["Q4_K"].bits_per_weight == 4.5
    assert TYPES["Q6_K"].bits_per_weight == 6.5625


@st.composite
def random_blocks(draw, type_name: str):
    """1-40 blocks of arbitrary bytes: scales may be any float16, NaN and infinity included."""
    qtype = TYPES[type_name]
    n_blocks = draw(st.integers(1, 40))
    raw = draw(st.binary(min_size=n_blocks * qtype.block_bytes, max_size=n_blocks * qtype.block_bytes))
    return np.frombuffer(raw, dtype=np.uint8).reshape(n_blocks, qtype.block_bytes)


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
@given(data=st.data())
def test_dequantize_equals_gguf_on_random_blocks(type_name, data):
    blocks = data.draw(random_blocks(type_name))
    qtype = TYPES[type_name]
    with np.errstate(all="ignore"):  # random scales include NaN and inf; both sides must agree on them too
        ours = dequantize(blocks.reshape(-1), type_name, (blocks.shape[0], qtype.block_size))
        theirs = reference.dequantize(blocks, gguf.GGMLQuantizationType[type_name])
    assert ours.dtype == np.float32
    assert ours.shape == (blocks.shape[0], qtype.block_size)
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))  # bit for bit, NaN where NaN


@pytest.mark.parametrize("type_name", ["Q4_1", "Q6_K"])
def test_dequantize_in_chunks_equals_one_pass(type_name, monkeypatch):
    """Decoding runs a chunk of blocks at a time; chunk boundaries change nothing."""
    qtype = TYPES[type_name]
    raw = np.random.default_rng(0).integers(0, 256, 7 * qtype.block_bytes, dtype=np.uint8)
    raw.reshape(7, -1)[:, :2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)  # finite scales somewhere
    whole = dequantize(raw, type_name, (7 * qtype.block_size,))
    monkeypatch.setattr(quants, "_CHUNK_WEIGHTS", 2 * qtype.block_size)  # 2 blocks per chunk: 4 chunks
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(dequantize(raw, type_name, (7 * qtype.block_size,)), whole)


finite_weights = arrays(np.float32, st.tuples(st.integers(1, 6), st.sampled_from([32, 64, 256])),
                        elements=st.floats(-1e4, 1e4, width=32))
# Blocks that hit the edge cases: all zero, all equal, exact halves after scaling, one large weight among tiny ones.
edge_blocks = st.sampled_from([
    np.zeros((1, 32), np.float32), np.full((1, 32), -3.0, np.float32), np.full((1, 32), 7.0, np.float32),
    (np.arange(32, dtype=np.float32) - 16) / 2, np.r_[np.float32(1000), np.full(31, 1e-3, np.float32)][None],
    np.linspace(-1, 1, 32, dtype=np.float32)[None] * np.float32(127),
]).map(lambda a: np.asarray(a, np.float32).reshape(1, 32))


@pytest.mark.parametrize("type_name", ENCODED)
@given(weights=st.one_of(finite_weights, edge_blocks))
def test_quantize_equals_gguf(type_name, weights):
    ours = quantize(weights, type_name)
    theirs = reference.quantize(weights, gguf.GGMLQuantizationType[type_name])
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
@given(weights=finite_weights)
def test_round_trip_error_is_within_half_a_step(type_name, weights):
    """Each weight comes back within one quantization step of its block (half a step from rounding, plus the
    float16 rounding of the scale and offset; a scale below float16's range, 2^-24, rounds to 0 and costs up to
    `levels` such units): a property of the format, independent of any reference."""
    blocks = weights.reshape(-1, 32).astype(np.float64)
    back = dequantize(quantize(weights, type_name).reshape(-1), type_name, weights.shape).reshape(-1, 32)
    levels = {"Q8_0": 254, "Q4_0": 15, "Q4_1": 15, "Q5_0": 31, "Q5_1": 31}[type_name]
    span = blocks.max(axis=1) - blocks.min(axis=1) if type_name.endswith("_1") else 2 * np.abs(blocks).max(axis=1)
    step = span / levels
    error = np.abs(back - blocks).max(axis=1)
    assert np.all(error <= 1.01 * step + 1e-3 * np.abs(blocks).max(axis=1) + levels * 2.0 ** -24)


def test_plain_types_and_dtypes():
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    raw16 = quantize(x, "F16")
    assert raw16.shape == (3, 16) and raw16.dtype == np.uint8
    kept = dequantize(raw16.reshape(-1), "F16", (3, 8), dtype=None)
    assert kept.dtype == np.float16
    np.testing.assert_array_equal(kept, x.astype(np.float16))
    np.testing.assert_array_equal(dequantize(quantize(x, "F32").reshape(-1), "F32", (3, 8)), x)
    assert dequantize(quantize(x, "F32").reshape(-1), "F32", (3, 8), dtype="float64").dtype == np.float64
    bf16 = dequantize(quantize(x, "BF16").reshape(-1), "BF16", (3, 8))
    assert np.abs(bf16 - x).max() <= np.abs(x).max() * 2 ** -8


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="whole blocks of 32 weights"):
        storage_bytes("Q4_0", (2, 40))
    with pytest.raises(ValueError, match="needs 36 bytes"):
        dequantize(np.zeros(35, np.uint8), "Q4_0", (2, 32))
    with pytest.raises(ValueError, match="unknown ggml type 'Q9_9'"):
        dequantize(np.zeros(4, np.uint8), "Q9_9", (1,))
    with pytest.raises(ValueError, match="dequantizing IQ2_XXS is not implemented"):
        dequantize(np.zeros(66, np.uint8), "IQ2_XXS", (256,))
    with pytest.raises(ValueError, match="quantizing to 'IQ4_NL' is not implemented"):
        quantize(np.zeros((1, 32), np.float32), "IQ4_NL")
    with pytest.raises(ValueError, match="floating-point"):
        quantize(np.zeros((1, 32), np.int32), "Q8_0")


# Worst-case error of our k-quant fit, as a fraction of the super-block's largest magnitude: half a step, plus the
# clipping that rounding a sub-block scale down to its 4/6/8-bit code causes, plus (symmetric types) the one step
# lost by a weight of the opposite sign to the largest (it maps to +2^(b-1), one past the top code).
K_QUANT_ERROR = {"Q2_K": 0.5, "Q3_K": 0.35, "Q4_K": 0.15, "Q5_K": 0.08, "Q6_K": 0.05}


@pytest.mark.parametrize("type_name", K_QUANT_ERROR)
@given(weights=arrays(np.float32, st.tuples(st.integers(1, 3), st.just(256)), elements=st.floats(-100, 100, width=32)))
def test_k_quantizers_round_trip_and_read_as_gguf_reads_them(type_name, weights):
    """No reference quantizer to compare with (gguf has none for k-quants): the blocks decode the same in gguf as
    in ours, and every weight comes back within the fit's error bound (plus float16's absolute floor for tiny
    scales)."""
    raw = quantize(weights, type_name)
    assert raw.shape == (weights.shape[0], TYPES[type_name].block_bytes)
    back = dequantize(raw.reshape(-1), type_name, weights.shape)
    np.testing.assert_array_equal(back, reference.dequantize(raw, gguf.GGMLQuantizationType[type_name]))
    largest = np.abs(weights).max(axis=1, keepdims=True)
    assert np.all(np.abs(back - weights) <= K_QUANT_ERROR[type_name] * largest + 1e-3)
