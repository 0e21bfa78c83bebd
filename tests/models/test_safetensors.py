"""safetensors from scratch, checked against the `safetensors` package: files we write load there and vice versa
(hypothesis over dtypes and shapes), BF16 bit-exact against torch, sharded folders, and every malformed-file error."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratch.models.safetensors import (
    SafetensorsError,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    load_file,
    load_folder,
    load_tensor,
    read_header,
    save_file,
    save_folder,
)

NUMPY_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8",
                "uint64", "uint32", "uint16", "uint8", "bool"]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)  # a 0-d comparison gives a NumPy scalar, not an array
    if np.dtype(dtype).kind == "f":
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True))


def write_raw(path, header: bytes | dict, buffer: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + buffer)
    return path


tensor_dicts = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
    .filter(lambda n: n != "__metadata__"),
    st.tuples(st.sampled_from(NUMPY_DTYPES), st.lists(st.integers(0, 5), max_size=4).map(tuple)),
    max_size=5,
)


# --- interop with the reference package ----------------------------------------------------------------------------

@settings(deadline=None)  # example count from the profile (tests/conftest.py)
@given(spec=tensor_dicts, seed=st.integers(0, 2**16))
def test_our_files_load_in_theirs_and_theirs_in_ours(tmp_path_factory, spec, seed):
    folder = tmp_path_factory.mktemp("st")
    tensors = {name: sample(dtype, shape, seed) for name, (dtype, shape) in spec.items()}
    save_file(tensors, folder / "ours.safetensors", metadata={"made by": "scratch"})
    theirs = safetensors.numpy.load_file(folder / "ours.safetensors")
    assert theirs.keys() == tensors.keys()
    for name, array in tensors.items():
        assert theirs[name].dtype == array.dtype and theirs[name].shape == array.shape
        np.testing.assert_array_equal(theirs[name], array)

    safetensors.numpy.save_file(tensors, str(folder / "theirs.safetensors"))
    ours = load_file(folder / "theirs.safetensors")
    assert ours.keys() == tensors.keys()
    for name, array in tensors.items():
        assert ours[name].dtype == array.dtype and ours[name].shape == array.shape
        np.testing.assert_array_equal(ours[name], array)


def test_metadata_is_written_and_read(tmp_path):
    path = save_file({"w": np.ones(3, np.float32)}, tmp_path / "m.safetensors", metadata={"format": "pt", "k": "v"})
    assert read_header(path)["__metadata__"] == {"format": "pt", "k": "v"}
    with safetensors.safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}
    assert read_header(path)["w"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}


def test_layout_header_padded_and_tensors_aligned(tmp_path):
    tensors = {"a_byte": np.arange(3, dtype=np.uint8), "b_half": np.ones(3, np.float16),
               "c_double": np.ones(5, np.float64), "scalar": np.float32(2.5)}
    path = save_file(tensors, tmp_path / "x.safetensors")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0 and data[8 + n - 1:8 + n] in (b" ", b"}")
    header = read_header(path)
    for name, array in tensors.items():
        assert header[name]["data_offsets"][0] % np.asarray(array).itemsize == 0
    loaded = load_file(path)
    assert loaded["scalar"].shape == () and loaded["scalar"] == np.float32(2.5)


def test_non_native_byte_order_and_non_contiguous_input(tmp_path):
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    path = save_file({"be": big_endian, "t": transposed}, tmp_path / "x.safetensors")
    theirs = safetensors.numpy.load_file(path)
    np.testing.assert_array_equal(theirs["be"], big_endian)
    np.testing.assert_array_equal(theirs["t"], transposed)


def test_loaded_arrays_are_private_copies_on_write(tmp_path):
    path = save_file({"w": np.zeros(4, np.float32)}, tmp_path / "x.safetensors")
    w = load_file(path)["w"]
    assert type(w) is np.ndarray  # a plain array (memory-mapped underneath), not an np.memmap
    w[0] = 7.0  # allowed, and must not reach the file
    assert load_file(path)["w"][0] == 0.0


# --- BF16 ----------------------------------------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, 1.0, -2.5, 1e-40, -1e-45, 3.4e38, float("inf"), float("-inf"), 1.00390625, 1.01171875,
           65504.0, 1e-8]


def test_bf16_from_torch_is_bit_exact(tmp_path):
    values = torch.cat([torch.tensor(SPECIAL), torch.randn(1000) * 100, torch.randn(1000) * 1e-30])
    theirs = {"x": values.to(torch.bfloat16).reshape(61, 33), "nan": torch.tensor([float("nan")] * 2).bfloat16()}
    safetensors.torch.save_file(theirs, tmp_path / "bf16.safetensors")
    assert read_header(tmp_path / "bf16.safetensors")["x"]["dtype"] == "BF16"
    ours = load_file(tmp_path / "bf16.safetensors")
    assert ours["x"].dtype == np.float32 and ours["x"].shape == (61, 33)
    expected = theirs["x"].float().numpy()
    np.testing.assert_array_equal(ours["x"].view(np.uint32), expected.view(np.uint32))  # bits, so -0.0 counts
    assert np.isnan(ours["nan"]).all()


def test_bf16_writing_rounds_like_torch(tmp_path):
    rng = np.random.default_rng(1)
    # Random bit patterns cover ties, carries into the exponent and overflow to infinity.
    bits = rng.integers(0, 2**32, size=4000, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([np.array(SPECIAL, np.float32), bits.view(np.float32)])
    x = x[~np.isnan(x)]
    path = save_file({"x": x, "ids": np.arange(3, dtype=np.int64)}, tmp_path / "w.safetensors", bf16=True)
    theirs = safetensors.torch.load_file(path)
    assert theirs["x"].dtype == torch.bfloat16 and theirs["ids"].dtype == torch.int64
    expected = torch.from_numpy(x).to(torch.bfloat16)
    assert torch.equal(theirs["x"].view(torch.int16), expected.view(torch.int16))
    # And back: widening what we wrote gives torch's float32 of its bfloat16.
    np.testing.assert_array_equal(load_file(path)["x"].view(np.uint32), expected.float().numpy().view(np.uint32))


def test_bf16_helpers_nan_and_round_trip():
    nan_bits = float32_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bf16_bits_to_float32(nan_bits)).all()
    every = np.arange(2**16, dtype=np.uint16)
    widened = bf16_bits_to_float32(every)
    finite = ~np.isnan(widened)
    np.testing.assert_array_equal(float32_to_bf16_bits(widened[finite]), every[finite])  # exact values stay put


# --- dtype conversion and single tensors ---------------------------------------------------------------------------

def test_dtype_converts_floating_tensors_only(tmp_path):
    path = save_file({"h": np.array([1.5, -2.0], np.float16), "d": np.array([0.1]), "i": np.arange(3)},
                     tmp_path / "x.safetensors")
    loaded = load_file(path, dtype="float32")
    assert loaded["h"].dtype == np.float32 and loaded["d"].dtype == np.float32
    assert loaded["i"].dtype == np.int64
    np.testing.assert_array_equal(loaded["h"], [1.5, -2.0])
    assert load_tensor(path, "h", dtype="float32").dtype == np.float32
    with pytest.raises(ValueError, match="floating dtype"):
        load_file(path, dtype="int32")


def test_load_tensor_reads_one_and_names_a_missing_one(tmp_path):
    path = save_file({"a": np.arange(4, dtype=np.int32), "b": np.ones((2, 2), np.float32)}, tmp_path / "x.st")
    np.testing.assert_array_equal(load_tensor(path, "b"), np.ones((2, 2), np.float32))
    with pytest.raises(KeyError, match=r"tensor 'c' is not in .*x.st \(it holds 2: a, b\)"):
        load_tensor(path, "c")
    with pytest.raises(KeyError, match="__metadata__"):
        load_tensor(save_file({"a": np.ones(1)}, tmp_path / "m.st", metadata={"k": "v"}), "__metadata__")


# --- folders -------------------------------------------------------------------------------------------------------

def model_tensors() -> dict[str, np.ndarray]:
    return {f"layers.{i}.weight": sample("float32", (8, 4), i) for i in range(5)} | {"ids": np.arange(10)}


def test_single_file_folder(tmp_path):
    tensors = model_tensors()
    assert save_folder(tensors, tmp_path).name == "model.safetensors"
    loaded = load_folder(tmp_path)
    assert loaded.keys() == tensors.keys()
    for name in tensors:
        np.testing.assert_array_equal(loaded[name], tensors[name])


def test_sharded_folder(tmp_path):
    tensors = model_tensors()
    index_path = save_folder(tensors, tmp_path, max_shard_bytes=150, bf16=True)
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3 and shards[0] == "model-00001-of-00003.safetensors"
    assert index["metadata"]["total_size"] == 5 * 8 * 4 * 2 + 10 * 8
    assert not (tmp_path / "model.safetensors").exists()
    loaded = load_folder(tmp_path, dtype="float32")
    for name, array in tensors.items():
        expected = bf16_bits_to_float32(float32_to_bf16_bits(array)) if array.dtype.kind == "f" else array
        np.testing.assert_array_equal(loaded[name], expected)
        assert loaded[name].dtype == expected.dtype
    for shard in shards:  # each shard is a file the reference package reads
        assert safetensors.torch.load_file(tmp_path / shard)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        load_folder(tmp_path)
    save_file({"a": np.ones(2)}, tmp_path / "part1.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "part1.safetensors", "b": "part2.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"names 'part2.safetensors' \(for 'b'"):
        load_folder(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "part1.safetensors", "zz": "part1.safetensors"}}))
    with pytest.raises(SafetensorsError, match="maps tensor 'zz' to 'part1.safetensors', which does not hold it"):
        load_folder(tmp_path)
    index.write_text("{}")
    with pytest.raises(SafetensorsError, match="weight_map"):
        load_folder(tmp_path)


# --- malformed files -----------------------------------------------------------------------------------------------

def test_truncated_files(tmp_path):
    (tmp_path / "short").write_bytes(b"\x01\x02")
    with pytest.raises(SafetensorsError, match="truncated file"):
        load_file(tmp_path / "short")
    with pytest.raises(SafetensorsError, match="header length 1000 is beyond the file size"):
        load_file(write_raw(tmp_path / "len", {"a": 1}, length=1000))
    good = save_file({"w": np.ones((4, 4), np.float32)}, tmp_path / "good")
    (tmp_path / "cut").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(SafetensorsError, match=r"truncated file \(tensor 'w' data_offsets \[0, 64\] are beyond"):
        load_file(tmp_path / "cut")


def test_header_not_json(tmp_path):
    with pytest.raises(SafetensorsError, match="header is not JSON"):
        read_header(write_raw(tmp_path / "x", b"{oops"))
    with pytest.raises(SafetensorsError, match="header is not JSON"):
        read_header(write_raw(tmp_path / "y", b"\xff\xfe"))
    with pytest.raises(SafetensorsError, match="must be a JSON object"):
        read_header(write_raw(tmp_path / "z", b"[1]"))


@pytest.mark.parametrize("entry, buffer, message", [
    ({"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}, b"\0", "unknown dtype 'F8_E4M3'"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, b"\0" * 8, r"needs 12 bytes but its data_offsets"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, b"\0" * 4, "invalid shape"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, b"\0" * 4, "invalid data_offsets"),
    ({"dtype": "F32", "shape": [1]}, b"\0" * 4, "needs dtype, shape and data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, b"\0" * 8, "leaves a hole at byte 0"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, b"\0" * 8, "4 bytes after the last tensor"),
])
def test_bad_entries_are_named(tmp_path, entry, buffer, message):
    path = write_raw(tmp_path / "x", {"w": entry}, buffer)
    with pytest.raises(SafetensorsError, match=message) as error:
        load_file(path)
    assert "'w'" in str(error.value) or "after the last tensor" in message


def test_overlap_and_bad_metadata(tmp_path):
    header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
              "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}
    with pytest.raises(SafetensorsError, match="'b' data_offsets \\[2, 6\\] overlaps"):
        load_file(write_raw(tmp_path / "x", header, b"\0" * 6))
    with pytest.raises(SafetensorsError, match="__metadata__ must map strings to strings"):
        read_header(write_raw(tmp_path / "y", {"__metadata__": {"n": 1}}))


def test_writer_rejects_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="tensor 'obj' has dtype object"):
        save_file({"obj": np.array([None])}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="tensor 'c' has dtype complex64"):
        save_file({"c": np.zeros(2, np.complex64)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="reserved"):
        save_file({"__metadata__": np.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="metadata must map strings to strings"):
        save_file({"a": np.zeros(1)}, tmp_path / "x.safetensors", metadata={"n": 1})
    assert list(tmp_path.iterdir()) == []
    save_file({"a": np.zeros(1)}, tmp_path / "x.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left
