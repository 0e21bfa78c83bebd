"""Bad-input catalogue, weights: safetensors files, the sharded index, model folders -- each refused with the type
of error promised and a message that names the file's offending field or value. A shard name must be a plain file
name in the folder (issue 13, item 1): a path out of it is refused before anything is opened, so no outside file is
read as weights and no byte of it reaches a message."""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

import scratch.models
import scratch.safe_read
from scratch.models.safetensors import SafetensorsError, load_file, load_folder, load_tensor, save_file

from .conftest import finishes

INDEX = "model.safetensors.index.json"


def raw_file(path, header, buffer=b"", length=None):
    """A safetensors file written byte by byte: header (dict or raw bytes), then `buffer`."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes((len(raw) if length is None else length).to_bytes(8, "little") + raw + buffer)
    return path


def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def one_tensor(tmp, info, buffer=b"\0" * 4):
    path = raw_file(tmp / "x.safetensors", {"w": info}, buffer)
    return lambda: load_file(path)


def sparse_header(tmp):
    """A 200 MB header length in a sparse file of that size: over the 100 MB cap, no disk used."""
    path = tmp / "big.safetensors"
    with open(path, "wb") as handle:
        handle.write((200_000_000).to_bytes(8, "little"))
        handle.truncate(200_000_008)
    return lambda: load_file(path)


def sharded(tmp, weight_map, index_text=None):
    """A folder whose index maps tensors as given (shard part1.safetensors holds 'a')."""
    folder = tmp / "m"
    folder.mkdir()
    save_file({"a": np.ones(2, np.float32)}, folder / "part1.safetensors")
    save_file({"secret": np.full(3, 7.0, np.float32)}, tmp / "outside.safetensors")   # what traversal would reach
    text = index_text if index_text is not None else json.dumps({"weight_map": weight_map})
    (folder / INDEX).write_bytes(text if isinstance(text, bytes) else text.encode())
    return lambda: load_folder(folder)


def fifo_index(tmp):
    folder = tmp / "m"
    folder.mkdir()
    os.mkfifo(folder / INDEX)
    return lambda: load_folder(folder)


def large_index(tmp, monkeypatch):
    monkeypatch.setitem(scratch.safe_read.LIMITS, "safetensors index", 100)
    return sharded(tmp, {"a": "part1.safetensors", "b" * 200: "part1.safetensors"})


def spoiled_model(files, tmp, edit):
    """The GPT-2 folder with its weights rewritten by edit(dict of tensors)."""
    folder = shutil.copytree(files["gpt2"], tmp / "gpt2")
    tensors = {name: np.array(array) for name, array in load_folder(folder).items()}
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", {"format": "pt"})
    return lambda: scratch.models.load(folder)


def _drop(tensors, name):
    del tensors[name]


def _reshape(tensors, name):
    tensors[name] = tensors[name][:-1]


def _as_int(tensors, name):
    tensors[name] = tensors[name].astype(np.int32)


CASES = {
    # --- one safetensors file: header and entries ---
    "file shorter than the length field": (lambda t, f, m: (lambda: load_file(_bytes(t / "x", b"\x01\x02"))),
                                           SafetensorsError, r"truncated file \(2 bytes"),
    "header length beyond the file": (lambda t, f, m: (lambda: load_file(raw_file(t / "x", {"a": 1}, length=1000))),
                                      SafetensorsError, "header length 1000 is beyond the file size"),
    "header length over the cap": (lambda t, f, m: sparse_header(t), SafetensorsError,
                                   "header length 200000000 exceeds 100000000"),
    "header not JSON": (lambda t, f, m: (lambda: load_file(raw_file(t / "x", b"{oops"))), SafetensorsError,
                        "header is not JSON"),
    "header not UTF-8": (lambda t, f, m: (lambda: load_file(raw_file(t / "x", b'{"\xff": 1}'))), SafetensorsError,
                         r"header is not JSON \(not UTF-8 text \(byte 0xff"),
    "header nested 100k deep": (lambda t, f, m: (lambda: load_file(raw_file(t / "x", b"[" * 100_000 + b"]" * 100_000))),
                                SafetensorsError, "nested too deeply"),
    "header a list": (lambda t, f, m: (lambda: load_file(raw_file(t / "x", b"[1]"))), SafetensorsError,
                      "header must be a JSON object, got list"),
    "unknown dtype": (lambda t, f, m: one_tensor(t, entry("F8_E4M3", offsets=(0, 1)), b"\0"), SafetensorsError,
                      "tensor 'w' has unknown dtype 'F8_E4M3'"),
    "bytes do not match the shape": (lambda t, f, m: one_tensor(t, entry(shape=(3,), offsets=(0, 8)), b"\0" * 8),
                                     SafetensorsError, r"tensor 'w' shape \[3\] of F32 needs 12 bytes"),
    "negative dimension": (lambda t, f, m: one_tensor(t, entry(shape=(-1,))), SafetensorsError,
                           r"tensor 'w' has invalid shape \[-1\]"),
    "dimension a string": (lambda t, f, m: one_tensor(t, entry(shape=("4",))), SafetensorsError,
                           r"tensor 'w' has invalid shape \['4'\]"),
    "65 dimensions": (lambda t, f, m: one_tensor(t, entry(shape=(1,) * 65)), SafetensorsError,
                      "tensor 'w' has 65 dimensions; at most 64"),
    "offsets reversed": (lambda t, f, m: one_tensor(t, entry(offsets=(4, 0))), SafetensorsError,
                         r"tensor 'w' has invalid data_offsets \[4, 0\]"),
    "offsets beyond the buffer": (lambda t, f, m: one_tensor(t, entry(offsets=(0, 4)), b"\0" * 2), SafetensorsError,
                                  r"tensor 'w' data_offsets \[0, 4\] are beyond the 2-byte data buffer"),
    "entry without offsets": (lambda t, f, m: one_tensor(t, {"dtype": "F32", "shape": [1]}), SafetensorsError,
                              "tensor 'w' needs dtype, shape and data_offsets"),
    "a hole in the buffer": (lambda t, f, m: one_tensor(t, entry(offsets=(4, 8)), b"\0" * 8), SafetensorsError,
                             r"tensor 'w' data_offsets \[4, 8\] leaves a hole at byte 0"),
    "overlapping tensors": (lambda t, f, m: (lambda: load_file(raw_file(
        t / "x", {"a": entry("U8", (4,), (0, 4)), "b": entry("U8", (4,), (2, 6))}, b"\0" * 6))), SafetensorsError,
                            r"tensor 'b' data_offsets \[2, 6\] overlaps"),
    "bytes after the last tensor": (lambda t, f, m: one_tensor(t, entry(), b"\0" * 8), SafetensorsError,
                                    "4 bytes after the last tensor are not indexed"),
    "metadata not strings": (lambda t, f, m: (lambda: load_file(raw_file(t / "x", {"__metadata__": {"n": 1}}))),
                             SafetensorsError, r"__metadata__ must map strings to strings, got \{'n': 1\}"),
    "a folder as the file": (lambda t, f, m: (lambda: load_file(t)), SafetensorsError, "not a regular file"),
    "a FIFO as the file": (lambda t, f, m: (os.mkfifo(t / "x"), lambda: load_file(t / "x"))[1], SafetensorsError,
                           "x: not a regular file"),
    "dtype not a dtype": (lambda t, f, m: (lambda: load_file(save_file({"a": np.ones(1)}, t / "x"), dtype="bogus")),
                          ValueError, "dtype must be a floating dtype name such as 'float32', got 'bogus'"),
    "dtype not floating": (lambda t, f, m: (lambda: load_file(save_file({"a": np.ones(1)}, t / "x"), dtype="int32")),
                           ValueError, "got 'int32'"),
    "tensor not in the file": (lambda t, f, m: (lambda: load_tensor(save_file({"a": np.ones(1)}, t / "x"), "b")),
                               KeyError, "tensor 'b' is not in"),
    # --- the sharded index ---
    "shard name climbs out": (lambda t, f, m: sharded(t, {"a": "../outside.safetensors"}), SafetensorsError,
                              "tensor 'a' is mapped to '../outside.safetensors', which is not a plain file name"),
    "shard name absolute": (lambda t, f, m: sharded(t, {"a": "/etc/passwd"}), SafetensorsError,
                            "mapped to '/etc/passwd', which is not a plain file name"),
    "shard name in a subfolder": (lambda t, f, m: sharded(t, {"a": "sub/part1.safetensors"}), SafetensorsError,
                                  "mapped to 'sub/part1.safetensors'"),
    "shard name ..": (lambda t, f, m: sharded(t, {"a": ".."}), SafetensorsError, "mapped to '..'"),
    "shard name with a backslash": (lambda t, f, m: sharded(t, {"a": "..\\outside.safetensors"}), SafetensorsError,
                                    r"mapped to '\.\.\\\\outside.safetensors'"),
    "shard name with a drive": (lambda t, f, m: sharded(t, {"a": "C:part1.safetensors"}), SafetensorsError,
                                "mapped to 'C:part1.safetensors'"),
    "shard name empty": (lambda t, f, m: sharded(t, {"a": ""}), SafetensorsError, "mapped to '', which is not"),
    "shard name a number": (lambda t, f, m: sharded(t, {"a": 5}), SafetensorsError, "tensor 'a' is mapped to 5"),
    "shard name null": (lambda t, f, m: sharded(t, {"a": None}), SafetensorsError, "tensor 'a' is mapped to None"),
    "index not JSON": (lambda t, f, m: sharded(t, {}, "{oops"), ValueError, f"{INDEX}: not valid JSON"),
    "index not UTF-8": (lambda t, f, m: sharded(t, {}, b'{"weight_map": {"a": "\xff"}}'), ValueError,
                        f"{INDEX}: not UTF-8 text \\(byte 0xff at offset 22"),
    "index nested 100k deep": (lambda t, f, m: sharded(t, {}, "[" * 100_000 + "]" * 100_000), ValueError,
                               f"{INDEX}: JSON nested too deeply"),
    "index without weight_map": (lambda t, f, m: sharded(t, {}, "{}"), SafetensorsError,
                                 'needs a "weight_map" object'),
    "weight_map a list": (lambda t, f, m: sharded(t, {}, '{"weight_map": ["a"]}'), SafetensorsError,
                          'needs a "weight_map" object'),
    "index too large": (lambda t, f, m: large_index(t, m), ValueError, f"{INDEX}: .* bytes is more than any "
                                                                      "safetensors index file should be"),
    "index a FIFO": (lambda t, f, m: fifo_index(t), ValueError, f"{INDEX}: is a FIFO"),
    "shard missing": (lambda t, f, m: sharded(t, {"a": "part1.safetensors", "b": "part2.safetensors"}),
                      FileNotFoundError, r"names 'part2.safetensors' \(for 'b'"),
    "shard lacks its tensor": (lambda t, f, m: sharded(t, {"a": "part1.safetensors", "zz": "part1.safetensors"}),
                               SafetensorsError, "maps tensor 'zz' to 'part1.safetensors', which does not hold it"),
    "no weights in the folder": (lambda t, f, m: (lambda: load_folder(t)), FileNotFoundError,
                                 "no model.safetensors or model.safetensors.index.json in"),
    # --- a model folder's tensors ---
    "tensor missing": (lambda t, f, m: spoiled_model(f, t, lambda w: _drop(w, "transformer.wte.weight")), ValueError,
                       "missing tensor 'transformer.wte.weight'"),
    "tensor of the wrong shape": (lambda t, f, m: spoiled_model(f, t, lambda w: _reshape(w, "transformer.wpe.weight")),
                                  ValueError, r"tensor 'transformer.wpe.weight' has shape \(63, 16\), expected"),
    "tensor of integers": (lambda t, f, m: spoiled_model(f, t, lambda w: _as_int(w, "transformer.ln_f.weight")),
                           ValueError, "tensor 'transformer.ln_f.weight' has dtype int32, expected a float"),
}


def _bytes(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES)
def test_refused_naming_the_culprit(case, tmp_path, files, monkeypatch):
    build, kind, message = CASES[case]
    error = finishes(build(tmp_path, files, monkeypatch))
    assert isinstance(error, kind), f"{case}: expected {kind.__name__}, got {error!r}"
    assert re.search(message, str(error)), f"{case}: {error}"
    if case.startswith("shard name"):  # refused by its name: the outside file is never opened, nothing of it shows
        assert "header" not in str(error) and "secret" not in str(error)


def test_symlinked_shards_inside_the_folder_load(tmp_path):
    """The Hugging Face cache layout: snapshots/<commit>/NAME are links to ../../blobs/<hash>, outside the
    snapshot folder. The rule is on the NAME in the index, so these load."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    save_file({"a": np.arange(3, dtype=np.float32)}, blobs / "1f2e")
    (blobs / "9d8c").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    os.symlink("../../blobs/1f2e", snapshot / "model-00001-of-00001.safetensors")
    os.symlink("../../blobs/9d8c", snapshot / INDEX)
    np.testing.assert_array_equal(load_folder(snapshot)["a"], np.arange(3, dtype=np.float32))
