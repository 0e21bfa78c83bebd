"""Read and write GGUF files (llama.cpp's checkpoint format) from scratch, on the host, with NumPy.

The format (ggml's docs/gguf.md), all little-endian: "GGUF" | u32 version | u64 tensor count | u64 key/value count,
then the key/values (a string key, a u32 value type, the value; arrays are a u32 element type, a u64 count and the
elements, nested arrays allowed), then one info per tensor (string name, u32 n_dims, u64 ne[n_dims] fastest-varying
first, u32 ggml type, u64 offset into the data section), padding up to `general.alignment` (32 by default), and the
data section. Strings are a u64 byte length and UTF-8 bytes. Versions 2 and 3 are read (they differ only in what
they promise about endianness); version 1 (32-bit counts) is refused. Every count, length and offset is checked
against the bytes left before anything is allocated, so a truncated or hostile file raises GGUFError naming the
field. Not here: what the tensors mean (`scratch.models.gguf`) or tokenizers (`scratch.tokenizer`).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratch.atomic import atomic_write
from scratch.formats.quants import TYPES, TYPES_BY_ID, dequantize, quantize, storage_bytes

__all__ = ["MAGIC", "GGUFError", "GGUFFile", "GGUFTensor", "is_gguf", "read_gguf", "write_gguf",
           "VALUE_TYPES", "DEFAULT_ALIGNMENT"]

MAGIC = b"GGUF"
READ_VERSIONS = (2, 3)
WRITE_VERSION = 3
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml tensors have at most 4 dimensions (GGML_MAX_DIMS)

# GGUF metadata value types: id -> (name, struct format of a scalar, or None for string / array).
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"), 4: ("UINT32", "<I"),
    5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"), 8: ("STRING", None), 9: ("ARRAY", None),
    10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d"),
}
_STRING, _ARRAY = 8, 9
# The NumPy dtype of each scalar type, for reading whole arrays of numbers at once.
_NUMPY_OF_TYPE = {type_id: np.dtype(fmt) for type_id, (_, fmt) in VALUE_TYPES.items() if fmt is not None}
# Fewest bytes one element of each type takes in a file: bounds an array's count before it is read.
_MIN_BYTES = {**{type_id: dtype.itemsize for type_id, dtype in _NUMPY_OF_TYPE.items()},
              _STRING: 8, _ARRAY: 4 + 8}


class GGUFError(ValueError):
    """A file that is not valid GGUF; the message names the file, the field and where it is."""


# --- the parsed file -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: where its bytes are and how to read them. Nothing is read until asked."""

    name: str
    shape: tuple[int, ...]  # NumPy (row-major) order: the reverse of GGUF's ne[] (ne[0] is the last axis here)
    type_name: str  # ggml type: "F32", "F16", "BF16", "Q8_0", "Q4_0", ..., "Q6_K"
    offset: int  # absolute byte offset in the file (data_offset + the offset in the tensor info)
    nbytes: int
    _file: np.ndarray = field(repr=False, compare=False)  # the whole file, memory-mapped as uint8

    def raw(self) -> np.ndarray:
        """The tensor's stored bytes: a read-only uint8 view of the memory-mapped file."""
        return self._file[self.offset:self.offset + self.nbytes]

    def to_numpy(self, dtype=np.float32) -> np.ndarray:
        """The tensor's values in `shape`: quantized types are dequantized to float32. With dtype=None, plain
        types (F32, F16, ...) keep their stored dtype as a read-only memory-mapped view."""
        try:
            return dequantize(self.raw(), self.type_name, self.shape, dtype=dtype)
        except ValueError as error:
            raise GGUFError(f"tensor {self.name!r}: {error}") from None


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: its metadata as Python values and its tensors (memory-mapped, in file order)."""

    path: str
    version: int
    alignment: int
    data_offset: int  # where the data section starts (a multiple of `alignment`)
    metadata: dict[str, Any]  # key -> int | float | bool | str | list (nested arrays as lists)
    tensors: dict[str, GGUFTensor]
    # key -> the GGUF type it was stored as: "UINT32", "STRING", "ARRAY[FLOAT32]", "ARRAY[ARRAY]", ...
    metadata_types: dict[str, str] = field(default_factory=dict, repr=False)


def is_gguf(path) -> bool:
    """True when `path` is a file that starts with the GGUF magic. Never raises for a path (a folder, a missing or
    unreadable file is simply not GGUF)."""
    try:
        if not os.path.isfile(path):  # a FIFO would block the open below; /dev/zero is no GGUF either
            return False
        with open(path, "rb") as handle:
            return handle.read(4) == MAGIC
    except (OSError, TypeError, ValueError):
        return False


# --- reading -------------------------------------------------------------------------------------------------------

class _Cursor:
    """Reads little-endian fields from the mapped file, checking each against the bytes that are left."""

    def __init__(self, data: np.ndarray, path: str):
        self.data, self.path, self.pos = data, path, 0
        self.view = memoryview(data)  # slicing a memoryview is cheaper than slicing the array, for short fields

    def left(self) -> int:
        return self.data.size - self.pos

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}")

    def take(self, count: int, what: str) -> np.ndarray:
        if count > self.left():
            raise self.fail(f"truncated file: {what} needs {count} bytes at offset {self.pos}, "
                            f"only {self.left()} are left")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, min_bytes_each: int) -> int:
        """A u64 count of items that each take at least `min_bytes_each` bytes: refused if they cannot fit."""
        start = self.pos
        n = self.scalar("<Q", what)
        if n * min_bytes_each > self.left():
            raise self.fail(f"{what} {n} at offset {start} is impossible: {n} items of at least {min_bytes_each} "
                            f"bytes need more than the {self.left()} bytes left in the file")
        return n

    def string(self, what: str) -> str:
        start = self.pos
        length = self.scalar("<Q", f"{what} length")
        if length > self.left():
            raise self.fail(f"{what} length {length} at offset {start} runs past the end of the file "
                            f"({self.left()} bytes left)")
        raw = self.take(length, what).tobytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.fail(f"{what} at offset {start} is not UTF-8 ({error})") from None

    def value(self, type_id: int, what: str, depth: int = 0):
        if type_id == _STRING:
            return self.string(what)
        if type_id == _ARRAY:
            return self.array(what, depth)
        if type_id not in VALUE_TYPES:
            raise self.fail(f"{what} has unknown value type {type_id} at offset {self.pos - 4}; "
                            f"known: {', '.join(f'{k} {n}' for k, (n, _) in VALUE_TYPES.items())}")
        return self.scalar(VALUE_TYPES[type_id][1], what)

    def array(self, what: str, depth: int) -> list:
        if depth > 8:  # a nesting this deep is a hostile file recursing us to death, not a real vocabulary
            raise self.fail(f"{what}: arrays nested more than 8 deep")
        element_type = self.scalar("<I", f"{what} element type")
        if element_type not in VALUE_TYPES:
            raise self.fail(f"{what} has unknown array element type {element_type} at offset {self.pos - 4}")
        n = self.count(f"{what} array length", _MIN_BYTES[element_type])
        if element_type in _NUMPY_OF_TYPE:  # numbers: one frombuffer for the whole array
            dtype = _NUMPY_OF_TYPE[element_type]
            values = self.take(n * dtype.itemsize, what).view(dtype)
            return values.tolist()
        if element_type == _STRING:
            return self.strings(n, what)
        return [self.value(element_type, f"{what}[{i}]", depth + 1) for i in range(n)]

    def strings(self, n: int, what: str) -> list[str]:
        """`n` strings in a row: the loop a vocabulary goes through (50k-250k tokens, merges), kept tight. Anything
        wrong sends that element through `string`, which raises the error naming it."""
        view, size, pos = self.view, self.data.size, self.pos
        out = []
        for i in range(n):
            length = int.from_bytes(view[pos:pos + 8], "little") if pos + 8 <= size else size
            try:
                if length > size - pos - 8:
                    raise ValueError
                out.append(str(view[pos + 8:pos + 8 + length], "utf-8"))
            except ValueError:  # UnicodeDecodeError is a ValueError
                self.pos = pos
                self.string(f"{what}[{i}]")
            pos += 8 + length
        self.pos = pos
        return out


def _map(path: str) -> np.ndarray:
    size = os.path.getsize(path)
    if size == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=np.uint8)
    # Read-only: the arrays handed out are views of the file and must not be written through.
    return np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))


def read_gguf(path) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor infos; tensor data stays memory-mapped until asked for.

    Raises GGUFError (a ValueError) naming the field for anything malformed: bad magic, an unsupported version,
    truncated fields, counts or lengths that cannot fit in the file, an unknown value or tensor type, a bad
    alignment, tensor data that is misaligned, overlapping or past the end of the file.
    """
    path = str(path)
    data = _map(path)
    cursor = _Cursor(data, path)
    magic = cursor.take(4, "magic") if data.size >= 4 else data.tobytes()
    if bytes(magic) != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (magic {bytes(magic)!r}, expected {MAGIC!r})")
    version = cursor.scalar("<I", "version")
    if version == 1:
        raise GGUFError(f"{path}: GGUF version 1 (the 2023 draft with 32-bit counts) is not supported; "
                        f"convert the model again with a current llama.cpp (versions {READ_VERSIONS} are read)")
    if version not in READ_VERSIONS:
        hint = " (a big-endian file?)" if struct.unpack(">I", struct.pack("<I", version))[0] in READ_VERSIONS else ""
        raise GGUFError(f"{path}: unsupported GGUF version {version}{hint}; versions {READ_VERSIONS} are read")
    # Fewest bytes a tensor info can take: name length 8 + n_dims 4 + type 4 + offset 8.
    tensor_count = cursor.count("tensor count", 8 + 4 + 4 + 8)
    # Fewest bytes a key/value can take: key length 8 + value type 4 + a one-byte value.
    kv_count = cursor.count("metadata key/value count", 8 + 4 + 1)

    metadata: dict[str, Any] = {}
    metadata_types: dict[str, str] = {}
    for i in range(kv_count):
        key = cursor.string(f"metadata key #{i}")
        if key in metadata:
            raise GGUFError(f"{path}: metadata key {key!r} appears twice")
        type_id = cursor.scalar("<I", f"value type of {key!r}")
        start = cursor.pos
        metadata[key] = cursor.value(type_id, f"metadata {key!r}")
        metadata_types[key] = VALUE_TYPES[type_id][0]
        if type_id == _ARRAY:  # the element type is the array's first field
            element_type = struct.unpack("<I", data[start:start + 4])[0]
            metadata_types[key] += f"[{VALUE_TYPES[element_type][0]}]"

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0
            or alignment & (alignment - 1)):
        raise GGUFError(f"{path}: general.alignment must be a positive power of two, got {alignment!r}")

    infos = []
    for i in range(tensor_count):
        name = cursor.string(f"tensor #{i} name")
        n_dims = cursor.scalar("<I", f"tensor {name!r} n_dims")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"{path}: tensor {name!r} n_dims {n_dims} exceeds ggml's maximum of {MAX_DIMS}")
        ne = [cursor.scalar("<Q", f"tensor {name!r} ne[{d}]") for d in range(n_dims)]
        type_id = cursor.scalar("<I", f"tensor {name!r} type")
        relative = cursor.scalar("<Q", f"tensor {name!r} offset")
        if type_id not in TYPES_BY_ID:
            raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type {type_id}; "
                            f"known: {', '.join(f'{t.type_id} {t.name}' for t in TYPES_BY_ID.values())}")
        infos.append((name, tuple(reversed(ne)), TYPES_BY_ID[type_id].name, relative))

    data_offset = -(-cursor.pos // alignment) * alignment  # the data section starts at the next aligned byte
    tensors: dict[str, GGUFTensor] = {}
    spans = []
    for name, shape, type_name, relative in infos:
        if name in tensors:
            raise GGUFError(f"{path}: tensor {name!r} appears twice")
        if relative % alignment:
            raise GGUFError(f"{path}: tensor {name!r} offset {relative} is not a multiple of the alignment "
                            f"{alignment}")
        try:
            nbytes = storage_bytes(type_name, shape)
        except ValueError as error:
            raise GGUFError(f"{path}: tensor {name!r} shape {shape}: {error}") from None
        begin = data_offset + relative
        if begin + nbytes > data.size:
            raise GGUFError(f"{path}: tensor {name!r} data (offset {relative}, {nbytes} bytes of {type_name} "
                            f"{shape}) runs past the end of the file: the data section holds "
                            f"{max(0, data.size - data_offset)} bytes")
        spans.append((begin, begin + nbytes, name))
        tensors[name] = GGUFTensor(name, shape, type_name, begin, nbytes, data)
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise GGUFError(f"{path}: tensors {first!r} and {second!r} overlap in the data section")
    return GGUFFile(path, version, alignment, data_offset, metadata, tensors, metadata_types)


# --- writing -------------------------------------------------------------------------------------------------------

# NumPy scalar type -> GGUF value type: a NumPy scalar (or array) states the type exactly, as llama.cpp wants it
# (it refuses a key whose type differs from the one it expects, e.g. u32 context lengths, f32 scores).
_TYPE_OF_NUMPY = {dtype: type_id for type_id, dtype in _NUMPY_OF_TYPE.items()}
_INT32 = (-(2 ** 31), 2 ** 31 - 1)


def _value_type(value: Any) -> int:
    """The GGUF type a Python value is written as: bool -> BOOL, str -> STRING, int -> INT32 (INT64 / UINT64 when it
    does not fit), float -> FLOAT32, list / tuple / 1-D array -> ARRAY, a NumPy scalar -> its own type."""
    if isinstance(value, (bool, np.bool_)):
        return 7
    if isinstance(value, np.generic):
        if value.dtype not in _TYPE_OF_NUMPY:
            raise ValueError(f"GGUF has no value type for NumPy {value.dtype}")
        return _TYPE_OF_NUMPY[value.dtype]
    if isinstance(value, str):
        return _STRING
    if isinstance(value, int):
        if _INT32[0] <= value <= _INT32[1]:
            return 5
        return 11 if value < 2 ** 63 else 10
    if isinstance(value, float):
        return 6
    if isinstance(value, (list, tuple, np.ndarray)):
        return _ARRAY
    raise ValueError(f"GGUF metadata values are int, float, bool, str, NumPy scalars or lists; "
                     f"got {type(value).__name__}")


def _encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(value: Any, type_id: int, key: str) -> bytes:
    if type_id == _STRING:
        return _encode_string(value)
    if type_id == _ARRAY:
        return _encode_array(value, key)
    try:
        return struct.pack(VALUE_TYPES[type_id][1], value)
    except struct.error as error:
        raise ValueError(f"metadata {key!r}: {value!r} does not fit GGUF {VALUE_TYPES[type_id][0]} ({error})") from None


def _encode_array(values, key: str) -> bytes:
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"metadata {key!r}: a NumPy array value must be 1-D, got shape {values.shape}")
        element_type = _value_type(values.dtype.type(0)) if values.dtype.kind != "U" else _STRING
        values = values.tolist() if element_type == _STRING else values
    else:
        types = {_value_type(v) for v in values}
        if types <= {5, 11, 10}:  # Python ints: the widest type any element needs
            element_type = 10 if 10 in types else 11 if 11 in types else 5
        elif types <= {5, 6}:  # a mix of ints and floats is an array of floats
            element_type = 6
        elif len(types) == 1:
            element_type = types.pop()
        elif not types:
            element_type = 5  # an empty list: the element type is arbitrary
        else:
            raise ValueError(f"metadata {key!r}: array elements must share one type, got a mix of "
                             f"{sorted(VALUE_TYPES[t][0] for t in types)}")
    header = struct.pack("<IQ", element_type, len(values))
    if element_type in _NUMPY_OF_TYPE:
        return header + np.asarray(values, dtype=_NUMPY_OF_TYPE[element_type]).tobytes()
    return header + b"".join(_encode_value(v, element_type, key) for v in values)


def _stored_shape(name: str, type_name: str, array: np.ndarray) -> tuple[int, ...]:
    """The NumPy shape a tensor to write will have in the file, checked. A uint8 array given with a block type is
    taken as already-quantized blocks of shape (..., bytes per row)."""
    if type_name not in TYPES:
        raise ValueError(f"tensor {name!r}: unknown ggml type {type_name!r}; known: {', '.join(TYPES)}")
    qtype = TYPES[type_name]
    if array.ndim == 0 or array.ndim > MAX_DIMS:
        raise ValueError(f"tensor {name!r}: GGUF tensors have 1 to {MAX_DIMS} dimensions, got shape {array.shape}")
    if _is_raw_blocks(type_name, array):
        if array.shape[-1] % qtype.block_bytes:
            raise ValueError(f"tensor {name!r}: raw {type_name} rows must be whole {qtype.block_bytes}-byte blocks, "
                             f"got shape {array.shape}")
        return (*array.shape[:-1], array.shape[-1] // qtype.block_bytes * qtype.block_size)
    if type_name in _INTEGER_TYPES and array.dtype.kind not in "iu":
        raise ValueError(f"tensor {name!r}: {type_name} wants integers, got {array.dtype}")
    if type_name not in _INTEGER_TYPES and array.dtype.kind != "f":
        raise ValueError(f"tensor {name!r}: {type_name} wants floating-point values, got {array.dtype}")
    try:
        storage_bytes(type_name, array.shape)
    except ValueError as error:
        raise ValueError(f"tensor {name!r}: {error}") from None
    return array.shape


_INTEGER_TYPES = {"I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


def _is_raw_blocks(type_name: str, array: np.ndarray) -> bool:
    return array.dtype == np.uint8 and type_name not in _INTEGER_TYPES


def _stored_bytes(type_name: str, array: np.ndarray) -> np.ndarray:
    """The bytes one checked tensor is stored as (quantized here, one tensor at a time, while writing)."""
    if _is_raw_blocks(type_name, array):
        return np.ascontiguousarray(array).reshape(-1)
    if type_name in _INTEGER_TYPES:
        return np.ascontiguousarray(array, dtype=_INTEGER_TYPES[type_name]).view(np.uint8).reshape(-1)
    if type_name == "F64":
        return np.ascontiguousarray(array, dtype="<f8").view(np.uint8).reshape(-1)
    return quantize(array, type_name).reshape(-1)


def _padding(position: int, alignment: int) -> bytes:
    return b"\0" * (-position % alignment)


def write_gguf(path, metadata: dict, tensors: dict[str, tuple[str, np.ndarray]],
               alignment: int = DEFAULT_ALIGNMENT) -> None:
    """Write a GGUF version 3 file atomically (a failure leaves no half-written file at `path`).

    `metadata`: key -> value. Python bool/str/int/float are written as BOOL/STRING/INT32/FLOAT32 (ints too big for
    INT32 as INT64); a NumPy scalar such as np.uint32(2048) is written as exactly its type; lists and 1-D arrays
    become arrays (lists of lists nest). `tensors`: name -> (ggml type name, array in NumPy shape order); float
    arrays are converted or quantized to the type, a uint8 array given with a block type is taken as its blocks
    already (shape (..., bytes per row)). `alignment` other than 32 is recorded as `general.alignment`.
    """
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a positive power of two, got {alignment!r}")
    metadata = dict(metadata)
    if "general.alignment" in metadata and metadata["general.alignment"] != alignment:
        raise ValueError(f"metadata general.alignment {metadata['general.alignment']!r} disagrees with "
                         f"alignment={alignment}")
    if alignment != DEFAULT_ALIGNMENT:
        metadata["general.alignment"] = np.uint32(alignment)

    header = [MAGIC, struct.pack("<IQQ", WRITE_VERSION, len(tensors), len(metadata))]
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata keys are strings, got {key!r}")
        if key == "general.alignment":
            value = np.uint32(value)  # llama.cpp reads it as u32 only
        type_id = _value_type(value)
        header += [_encode_string(key), struct.pack("<I", type_id), _encode_value(value, type_id, key)]

    checked = []
    offset = 0
    for name, entry in tensors.items():
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise ValueError(f"tensor {name!r}: expected (type name, array), got {type(entry).__name__}")
        type_name, array = entry[0], np.asarray(entry[1])
        shape = _stored_shape(name, type_name, array)
        ne = tuple(reversed(shape))
        header += [_encode_string(name), struct.pack(f"<I{len(ne)}Q", len(ne), *ne),
                   struct.pack("<IQ", TYPES[type_name].type_id, offset)]
        checked.append((type_name, array))
        size = storage_bytes(type_name, shape)
        offset += size + len(_padding(size, alignment))

    with atomic_write(Path(path), "wb") as handle:
        head = b"".join(header)
        handle.write(head)
        handle.write(_padding(len(head), alignment))
        for type_name, array in checked:
            data = _stored_bytes(type_name, array)
            handle.write(memoryview(data))
            handle.write(_padding(data.size, alignment))
