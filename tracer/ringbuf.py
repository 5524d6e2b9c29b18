"""Batch reader of a BPF ring buffer of fixed-size records, without a
Python call per record.

The kernel lets user space mmap a ring buffer map (kernel/bpf/ringbuf.c;
libbpf's ring_buffer__add does the same): page 0 is the consumer position
(read-write), page 1 the producer position, then the data pages mapped twice
in a row, so a record that wraps is still contiguous. Each record is an
8-byte header (u32 length with BUSY 1<<31 and DISCARD 1<<30 bits, u32 page
offset) and the data, rounded up to 8 bytes. memtrace's records all have one
size per ring, so a ring's unread span is an array of equal strides that
numpy can view and copy in one go.
"""
from __future__ import annotations

import mmap
import struct
import threading
import time

import numpy as np

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8
_LEN_MASK = np.uint32(~(BUSY | DISCARD) & 0xFFFFFFFF)
_POS = struct.Struct("<Q")


def record_dtype(dtype: np.dtype) -> np.dtype:
    """One ring slot: the kernel's header, the record, padding to 8 bytes."""
    stride = HDR + ((dtype.itemsize + 7) & ~7)
    fields = [("hdr_len", "<u4"), ("hdr_pgoff", "<u4"), ("rec", dtype)]
    if stride - HDR - dtype.itemsize:
        fields.append(("_pad", "V%d" % (stride - HDR - dtype.itemsize)))
    return np.dtype(fields)


def decode(data: np.ndarray, start: int, avail: int, slot: np.dtype,
           limit: int | None = None) -> tuple[np.ndarray, int]:
    """Copies the committed records from `data[start:start+avail]`.

    Returns (records, bytes consumed). Stops before the first record still
    being written (BUSY); drops discarded ones."""
    n = avail // slot.itemsize
    if limit is not None:
        n = min(n, limit)
    rec_type = slot.fields["rec"][0]
    if n <= 0:
        return np.empty(0, rec_type), 0
    view = data[start:start + n * slot.itemsize].view(slot)
    lens = view["hdr_len"]
    if not (lens != np.uint32(rec_type.itemsize)).any():     # all committed, none discarded
        return _records(data, start, n, slot, rec_type), n * slot.itemsize
    busy = np.flatnonzero(lens & np.uint32(BUSY))
    if busy.size:
        n = int(busy[0])
        view, lens = view[:n], lens[:n]
    bad = (lens & _LEN_MASK) != rec_type.itemsize
    if bad.any():
        raise RuntimeError(f"ring buffer record of unexpected size {int(lens[bad][0] & _LEN_MASK)}")
    out = _records(data, start, n, slot, rec_type)
    discarded = (lens & np.uint32(DISCARD)) != 0
    if discarded.any():
        out = out[~discarded]
    return out, n * slot.itemsize


def _records(data: np.ndarray, start: int, n: int, slot: np.dtype, rec_type: np.dtype) -> np.ndarray:
    """The n records after their headers, copied as bytes (numpy copies a
    structured field slot by slot, several times slower), their C strings
    cut at the first NUL."""
    raw = data[start:start + n * slot.itemsize]
    if rec_type.itemsize % 8 == 0 and start % 8 == 0:
        # by 8-byte words: numpy copies a row element by element, and 7 words
        # go 40% faster than 56 bytes (a fault record)
        words = raw.view(np.uint64).reshape(n, slot.itemsize // 8)
        body = words[:, HDR // 8:(HDR + rec_type.itemsize) // 8].copy().view(np.uint8)
    else:
        body = raw.reshape(n, slot.itemsize)[:, HDR:HDR + rec_type.itemsize].copy()
    for off, size in _string_fields(rec_type):
        # BPF's *_read_str stops at the NUL and leaves the rest of the
        # reserved record as it was: bytes of an older record once the ring
        # has wrapped. numpy strips trailing NULs only.
        s = body[:, off:off + size]
        s[np.logical_or.accumulate(s == 0, axis=1)] = 0
    return body.view(rec_type).reshape(n)


def _string_fields(dtype: np.dtype) -> list[tuple[int, int]]:
    """(offset, size) of the char-array fields of a record type."""
    return [(off, f.itemsize) for f, off, *_ in dtype.fields.values()
            if f.kind == "S" and f.itemsize > 1]


class RingReader:
    """Reads whole batches of `dtype` records from ring buffer map `fd`."""

    def __init__(self, fd: int, data_size: int, dtype: np.dtype) -> None:
        page = mmap.PAGESIZE
        self.size = data_size
        self.mask = data_size - 1
        self.slot = record_dtype(dtype)
        self.dtype = dtype
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data: np.ndarray | None = np.frombuffer(self._prod, dtype=np.uint8, offset=page)
        self.records = 0
        # CLOCK_MONOTONIC ns (the clock of the records' ts) of the last read
        # that consumed every record reserved when it began: each record not
        # read yet was reserved after that instant, and BPF stamps a record
        # after reserving it, so its ts is later (0: no such read yet). The
        # watermark below which the rows read so far are final in time order.
        self.drained_to = 0
        # records copied out by `stash` (tracer.ring_pump's thread) and not
        # returned by `read` yet: their space in the ring is free again; the
        # watermark of a stash moves to drained_to only when `read` returns
        # its records (before, rows not yet handed over would count as final)
        self._stash: list[np.ndarray] = []
        self.stashed_bytes = 0
        self._stash_drained_to = 0
        self._lock = threading.Lock()

    def _pos(self) -> tuple[int, int]:
        return _POS.unpack_from(self._cons, 0)[0], _POS.unpack_from(self._prod, 0)[0]

    def _take(self) -> tuple[np.ndarray, int]:
        """Copies out every committed record and frees their space: the
        records, and the read's start if it consumed all (else 0)."""
        began = time.monotonic_ns()
        cons, prod = self._pos()
        out, used = decode(self._data, cons & self.mask, prod - cons, self.slot)
        if used:
            _POS.pack_into(self._cons, 0, cons + used)
        return out, began if used == prod - cons else 0

    def read(self) -> np.ndarray:
        """Every committed record (those stashed first), their space freed."""
        with self._lock:
            out, complete = self._take()
            if self._stash:
                out = np.concatenate([*self._stash, out])
                self.drained_to = max(self.drained_to, self._stash_drained_to)
                self._stash, self.stashed_bytes = [], 0
            if complete:  # not stopped by a record still being written
                self.drained_to = complete
            self.records += len(out)
            return out

    def stash(self, cap_bytes: int) -> int:
        """Copies the committed records out of the ring into memory, for the
        next `read`, unless `cap_bytes` are stashed already: the records
        stashed now."""
        with self._lock:
            if self._data is None or self.stashed_bytes >= cap_bytes:
                return 0
            out, complete = self._take()
            if len(out):
                self._stash.append(out)
                self.stashed_bytes += len(out) * self.slot.itemsize
            if complete:
                self._stash_drained_to = complete
            return len(out)

    def pending(self) -> int:
        return self.pending_bytes() // self.slot.itemsize

    def pending_bytes(self) -> int:
        """Bytes reserved and not read yet, stashed ones included
        (tracer.drain_gate)."""
        return self.ring_bytes() + self.stashed_bytes

    def ring_bytes(self) -> int:
        """Bytes reserved in the ring and not copied out."""
        cons, prod = self._pos()
        return prod - cons

    def close(self) -> None:
        """Unmaps the ring; again, nothing (a CPU's ring is closed with the
        others and with its descriptor: tracer/cpu_rings.py)."""
        with self._lock:
            if self._data is None:
                return
            self._data = None
        self._cons.close()
        try:
            self._prod.close()
        except BufferError:  # a caller still holds a view: the GC unmaps it
            pass
