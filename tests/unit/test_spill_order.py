"""The spill's time order across flushes (rows held back above the rings'
watermark), the rings' watermark itself, and a final conversion that fails
leaving no half-written file."""
import errno
import mmap
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

import tracer
from tracer import layout, ringbuf, trace_rows, trace_schema, writer
from tracer.errors import OutputError

C = layout.C
META = {"format_version": C["MT_FORMAT_VERSION"], "complete": True, "lost": 0}


def _faults(ts, tid=7):
    f = np.zeros(len(ts), layout.FAULT)
    f["ts"] = ts
    f["pid"], f["tid"] = 7, tid
    f["addr"] = np.arange(len(ts)) * 4096
    return f


def _events(ts):
    e = np.zeros(len(ts), layout.EVENT)
    e["ts"] = ts
    e["pid"], e["tid"] = 7, 8
    e["comm"] = b"prog"
    e["kind"] = C["MT_EV_MUNMAP"]
    e["args"][:, 1] = 4096
    return e


def _spill_ts(spill):
    spill._sink.flush()
    with pa.OSFile(str(spill.path)) as f:
        t = ipc.open_stream(f).read_all()
    return t.column("ts").to_pylist(), t.column("kind").to_pylist()


def test_rows_above_the_watermark_wait_for_the_next_write(tmp_path):
    comms = trace_rows.CommTable()
    spill = writer.Spill(tmp_path / "t.parquet")
    # one flush: faults read up to ts 50, events up to 30; the events ring's
    # next record (ts 35) is still unread, so the watermark is 31
    spill.write([trace_rows.fault_batch(_faults([10, 20, 40, 50]), comms),
                 trace_rows.event_batch(_events([15, 30]), comms)], before=31)
    assert _spill_ts(spill)[0] == [10, 15, 20, 30]
    spill.write([trace_rows.event_batch(_events([35, 60]), comms),
                 trace_rows.fault_batch(_faults([55]), comms)], before=58)
    assert _spill_ts(spill)[0] == [10, 15, 20, 30, 35, 40, 50, 55]
    spill.write([trace_rows.fault_batch(_faults([65]), comms)])       # the last: everything
    ts, kinds = _spill_ts(spill)
    assert ts == [10, 15, 20, 30, 35, 40, 50, 55, 60, 65]
    assert kinds == ["fault", "munmap", "fault", "munmap", "munmap", "fault", "fault",
                     "fault", "munmap", "fault"]
    assert spill.rows == 10


def test_held_rows_are_written_at_finish(tmp_path):
    comms = trace_rows.CommTable()
    out = tmp_path / "t.parquet"
    spill = writer.Spill(out)
    events = trace_rows.event_batch(_events([15]), comms)      # names thread 8 first
    spill.write([trace_rows.fault_batch(_faults([10, 20], tid=8), comms), events], before=12)
    spill.finish("parquet", META)
    t = tracer.load(out)
    assert t.events.ts.tolist() == [10, 15, 20]
    assert t.events.comm.tolist() == ["prog"] * 3       # dictionaries survive the hold


def test_write_without_watermark_sorts_across_rings(tmp_path):
    comms = trace_rows.CommTable()
    spill = writer.Spill(tmp_path / "t.parquet")
    spill.write([trace_rows.fault_batch(_faults([5, 25]), comms),
                 trace_rows.event_batch(_events([1, 30]), comms)])
    assert _spill_ts(spill)[0] == [1, 5, 25, 30]


# ---- the rings' watermark ----

class _FakeRing:
    """A file laid out as a BPF ring buffer map's mmap: consumer page,
    producer page, data (not mapped twice: no record here wraps)."""

    def __init__(self, slots: int, dtype: np.dtype):
        self.page = mmap.PAGESIZE
        self.slot = ringbuf.record_dtype(dtype)
        self.size = self.page
        while self.size < slots * self.slot.itemsize:
            self.size *= 2
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * self.page + 2 * self.size)
        self.prod = 0

    def commit(self, records: np.ndarray, flags: int = 0) -> None:
        buf = np.zeros(len(records), self.slot)
        buf["hdr_len"] = np.uint32(records.dtype.itemsize) | np.uint32(flags)
        buf["rec"] = records
        os.pwrite(self.fd, buf.tobytes(), 2 * self.page + self.prod)
        self.prod += buf.nbytes
        os.pwrite(self.fd, np.uint64(self.prod).tobytes(), self.page)

    def unbusy(self, index: int) -> None:
        """The record at slot `index` is submitted: its BUSY bit cleared."""
        off = 2 * self.page + index * self.slot.itemsize
        os.pwrite(self.fd, np.uint32(layout.FAULT.itemsize).tobytes(), off)


def test_drained_to_advances_only_when_a_read_reaches_the_end():
    ring = _FakeRing(8, layout.FAULT)
    r = ringbuf.RingReader(ring.fd, ring.size, layout.FAULT)
    try:
        assert r.drained_to == 0
        t0 = time.monotonic_ns()
        assert len(r.read()) == 0            # empty: read to its end
        first = r.drained_to
        assert first >= t0
        ring.commit(_faults([1, 2]))
        ring.commit(_faults([3]), ringbuf.BUSY)   # reserved, still being written
        ring.commit(_faults([4]))
        assert r.read()["ts"].tolist() == [1, 2]
        assert r.drained_to == first         # record 3 may be older than this read
        ring.unbusy(2)
        assert r.read()["ts"].tolist() == [3, 4]
        assert r.drained_to > first
    finally:
        r.close()
        os.close(ring.fd)


# ---- a final conversion that fails ----

def _spill_with_rows(out):
    spill = writer.Spill(out)
    spill.write([trace_rows.fault_batch(_faults(list(range(1, 200))), trace_rows.CommTable())])
    return spill


_regroup = writer._regroup


def _disk_full_after_first(reader, rows):
    yield next(iter(_regroup(reader, rows)))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_failed_conversion_leaves_no_tmp(tmp_path, monkeypatch, fmt):
    out = tmp_path / f"t.{fmt}"
    spill = _spill_with_rows(out)
    monkeypatch.setattr(writer, "_regroup", _disk_full_after_first)
    with pytest.raises(OutputError, match="No space left"):
        spill.finish(fmt, META)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"t.{fmt}.partial"]
    t = tracer.load(out)                      # the spill: cut short, but readable
    assert not t.complete and len(t.events) == 199


def test_failed_rename_leaves_no_csv_metadata(tmp_path, monkeypatch):
    out = tmp_path / "t.csv"
    spill = _spill_with_rows(out)

    def replace(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(writer.os, "replace", replace)
    with pytest.raises(OutputError, match="Input/output error"):
        spill.finish("csv", META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv.partial"]


# ---- the reordering itself ----

def test_take_by_numpy_is_arrows_take():
    """writer._take (numpy, no pyarrow.compute) gives Arrow's take: values,
    nulls, bools, dictionaries of differing chunks, chunks that are slices."""
    rng = np.random.default_rng(3)
    comms = trace_rows.CommTable()
    batches = []
    for i in range(4):
        f = _faults(np.sort(rng.integers(0, 10**6, 50)), tid=7 + i)
        f["flags"] = rng.integers(0, 4, 50) * C["MT_FAULT_MAJOR"]
        f["rss_anon"] = rng.integers(0, 2, 50)
        comms.update([7 + i], [f"t{i}"])
        e = _events(np.sort(rng.integers(0, 10**6, 30)))
        e["comm"] = f"e{i}".encode()
        batches += [trace_rows.fault_batch(f, comms).slice(3, 40), trace_rows.event_batch(e, comms)]
    table = pa.Table.from_batches(batches).unify_dictionaries()
    order = rng.permutation(table.num_rows)
    ours = writer._take(table, order)
    theirs = table.take(pa.array(order))
    assert ours.equals(theirs.cast(ours.schema))
    assert any(c.null_count for c in ours.columns) and ours.column("major").null_count < len(order)
    # the held rows' copy: a slice starting inside a chunk, at a bit offset
    rest = table.slice(61).unify_dictionaries()
    assert writer._take(rest, np.arange(rest.num_rows)).equals(rest.cast(ours.schema))
    # a chunk of its own dictionary (not unified) is taken as well
    mixed = pa.Table.from_batches(batches)
    assert writer._take(mixed, order).equals(theirs.cast(ours.schema))


def test_bits_are_the_bitmaps_bits_from_any_offset():
    """trace_schema.bits unpacks only the bytes it needs, and gives the
    same bits as the whole bitmap unpacked: any offset, any length (0
    too), at the buffer's end."""
    rng = np.random.default_rng(11)
    raw = rng.integers(0, 256, 37, dtype=np.uint8)
    buf = pa.py_buffer(raw.tobytes())
    whole = np.unpackbits(raw, bitorder="little").astype(bool)
    for offset in (0, 1, 7, 8, 13, 200, 295, 296):
        for n in (0, 1, 5, 8, 9, 64, len(whole) - offset):
            if offset + n <= len(whole):
                assert trace_schema.bits(buf, offset, n).tolist() == whole[offset:offset + n].tolist()
