"""tracer.ringbuf's stash and tracer.ring_pump (no privileges: a file laid
out as the kernel lays a ring buffer map out, page 0 the consumer position,
page 1 the producer's, then the data)."""
from __future__ import annotations

import mmap
import struct
import time

import numpy as np
import pytest

from tracer import ringbuf
from tracer.ring_pump import RingPump

PAGE = mmap.PAGESIZE
SIZE = 4 * PAGE
REC = np.dtype([("ts", "<u8"), ("x", "<u8")])


class FileRing:
    """A ring in a file: `produce` commits records as BPF would."""

    def __init__(self, path) -> None:
        path.write_bytes(bytes(2 * PAGE + 2 * SIZE))
        self.fh = open(path, "r+b")
        self.prod = 0
        self.slot = ringbuf.record_dtype(REC)
        self.reader = ringbuf.RingReader(self.fh.fileno(), SIZE, REC)

    def produce(self, ts: list[int]) -> None:
        buf = np.zeros(len(ts), self.slot)
        buf["hdr_len"] = REC.itemsize
        buf["rec"]["ts"] = ts
        self.fh.seek(2 * PAGE + self.prod)       # no wrap in these tests
        self.fh.write(buf.tobytes())
        self.prod += buf.nbytes
        self.fh.seek(PAGE)
        self.fh.write(struct.pack("<Q", self.prod))
        self.fh.flush()

    def close(self) -> None:
        self.reader.close()
        self.fh.close()


@pytest.fixture
def ring(tmp_path):
    r = FileRing(tmp_path / "ring")
    yield r
    r.close()


def test_stash_frees_the_ring_and_read_returns_it_first(ring):
    r = ring.reader
    ring.produce([1, 2, 3])
    assert r.stash(cap_bytes=SIZE) == 3
    assert r.ring_bytes() == 0                       # the ring's space is free again
    assert r.pending_bytes() == 3 * ring.slot.itemsize   # the gate still sees them
    ring.produce([4, 5])
    assert list(r.read()["ts"]) == [1, 2, 3, 4, 5]
    assert r.pending_bytes() == 0 and r.records == 5
    assert len(r.read()) == 0


def test_a_stash_moves_the_watermark_only_when_read(ring):
    """Rows of a stash are not handed over yet: were drained_to to move at
    the stash, a flush would count them final and write later rows first."""
    r = ring.reader
    ring.produce([10, 11])
    r.read()
    first = r.drained_to
    assert first > 0
    ring.produce([12])
    r.stash(cap_bytes=SIZE)
    assert r.drained_to == first
    assert list(r.read()["ts"]) == [12]
    assert r.drained_to > first


def test_the_stash_stops_at_its_cap(ring):
    r = ring.reader
    ring.produce([1, 2])
    assert r.stash(cap_bytes=2 * ring.slot.itemsize) == 2
    ring.produce([3])
    assert r.stash(cap_bytes=2 * ring.slot.itemsize) == 0   # left in the ring
    assert r.ring_bytes() == ring.slot.itemsize
    assert list(r.read()["ts"]) == [1, 2, 3]


def test_pump_copies_only_rings_filling(ring):
    r = ring.reader
    per = ring.slot.itemsize
    pump = RingPump([r], fill=0.25)
    ring.produce(list(range(SIZE // per // 8)))      # an eighth full: left
    assert pump.turn() == 0 and r.ring_bytes() > 0
    ring.produce(list(range(SIZE // per // 4)))      # now over a quarter
    n = pump.turn()
    assert n == SIZE // per // 8 + SIZE // per // 4 and r.ring_bytes() == 0
    assert pump.stashed == n
    assert len(r.read()) == n


def test_pump_thread_starts_and_stops(ring):
    r = ring.reader
    ring.produce(list(range(SIZE // ring.slot.itemsize // 2)))
    pump = RingPump([r], interval=0.01, fill=0.25).start()
    try:
        for _ in range(500):
            if r.ring_bytes() == 0:
                break
            time.sleep(0.01)
    finally:
        pump.stop()
    assert r.ring_bytes() == 0 and pump.stashed > 0
    RingPump([]).start().stop()                      # no rings: no thread
