"""Read and write safetensors files from scratch, on the host, with NumPy.

The format (huggingface/safetensors): an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then one byte buffer that
the offsets index (relative to its start; little-endian, C order, no holes). This module is host I/O only: it returns
NumPy arrays and knows nothing of models; moving them to a device is the backend's job. It is not the `safetensors`
package (used only in tests, as the reference).
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scratch.atomic import atomic_write, fsync_folder, remove_stale_temporaries
from scratch.safe_read import parse_json, read_json

# safetensors dtype -> NumPy dtype of the stored bytes. BF16 has no NumPy dtype: its raw bits are read as uint16
# and widened to float32 by `bf16_bits_to_float32` (exact: every bfloat16 value is a float32 value).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# NumPy kind+size -> safetensors dtype, for writing (uint16 is U16; BF16 is written only when asked for).
_WRITE_DTYPES: dict[str, str] = {
    "f8": "F64", "f4": "F32", "f2": "F16", "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8",
    "u8": "U64", "u4": "U32", "u2": "U16", "u1": "U8", "b1": "BOOL",
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# A header this large is a corrupt length field, not a real header (the reference implementation caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 64  # NumPy's limit on an array's dimensions (NPY_MAXDIMS)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# What transformers writes in a model folder's files; transformers 4 refused files without a known "format".
FOLDER_METADATA = {"format": "pt"}


class SafetensorsError(ValueError):
    """A file that is not valid safetensors; the message names the file and what is wrong with it."""


# --- bfloat16 ------------------------------------------------------------------------------------------------------

def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 values, exactly.

    bfloat16 is the top half of a float32: the same sign bit, the same 8 exponent bits, and the first 7 of float32's
    23 mantissa bits. So widening is a shift: put the 16 bits in the high half of a uint32 (low half zero) and
    reinterpret those 32 bits as a float32. No rounding happens; NaN, infinities and subnormals carry over.
    """
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values -> bfloat16 bit patterns (uint16), rounding to nearest, ties to even (as torch does).

    Dropping the low 16 bits would truncate (round toward zero). To round, add 0x7FFF plus the lowest kept bit
    before shifting: above half-way carries into the kept bits, below does not, and exactly half-way carries only
    when the kept value is odd (ties to even). A carry out of the mantissa correctly bumps the exponent. NaNs
    are kept NaN (quiet bit set) since rounding their payload could turn them into infinity.
    """
    bits = np.asarray(x, dtype=np.float32, order="C").view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(bits.view(np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


# --- reading -------------------------------------------------------------------------------------------------------

def _read_raw_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """(header dict, byte offset of the data buffer, buffer size), with every entry checked."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # /dev/zero, a FIFO, a folder: refused before anything is opened
        raise SafetensorsError(f"{path}: not a regular file")
    size = info.st_size
    if size < 8:
        raise SafetensorsError(f"{path}: truncated file ({size} bytes; the 8-byte header length is missing)")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise SafetensorsError(f"{path}: truncated file (header length {n} is beyond the file size {size})")
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path}: header length {n} exceeds {MAX_HEADER_BYTES} bytes")
        raw = f.read(n)
    try:
        header = parse_json(raw, path)
    except ValueError as error:  # not UTF-8, not JSON, or nested too deeply
        raise SafetensorsError(f"{path}: header is not JSON ({str(error).removeprefix(f'{path}: ')})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    buffer_size = size - 8 - n
    _check_header(path, header, buffer_size)
    return header, 8 + n, buffer_size


def _check_header(path: Path, header: dict[str, Any], buffer_size: int) -> None:
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings, got {metadata!r}")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise SafetensorsError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets, got {info!r}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise SafetensorsError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
        if len(shape) > MAX_DIMS:
            raise SafetensorsError(f"{path}: tensor {name!r} has {len(shape)} dimensions; at most {MAX_DIMS} "
                                   f"are supported")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if end > buffer_size:
            raise SafetensorsError(f"{path}: truncated file (tensor {name!r} data_offsets {offsets} are beyond the "
                                   f"{buffer_size}-byte data buffer)")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise SafetensorsError(f"{path}: tensor {name!r} shape {shape} of {dtype} needs {expected} bytes but its "
                                   f"data_offsets {offsets} span {end - begin}")
        spans.append((begin, end, name))
    # The spec: the buffer is indexed entirely, with no holes and no overlaps.
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else f"leaves a hole at byte {position}"
            raise SafetensorsError(f"{path}: tensor {name!r} data_offsets [{begin}, {end}] {what}")
        position = end
    if position != buffer_size:
        raise SafetensorsError(f"{path}: {buffer_size - position} bytes after the last tensor are not indexed")


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries and "__metadata__" if present), validated."""
    return _read_raw_header(Path(path))[0]


def _convert(raw: np.ndarray, stored: str, dtype: str | None) -> np.ndarray:
    """A stored array in the dtype asked for: `dtype` applies to floating tensors only; integers stay as stored."""
    if stored == "BF16":
        raw = bf16_bits_to_float32(raw)  # NumPy has no bfloat16: float32 holds every bfloat16 value exactly
    if dtype is None or stored not in FLOAT_DTYPES:
        return raw
    return raw.astype(dtype, copy=False)


def _check_dtype(dtype: str | None) -> None:
    try:
        floating = dtype is None or np.dtype(dtype).kind == "f"
    except TypeError:  # not a dtype at all ("bogus")
        floating = False
    if not floating:
        raise ValueError(f"dtype must be a floating dtype name such as 'float32', got {dtype!r}")


def _open(path: Path, offset: int, size: int) -> np.ndarray:
    """The data buffer as uint8, memory-mapped copy-on-write: pages are read on first touch, writes stay private."""
    if size == 0:  # mmap cannot map zero bytes
        return np.zeros(0, dtype=np.uint8)
    # np.asarray drops the np.memmap subclass (whose results of arithmetic are odd memmaps) but keeps the mapping
    # alive through .base.
    return np.asarray(np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(size,)))


def _tensor(buffer: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    begin, end = info["data_offsets"]
    return buffer[begin:end].view(DTYPES[info["dtype"]]).reshape(info["shape"])


def load_file(path: str | Path, dtype: str | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, by name.

    With dtype=None each tensor keeps its stored dtype (BF16 becomes float32, exactly) and is a memory-mapped view,
    so a large file costs nothing until it is read. With dtype="float32" (or another float name) floating tensors
    (F16, BF16, F32, F64) are converted to it; integer and bool tensors stay as stored.
    """
    path = Path(path)
    _check_dtype(dtype)
    header, offset, size = _read_raw_header(path)
    buffer = _open(path, offset, size)
    return {name: _convert(_tensor(buffer, info), info["dtype"], dtype)
            for name, info in header.items() if name != "__metadata__"}


def load_tensor(path: str | Path, name: str, dtype: str | None = None) -> np.ndarray:
    """One tensor of a safetensors file (see load_file for dtype); KeyError naming it if the file lacks it."""
    path = Path(path)
    _check_dtype(dtype)
    header, offset, size = _read_raw_header(path)
    if name not in header or name == "__metadata__":
        names = sorted(k for k in header if k != "__metadata__")
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise KeyError(f"tensor {name!r} is not in {path} (it holds {len(names)}: {shown})")
    return _convert(_tensor(_open(path, offset, size), header[name]), header[name]["dtype"], dtype)


def is_plain_file_name(name: Any) -> bool:
    """True for a name that can only mean a file directly inside a folder: no path separator (either kind), not
    '', '.' or '..', not absolute, no drive (':') or NUL. A link of that name inside the folder may point anywhere
    (the Hugging Face cache links snapshots/<commit>/NAME into ../../blobs/); the rule is on the name."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(char in name for char in ("/", "\\", ":", "\0")))


def _read_index(index: Path) -> dict[str, list[str]]:
    """shard file name -> the tensors it holds, from a model.safetensors.index.json, every name checked."""
    data = read_json(index, "safetensors index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise SafetensorsError(f"{index}: not a safetensors index: it needs a \"weight_map\" object of tensor name "
                               f"-> shard file name")
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not is_plain_file_name(shard):
            raise SafetensorsError(f"{index}: tensor {name!r} is mapped to {shard!r}, which is not a plain file name "
                                   f"in the folder (no path separators, '..' or absolute paths)")
        shards.setdefault(shard, []).append(name)
    return shards


def load_folder(folder: str | Path, dtype: str | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face model folder: `model.safetensors`, or the shards that
    `model.safetensors.index.json` lists ({"weight_map": {tensor name: shard file name}}). When both are present,
    model.safetensors wins, as in transformers. Shard names must be plain file names inside the folder."""
    folder = Path(folder)
    single = folder / SINGLE_NAME
    if single.exists():  # (exists, not is_file: a FIFO or a folder of that name gets its own error)
        return load_file(single, dtype)
    index = folder / INDEX_NAME
    if index.exists():
        tensors: dict[str, np.ndarray] = {}
        for shard, names in _read_index(index).items():
            shard_path = folder / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"{index} names {shard!r} (for {names[0]!r} and {len(names) - 1} more) "
                                        f"but {shard_path} does not exist")
            loaded = load_file(shard_path, dtype)
            for name in names:
                if name not in loaded:
                    raise SafetensorsError(f"{index} maps tensor {name!r} to {shard!r}, which does not hold it")
                tensors[name] = loaded[name]
        return tensors
    raise FileNotFoundError(f"no {SINGLE_NAME} or {INDEX_NAME} in {folder}")


# --- writing -------------------------------------------------------------------------------------------------------

def _stored(name: Any, array: Any, bf16: bool) -> tuple[str, np.ndarray]:
    """(safetensors dtype, little-endian C-order array to write) for one tensor."""
    if not isinstance(name, str):
        raise TypeError(f"tensor names must be strings, got {name!r}")
    if name == "__metadata__":
        raise ValueError("'__metadata__' is reserved for the header's metadata and cannot name a tensor")
    array = np.asarray(array)
    key = f"{array.dtype.kind}{array.dtype.itemsize}"
    if key not in _WRITE_DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store")
    if bf16 and array.dtype.kind == "f":
        return "BF16", float32_to_bf16_bits(array)
    # np.asarray, not np.ascontiguousarray: the latter turns a 0-d scalar into shape (1,).
    return _WRITE_DTYPES[key], np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def save_file(tensors: Mapping[str, Any], path: str | Path, metadata: Mapping[str, str] | None = None, *,
              bf16: bool = False) -> Path:
    """Write `tensors` (name -> NumPy array) to a safetensors file, atomically (temp file + os.replace).

    bf16=True stores every floating tensor as BF16 (via float32, rounded to nearest even); integers are stored as
    they are. Returns the path written.
    """
    path = Path(path)
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"metadata must map strings to strings, got {dict(metadata)!r}")
    stored = {name: _stored(name, array, bf16) for name, array in tensors.items()}
    # Largest itemsize first, then by name: every tensor then starts at a multiple of its own itemsize (the buffer
    # starts 8-aligned), so readers can view it in place without an unaligned copy.
    order = sorted(stored, key=lambda n: (-stored[n][1].dtype.itemsize, n))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    position = 0
    for name in order:
        dtype, array = stored[name]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [position, position + array.nbytes]}
        position += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad with spaces so the data buffer starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in order:
            f.write(stored[name][1].tobytes())  # tobytes() is C order
    return path


# Shard names as save_folder writes them: Hugging Face's, or with a random tag while the plain names are in use.
_SHARD_NAME = re.compile(r"model-\d{5,}-of-\d{5,}(?:-[0-9a-f]{8})?\.safetensors")


def _live_files(folder: Path) -> set[str]:
    """The names load_folder reads in `folder` now: model.safetensors, else the index and the shards it names."""
    if (folder / SINGLE_NAME).is_file():
        return {SINGLE_NAME}
    if not (folder / INDEX_NAME).is_file():
        return set()
    try:
        return {INDEX_NAME, *_read_index(folder / INDEX_NAME)}
    except (ValueError, OSError):  # an unreadable index: no shard is reachable through it
        return {INDEX_NAME}


def _remove(folder: Path, names: set[str]) -> None:
    """Delete `names` from `folder`, the index first (from then on no reader looks for its shards)."""
    if INDEX_NAME in names:
        (folder / INDEX_NAME).unlink(missing_ok=True)
        fsync_folder(folder)
    for name in sorted(names - {INDEX_NAME}):
        (folder / name).unlink(missing_ok=True)
    fsync_folder(folder)


def _remove_leftovers(folder: Path, live: set[str]) -> None:
    """What a killed save left: temporaries of dead processes, an index or shards that no reader reaches."""
    remove_stale_temporaries(folder)
    _remove(folder, {entry.name for entry in os.scandir(folder) if entry.name not in live
                     and (entry.name == INDEX_NAME or _SHARD_NAME.fullmatch(entry.name))})


def _write_index(folder: Path, groups: list[list[str]], names: list[str], total: int) -> Path:
    weight_map = {tensor: name for name, group in zip(names, groups) for tensor in group}
    with atomic_write(folder / INDEX_NAME) as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return folder / INDEX_NAME


def save_folder(tensors: Mapping[str, Any], folder: str | Path, max_shard_bytes: int | None = None, *,
                bf16: bool = False) -> Path:
    """Write a model folder's weights: one `model.safetensors`, or, when `max_shard_bytes` is given and exceeded,
    shards `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`, as Hugging Face lays them out.

    One transaction: whenever the process stops, load_folder reads either the whole old set or the whole new one.
    The new files are written beside the old ones (each atomically), then one step switches readers over --
    replacing model.safetensors, writing the index, or deleting model.safetensors, which readers prefer -- and only
    then is what the old set had and the new one lacks deleted (stale index, orphan shards). New shards whose plain
    names the old set still uses are written under tagged names first, then hard-linked to the plain names and
    switched again by a second index. The next save deletes what a killed one left. One writer at a time.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = _live_files(folder)
    _remove_leftovers(folder, old)
    sizes = {name: np.asarray(array).size * (2 if bf16 and np.asarray(array).dtype.kind == "f"
                                             else np.asarray(array).dtype.itemsize)
             for name, array in tensors.items()}
    total = sum(sizes.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        path = save_file(tensors, folder / SINGLE_NAME, FOLDER_METADATA, bf16=bf16)   # the switch: read first
        _remove(folder, old - {SINGLE_NAME})
        return path
    groups: list[list[str]] = [[]]
    used = 0
    for name in tensors:  # in the given order; a tensor larger than the limit gets a shard of its own
        if groups[-1] and used + sizes[name] > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += sizes[name]
    names = [f"model-{number:05d}-of-{len(groups):05d}.safetensors" for number in range(1, len(groups) + 1)]
    tag = secrets.token_hex(4)
    tagged = bool(old & set(names))       # the old index names these files: they must not change before the switch
    written = [name.replace(".safetensors", f"-{tag}.safetensors") for name in names] if tagged else names
    for name, group in zip(written, groups):
        save_file({tensor: tensors[tensor] for tensor in group}, folder / name, FOLDER_METADATA, bf16=bf16)
    index = _write_index(folder, groups, written, total)   # the switch (a model.safetensors still wins until...)
    _remove(folder, old - {INDEX_NAME} - set(written))      # ...it is deleted here, with the old shards
    if tagged:
        try:
            for name, tagged_name in zip(names, written):
                (folder / name).unlink(missing_ok=True)     # no reader looks at the plain names now
                os.link(folder / tagged_name, folder / name)
        except OSError:  # a file system without hard links: the tagged names stay (the index names them)
            return index
        _write_index(folder, groups, names, total)          # the second switch, to Hugging Face's names
        _remove(folder, set(written))
    return index
