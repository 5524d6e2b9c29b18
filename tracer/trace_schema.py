"""The trace's event table: its schema (docs/format.md) and the kinds of
its rows; Arrow columns made from numpy arrays by their buffers (the row
builders of tracer/trace_rows.py), and fixed-width columns viewed back as
numpy (`numpy_view`, for readers that do without pandas).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# numpy -> Arrow by buffers: pa.array() (and Array.to_numpy()) make pyarrow
# import pandas, 0.3 s and 46 MB the recorder does not otherwise need.
NUMPY_TYPES = {pa.uint64(): np.uint64, pa.int64(): np.int64, pa.uint32(): np.uint32,
               pa.int32(): np.int32, pa.uint16(): np.uint16, pa.int16(): np.int16,
               pa.uint8(): np.uint8, pa.int8(): np.int8}


def arrow_array(values: Any, typ: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A numpy array (and validity mask) as an Arrow array of `typ`, zero-copy
    when contiguous; anything else, or another dtype, through pa.array."""
    if isinstance(values, np.ndarray) and typ in NUMPY_TYPES and values.dtype != NUMPY_TYPES[typ] \
            and values.dtype.kind in "iu":       # e.g. int16 ring fields, int32 columns
        values = values.astype(NUMPY_TYPES[typ])
    if not isinstance(values, np.ndarray) or (typ != pa.bool_()
                                              and values.dtype != NUMPY_TYPES.get(typ)):
        return pa.array(values, typ, mask=None if valid is None or valid.all() else ~valid)
    n = len(values)
    if typ == pa.bool_():
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
    else:
        data = pa.py_buffer(np.ascontiguousarray(values))
    if valid is None or valid.all():
        return pa.Array.from_buffers(typ, n, [None, data], null_count=0)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(typ, n, [bitmap, data], null_count=n - int(np.count_nonzero(valid)))


def string_array(values: list[str]) -> pa.Array:
    """Strings (no nulls) as an Arrow string array."""
    try:
        enc = [v.encode() for v in values]
    except UnicodeEncodeError:
        return pa.array(values, pa.string())      # its error, as before
    offsets = np.zeros(len(enc) + 1, np.int32)
    np.cumsum([len(b) for b in enc], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(enc),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(enc))])


def numpy_view(col: pa.Array) -> np.ndarray:
    """A fixed-width column without nulls as a numpy view."""
    dt = np.dtype(NUMPY_TYPES[col.type])
    return np.frombuffer(col.buffers()[1], dt, count=len(col), offset=col.offset * dt.itemsize)


KINDS = ["brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "fault",
         "fork", "thread", "exec", "exit", "rename", "rss", "map", "open"]
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
_STR_DICT = pa.dictionary(pa.int32(), pa.string())

SCHEMA = pa.schema([
    ("ts", pa.uint64()), ("pid", pa.int32()), ("tid", pa.int32()),
    ("comm", _STR_DICT), ("kind", pa.dictionary(pa.int8(), pa.string())),
    ("addr", pa.uint64()), ("len", pa.uint64()), ("prot", pa.int32()),
    ("flags", pa.uint64()), ("fd", pa.int32()), ("off", pa.uint64()),
    ("new_len", pa.uint64()), ("new_addr", pa.uint64()),
    ("ret", pa.int64()), ("duration", pa.uint64()),
    ("ip", pa.uint64()), ("major", pa.bool_()), ("error_code", pa.uint16()),
    ("latency", pa.uint32()),
    ("rss_anon", pa.int32()), ("rss_file", pa.int32()),
    ("rss_shmem", pa.int32()), ("rss_swap", pa.int32()),
    ("child", pa.int32()), ("path", _STR_DICT),
    ("member", pa.int8()), ("rss_size", pa.int64()), ("rss_delta", pa.int64()),
    ("cause", _STR_DICT), ("inode", pa.uint64()),
    ("alloc", pa.uint32()), ("stack_id", pa.int32()),
    ("count", pa.uint32()), ("last_ts", pa.uint64()), ("pages", pa.uint16()),
])

_zero = [pa.py_buffer(bytes(1 << 16))]    # shared by the arrays of zeros and of nulls
EMPTY_STRINGS = string_array([])


def zero_array(n: int, typ: pa.DataType) -> pa.Array:
    """An array of n zeros (false, for bool) that allocates nothing."""
    _grow(n * max(typ.bit_width // 8, 1) + 8)
    return pa.Array.from_buffers(typ, n, [None, _zero[0]], null_count=0)


def _grow(need: int) -> None:
    if _zero[0].size < need:
        _zero[0] = pa.py_buffer(bytes(max(need, 2 * _zero[0].size)))


def null_array(n: int, typ: pa.DataType) -> pa.Array:
    """An all-null array that allocates nothing: every one shares a buffer
    of zeros (validity and values alike)."""
    if pa.types.is_dictionary(typ):
        return pa.DictionaryArray.from_arrays(null_array(n, typ.index_type), EMPTY_STRINGS,
                                              safe=False)
    _grow(n * max(typ.bit_width // 8, 1) + 8)
    z = _zero[0]
    return pa.Array.from_buffers(typ, n, [z, z], null_count=n)


def bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """n bits of an Arrow bitmap (validity, or a bool column's values) from
    bit `offset`, as bools. Only the bytes holding them are unpacked: a
    column's chunk may be a slice of a whole flush's buffer (a spill batch
    of tracer.writer), and every column of nulls shares one large buffer
    of zeros (null_array): a null chunk of 65,536 rows took 2.0 ms unpacked
    whole beside a 1.6 MB buffer, 0.018 ms so (/tmp microbenchmark)."""
    first = offset >> 3
    raw = np.frombuffer(buf, np.uint8, count=((offset + n + 7) >> 3) - first, offset=first)
    start = offset & 7
    return np.unpackbits(raw, count=start + n, bitorder="little")[start:].view(bool)


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with plain strings for its dictionary columns (as in CSV)."""
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type)
                      for f in schema])

