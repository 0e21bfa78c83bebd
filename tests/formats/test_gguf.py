"""The GGUF container: files written by the `gguf` package (llama.cpp's own GGUFWriter) read as its GGUFReader reads
them -- metadata of every type, tensors of every type, offsets -- our writer's files read back by GGUFReader, and a
catalogue of malformed files that each raise GGUFError naming the field (hand-built byte by byte below)."""
from __future__ import annotations

import os
import struct

import gguf
import numpy as np
import pytest
from gguf import quants as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch.formats import GGUFError, is_gguf, read_gguf, write_gguf
from scratch.formats.quants import TYPES

# (GGUFWriter method, value, GGUF type name we expect back)
SCALARS = [
    ("add_uint8", 200, "UINT8"), ("add_int8", -100, "INT8"), ("add_uint16", 60000, "UINT16"),
    ("add_int16", -30000, "INT16"), ("add_uint32", 4_000_000_000, "UINT32"), ("add_int32", -2_000_000_000, "INT32"),
    ("add_float32", 0.25, "FLOAT32"), ("add_bool", True, "BOOL"), ("add_string", "héllo ✓", "STRING"),
    ("add_uint64", 2 ** 63 + 5, "UINT64"), ("add_int64", -(2 ** 62), "INT64"), ("add_float64", 1 / 3, "FLOAT64"),
]


def _gguf_writer_file(path, tensors: dict[str, tuple[str, np.ndarray]], alignment: int | None = None):
    """A file written by the gguf package: every metadata type, nested and empty arrays, and `tensors`
    (type name -> float data, quantized by gguf itself, or raw uint8 blocks for the k-quants)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for method, value, _ in SCALARS:
        getattr(writer, method)(f"test.{method}", value)
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_array("test.floats", [0.5, 1.5])
    writer.add_array("test.strings", ["a", "", "ü"])
    writer.add_array("test.nested", [[1, 2], [3]])
    for name, (type_name, data) in tensors.items():
        if type_name == "F32":
            writer.add_tensor(name, data.astype(np.float32))
        elif type_name == "F16":
            writer.add_tensor(name, data.astype(np.float16))
        elif data.dtype == np.uint8:
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[type_name])
        else:
            qtype = gguf.GGMLQuantizationType[type_name]
            writer.add_tensor(name, reference.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _k_quant_blocks(type_name: str, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """Random k-quant blocks (rows, bytes per row) with finite float16 scales (the rest random bits)."""
    qtype = TYPES[type_name]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows * blocks_per_row, qtype.block_bytes), dtype=np.uint8)
    scale_at = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[type_name]
    for start in scale_at:
        scales = rng.uniform(-0.1, 0.1, rows * blocks_per_row).astype(np.float16)
        raw[:, start:start + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def _all_types_tensors() -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    tensors = {
        "vector.f32": ("F32", rng.standard_normal(7)),
        "matrix.f16": ("F16", rng.standard_normal((3, 5))),
        "cube.f32": ("F32", rng.standard_normal((2, 3, 4))),
        "four.f32": ("F32", rng.standard_normal((2, 1, 3, 2))),
        "bf16": ("BF16", rng.standard_normal((2, 8)).astype(np.float32)),
    }
    for type_name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        tensors[f"m.{type_name}"] = (type_name, rng.standard_normal((3, 64)).astype(np.float32))
    for seed, type_name in enumerate(("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")):
        tensors[f"m.{type_name}"] = (type_name, _k_quant_blocks(type_name, 2, 2, seed))
    return tensors


@pytest.fixture(scope="module")
def writer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "all.gguf"
    _gguf_writer_file(path, _all_types_tensors())
    return path


def test_metadata_of_every_type_equals_gguf_reader(writer_file):
    ours = read_gguf(writer_file)
    theirs = gguf.GGUFReader(writer_file)
    assert ours.version == 3 and ours.alignment == 32
    for method, value, type_name in SCALARS:
        key = f"test.{method}"
        assert ours.metadata_types[key] == type_name
        if type_name == "FLOAT32":
            assert ours.metadata[key] == float(np.float32(value))
        else:
            assert ours.metadata[key] == value and type(ours.metadata[key]) is type(value)
        assert ours.metadata[key] == theirs.fields[key].contents()
    assert ours.metadata["test.ints"] == [1, -2, 3] and ours.metadata_types["test.ints"] == "ARRAY[INT32]"
    assert ours.metadata["test.floats"] == [0.5, 1.5] and ours.metadata_types["test.floats"] == "ARRAY[FLOAT32]"
    assert ours.metadata["test.strings"] == ["a", "", "ü"]
    assert ours.metadata["test.nested"] == [[1, 2], [3]] and ours.metadata_types["test.nested"] == "ARRAY[ARRAY]"
    assert ours.metadata["general.architecture"] == "llama"
    # every key GGUFReader sees (less its three header pseudo-fields), in file order
    assert list(ours.metadata) == [k for k in theirs.fields if not k.startswith("GGUF.")]


def test_tensors_of_every_type_equal_gguf_reader(writer_file):
    ours = read_gguf(writer_file)
    theirs = {t.name: t for t in gguf.GGUFReader(writer_file).tensors}
    assert list(ours.tensors) == list(theirs)
    assert ours.data_offset == gguf.GGUFReader(writer_file).data_offset
    for name, tensor in ours.tensors.items():
        ref = theirs[name]
        assert tensor.type_name == ref.tensor_type.name
        assert tensor.shape == tuple(int(n) for n in reversed(ref.shape))  # GGUF lists ne[] fastest first
        assert tensor.offset == ref.data_offset and tensor.nbytes == ref.n_bytes
        np.testing.assert_array_equal(tensor.raw(), np.asarray(ref.data).view(np.uint8).reshape(-1))
        expected = reference.dequantize(np.asarray(ref.data), ref.tensor_type).reshape(tensor.shape)
        values = tensor.to_numpy()
        assert values.dtype == np.float32 and values.shape == tensor.shape
        np.testing.assert_array_equal(values, expected)


def test_plain_tensors_keep_their_dtype_as_views(writer_file):
    ours = read_gguf(writer_file)
    f16 = ours.tensors["matrix.f16"].to_numpy(dtype=None)
    assert f16.dtype == np.float16 and not f16.flags.writeable
    assert ours.tensors["vector.f32"].to_numpy(dtype=None).dtype == np.float32
    assert ours.tensors["m.Q4_0"].to_numpy(dtype=None).dtype == np.float32  # quantized: always dequantized


def test_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    _gguf_writer_file(path, {"a": ("F32", np.ones(3)), "b": ("F32", np.arange(5.0))}, alignment=256)
    ours = read_gguf(path)
    assert ours.alignment == 256 and ours.data_offset % 256 == 0
    assert all(t.offset % 256 == 0 for t in ours.tensors.values())
    np.testing.assert_array_equal(ours.tensors["b"].to_numpy(), np.arange(5.0, dtype=np.float32))


def test_version_2_is_read_and_1_refused(tmp_path, writer_file):
    data = bytearray(writer_file.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    (tmp_path / "v2.gguf").write_bytes(data)
    v2 = read_gguf(tmp_path / "v2.gguf")
    assert v2.version == 2 and v2.metadata == read_gguf(writer_file).metadata
    data[4:8] = struct.pack("<I", 1)
    (tmp_path / "v1.gguf").write_bytes(data)
    with pytest.raises(GGUFError, match="version 1 .* not supported"):
        read_gguf(tmp_path / "v1.gguf")
    data[4:8] = struct.pack(">I", 3)
    (tmp_path / "be.gguf").write_bytes(data)
    with pytest.raises(GGUFError, match="unsupported GGUF version 50331648 \\(a big-endian file\\?\\)"):
        read_gguf(tmp_path / "be.gguf")


def test_our_writer_is_read_by_gguf_reader(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    metadata = {"general.architecture": "llama", "sizes.u32": np.uint32(7), "eps.f32": np.float32(1e-5),
                "plain.int": 3, "big.int": 2 ** 40, "plain.float": 0.5, "flag": False, "name": "ü",
                "ids": np.array([1, 2], dtype=np.int32), "words": ["x", "yz"], "nested": [[1], [2, 3]],
                "scores": [0.0, -1.5], "empty": []}
    tensors = {"x.f32": ("F32", x), "x.f16": ("F16", x), "x.q8": ("Q8_0", x), "x.q4": ("Q4_0", x),
               "x.q41": ("Q4_1", x), "x.bf16": ("BF16", x), "v": ("F32", x[0])}
    path = tmp_path / "ours.gguf"
    write_gguf(path, metadata, tensors)
    theirs = gguf.GGUFReader(path)
    types = {k: [t.name for t in f.types] for k, f in theirs.fields.items()}
    assert types["sizes.u32"] == ["UINT32"] and types["eps.f32"] == ["FLOAT32"]
    assert types["plain.int"] == ["INT32"] and types["big.int"] == ["INT64"] and types["flag"] == ["BOOL"]
    assert types["ids"] == ["ARRAY", "INT32"] and types["words"] == ["ARRAY", "STRING"]
    assert types["scores"] == ["ARRAY", "FLOAT32"] and types["nested"][:2] == ["ARRAY", "ARRAY"]
    assert theirs.fields["name"].contents() == "ü" and theirs.fields["words"].contents() == ["x", "yz"]
    for tensor in theirs.tensors:
        type_name, data = tensors[tensor.name]
        assert tensor.tensor_type.name == type_name
        expected = reference.dequantize(reference.quantize(data, gguf.GGMLQuantizationType[type_name]),
                                        gguf.GGMLQuantizationType[type_name])
        got = reference.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(data.shape)
        np.testing.assert_array_equal(got, expected)
    # and back through our reader: the same values, raw blocks rewritten unchanged
    assert theirs.fields["empty"].contents() == []
    ours = read_gguf(path)
    assert ours.metadata["nested"] == [[1], [2, 3]] and ours.metadata["big.int"] == 2 ** 40
    assert ours.metadata["empty"] == []
    copy = tmp_path / "copy.gguf"
    write_gguf(copy, ours.metadata, {n: (t.type_name, t.raw().reshape(*t.shape[:-1], -1) if t.type_name not in
                                         ("F32", "F16") else t.to_numpy(dtype=None)) for n, t in ours.tensors.items()})
    again = read_gguf(copy)
    for name, tensor in ours.tensors.items():
        np.testing.assert_array_equal(again.tensors[name].raw(), tensor.raw())


def test_writer_refuses_bad_input_and_writes_atomically(tmp_path):
    path = tmp_path / "keep.gguf"
    write_gguf(path, {"k": 1}, {"t": ("F32", np.ones(2))})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="tensor 'bad': unknown ggml type 'Q9'"):
        write_gguf(path, {}, {"bad": ("Q9", np.ones(32))})
    with pytest.raises(ValueError, match="tensor 'row': a Q4_0 row holds whole blocks of 32"):
        write_gguf(path, {}, {"row": ("Q4_0", np.ones((2, 20)))})
    with pytest.raises(ValueError, match="metadata 'huge': 1180591620717411303424 does not fit GGUF UINT64"):
        write_gguf(path, {"huge": 2 ** 70}, {})
    with pytest.raises(ValueError, match="metadata values are int, float, bool, str, NumPy scalars or lists"):
        write_gguf(path, {"obj": object()}, {})
    with pytest.raises(ValueError, match="must share one type"):
        write_gguf(path, {"mixed": [1, "a"]}, {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.gguf"]  # no temporary left behind


def test_is_gguf_never_raises(tmp_path, writer_file):
    (tmp_path / "short").write_bytes(b"GG")
    (tmp_path / "other").write_bytes(b"{}")
    assert is_gguf(writer_file) and is_gguf(str(writer_file))
    assert not is_gguf(tmp_path / "short") and not is_gguf(tmp_path / "other")
    assert not is_gguf(tmp_path) and not is_gguf(tmp_path / "missing") and not is_gguf(None)


# --- malformed files, built byte by byte ---------------------------------------------------------------------------

def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key, type_id: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", type_id) + payload


def _info(name: str, ne: tuple[int, ...], type_id: int = 0, offset: int = 0) -> bytes:
    return _str(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)


def _file(kvs=(), infos=(), data: bytes = b"", version=3, tensor_count=None, kv_count=None, align=32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if tensor_count is None else tensor_count,
                                 len(kvs) if kv_count is None else kv_count)
    head += b"".join(kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % align) + data


GOOD = _file([_kv("general.architecture", 8, _str("llama"))], [_info("t", (4,), 0, 0)], np.arange(4.0, dtype="<f4")
             .tobytes())

MALFORMED = {
    "empty file": (b"", "not a GGUF file"),
    "bad magic": (b"GGML" + GOOD[4:], "not a GGUF file \\(magic b'GGML'"),
    "truncated version": (b"GGUF\x03\x00", "truncated file: version needs 4 bytes at offset 4"),
    "truncated tensor count": (GOOD[:12], "tensor count needs 8 bytes"),
    "truncated key": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _str("general.architecture")[:15],
                      "metadata key #0 length 20 at offset 24 runs past the end of the file \\(7 bytes left\\)"),
    "truncated string": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _str("k") + struct.pack("<IQ", 8, 5) + b"ab",
                         "metadata 'k' length 5 at offset 37 runs past the end"),
    "truncated number": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _str("k") + struct.pack("<I", 10) + b"ab" * 2,
                         "truncated file: metadata 'k' needs 8 bytes at offset 37, only 4 are left"),
    "truncated tensor info": (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _str("t") + struct.pack("<IQI", 1, 4, 0),
                              "truncated file: tensor 't' offset needs 8 bytes"),
    "absurd tensor count": (_file(tensor_count=2 ** 62), "tensor count 4611686018427387904 at offset 8 is impossible"),
    "absurd kv count": (_file(kv_count=2 ** 40), "metadata key/value count 1099511627776 .* is impossible"),
    "absurd key length": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2 ** 60) + b"\0" * 16,
                          "metadata key #0 length 1152921504606846976 at offset 24 runs past the end"),
    "absurd string length": (_file([_str("k") + struct.pack("<IQ", 8, 2 ** 50) + b"x" * 8]),
                             "metadata 'k' length 1125899906842624 .* runs past the end"),
    "absurd array length": (_file([_kv("k", 9, struct.pack("<IQ", 6, 2 ** 58))]),
                            "metadata 'k' array length 288230376151711744 .* is impossible"),
    "absurd string array": (_file([_kv("k", 9, struct.pack("<IQ", 8, 10 ** 9))]),
                            "metadata 'k' array length 1000000000 .* at least 8 bytes"),
    "string array element not utf-8": (_file([_kv("k", 9, struct.pack("<IQ", 8, 2) + _str("ok") + _str(b"\xff"))]),
                                       "metadata 'k'\\[1\\] at offset 59 is not UTF-8"),
    "string array element too long": (_file([_kv("k", 9, struct.pack("<IQ", 8, 2) + _str("ok") +
                                                  struct.pack("<Q", 999) + b"x" * 9)]),
                                      "metadata 'k'\\[1\\] length 999 at offset 59 runs past the end"),
    "string array truncated": (_file([_kv("k", 9, struct.pack("<IQ", 8, 3) + _str("ok") + _str("x") + b"abcde")],
                                     align=1), "truncated file: metadata 'k'\\[2\\] length needs 8 bytes at offset 68"),
    "unknown value type": (_file([_kv("k", 99, b"\0" * 8)]), "metadata 'k' has unknown value type 99"),
    "unknown array type": (_file([_kv("k", 9, struct.pack("<IQ", 42, 1))]), "unknown array element type 42"),
    "key not utf-8": (_file([_kv(b"\xff\xfe", 4, b"\0" * 4)]), "metadata key #0 at offset 24 is not UTF-8"),
    "duplicate key": (_file([_kv("k", 4, b"\0" * 4), _kv("k", 4, b"\0" * 4)]), "metadata key 'k' appears twice"),
    "bad alignment": (_file([_kv("general.alignment", 4, struct.pack("<I", 24))]),
                      "general.alignment must be a positive power of two, got 24"),
    "too many dims": (_file([], [_info("t", (1, 1, 1, 1, 1))]), "tensor 't' n_dims 5 exceeds ggml's maximum of 4"),
    "unknown ggml type": (_file([], [_info("t", (4,), 99)], b"\0" * 32), "tensor 't' has unknown ggml type 99"),
    "offset past the end": (_file([], [_info("t", (4,), 0, 64)], b"\0" * 32),
                            "tensor 't' data \\(offset 64, 16 bytes of F32 \\(4,\\)\\) runs past the end"),
    "data past the end": (_file([], [_info("t", (1000,), 0, 0)], b"\0" * 32), "tensor 't' data .* runs past the end"),
    "misaligned offset": (_file([], [_info("t", (4,), 0, 4)], b"\0" * 64),
                          "tensor 't' offset 4 is not a multiple of the alignment 32"),
    "row not whole blocks": (_file([], [_info("t", (33,), 2, 0)], b"\0" * 64),
                             "tensor 't' shape \\(33,\\): a Q4_0 row holds whole blocks of 32"),
    "duplicate tensor": (_file([], [_info("t", (4,)), _info("t", (4,), 0, 32)], b"\0" * 64),
                         "tensor 't' appears twice"),
    "overlapping tensors": (_file([], [_info("a", (16,)), _info("b", (4,), 0, 32)], b"\0" * 64),
                            "tensors 'a' and 'b' overlap"),
    "nesting bomb": (_file([_kv("k", 9, struct.pack("<IQ", 9, 1) * 12 + struct.pack("<IQ", 4, 0))]),
                     "arrays nested more than 8 deep"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_raises_naming_the_field(tmp_path, case):
    data, message = MALFORMED[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message) as info:
        read_gguf(path)
    assert str(path) in str(info.value)  # the file is named too
    assert isinstance(info.value, ValueError)


def test_the_catalogue_starts_from_a_good_file(tmp_path):
    path = tmp_path / "good.gguf"
    path.write_bytes(GOOD)
    np.testing.assert_array_equal(read_gguf(path).tensors["t"].to_numpy(), np.arange(4.0, dtype=np.float32))


def test_unsupported_type_fails_only_when_read(tmp_path):
    """A type we can lay out but not decode (IQ2_XXS) parses; asking for its values names the tensor."""
    path = tmp_path / "iq.gguf"
    path.write_bytes(_file([], [_info("t", (256,), 16, 0)], b"\0" * 96))
    tensor = read_gguf(path).tensors["t"]
    assert tensor.type_name == "IQ2_XXS" and tensor.nbytes == 66
    with pytest.raises(GGUFError, match="tensor 't': dequantizing IQ2_XXS is not implemented"):
        tensor.to_numpy()


@settings(max_examples=150)
@given(cut=st.integers(0, len(GOOD) - 1), position=st.integers(0, len(GOOD) - 1), byte=st.integers(0, 255))
def test_truncated_or_corrupted_files_raise_only_gguf_error(tmp_path_factory, cut, position, byte):
    """Any prefix of a good file, and any one-byte corruption of it, either reads or raises GGUFError: never an
    IndexError, struct.error, MemoryError or a huge allocation."""
    folder = tmp_path_factory.mktemp("fuzz")
    truncated = folder / "cut.gguf"
    truncated.write_bytes(GOOD[:cut])
    if cut < 4 + 4 + 8 + 8 + 8 + 24 + 1:  # no file shorter than its header can be valid
        with pytest.raises(GGUFError):
            read_gguf(truncated)
    corrupted = bytearray(GOOD)
    corrupted[position] = byte
    (folder / "bit.gguf").write_bytes(bytes(corrupted))
    for path in (truncated, folder / "bit.gguf"):
        try:
            read_gguf(path)
        except GGUFError:
            pass
    os.remove(truncated)
