"""The capture loop reads its rings only with a reason (tracer.drain_gate):
woken by BPF, a ring half full, or the interval gone by. Fake rings."""
from __future__ import annotations

from tracer.drain_gate import DrainGate


class _Ring:
    def __init__(self, size: int, used: int = 0) -> None:
        self.size, self.used = size, used

    def pending_bytes(self) -> int:
        return self.used


def test_quiet_rings_wait_until_the_interval() -> None:
    rings = [_Ring(1 << 20, 1000), _Ring(1 << 20)]
    gate = DrainGate(rings, interval=1.0, now=10.0)
    assert not gate.due(False, 10.1)
    assert not gate.due(False, 10.99)
    assert gate.due(False, 11.0)
    gate.drained(11.0)
    assert not gate.due(False, 11.5)


def test_woken_reads_at_once() -> None:
    gate = DrainGate([_Ring(1 << 20)], interval=1.0, now=0.0)
    assert gate.due(True, 0.01)


def test_a_ring_half_full_is_read() -> None:
    rings = [_Ring(1 << 20), _Ring(1 << 20, (1 << 19) - 8)]
    gate = DrainGate(rings, interval=1.0, now=0.0)
    assert not gate.due(False, 0.1)
    rings[1].used = 1 << 19
    assert gate.due(False, 0.2)


def test_real_ring_reader_counts_unread_bytes(tmp_path) -> None:
    """RingReader.pending_bytes reads the two positions the kernel keeps
    (page 0: consumer, page 1: producer), here in a file laid out the same."""
    import mmap
    import struct

    import numpy as np

    from tracer.ringbuf import RingReader

    page = mmap.PAGESIZE
    size = 4 * page
    f = tmp_path / "ring"
    f.write_bytes(bytes(2 * page + 2 * size))
    with open(f, "r+b") as fh:
        fh.seek(0)
        fh.write(struct.pack("<Q", 4096))          # consumer
        fh.seek(page)
        fh.write(struct.pack("<Q", 4096 + 640))    # producer
        fh.flush()
        r = RingReader(fh.fileno(), size, np.dtype([("x", "<u8")]))
        try:
            assert r.pending_bytes() == 640
            assert r.pending() == 640 // 16
        finally:
            r.close()
