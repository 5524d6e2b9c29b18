"""Each CPU's own fault and event rings (tracer/cpu_rings.py,
bpf/memtrace.bpf.c fault_rings/event_rings): with a kernel (live), every
online CPU's entry of the BPF side's arrays of maps holds the ring memtrace
made for it, a fault taken on a CPU is read from that CPU's ring, and a CPU
given no ring writes to the shared one, which is read too. The sizes and the
merge of several rings are checked without privileges."""
from __future__ import annotations

import mmap
import os
import resource
import struct
import time

import numpy as np
import pytest

from tracer import cpu_rings
from tracer.bpf_syscall import online_cpus
from tracer.layout import EVENT, C

C_MIN = C["MT_CPU_RING_MIN_PAGES"]

live = pytest.mark.live
TOUCH = 16 << 20     # 4096 pages


@pytest.fixture(scope="module")
def kernel_headers():
    from tracer import preflight
    preflight.ensure_kernel_headers(lambda s: None)


def _touch_on(cpu: int) -> int:
    """First touches of TOUCH bytes by this thread, run on `cpu`: the minor
    faults the kernel counted for the thread meanwhile."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        n0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        buf = mmap.mmap(-1, TOUCH)    # fresh pages (malloc might reuse resident ones)
        for i in range(0, TOUCH, 4096):
            buf[i] = 1
        n = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - n0
        buf.close()
        return n
    finally:
        os.sched_setaffinity(0, before)


def _probes(monkeypatch=None, cpus=None):
    from tracer.probes import Probes
    if cpus is not None:
        monkeypatch.setattr(cpu_rings, "online_cpus", lambda: cpus)
    p = Probes(residency=False)
    p.trace_pid(os.getpid())
    return p


@live
def test_each_cpu_writes_its_own_ring(kernel_headers):
    cpus = online_cpus()
    p = _probes()
    try:
        assert not p.cpu_rings_note, p.cpu_rings_note
        assert all(len(r.cpus) == 1 for r in p._cpu_rings)   # up to MAX_RINGS CPUs
        rings = {(r.kind, r.cpus[0]): r for r in p._cpu_rings}
        assert set(rings) == {(k, c) for k in ("faults", "events") for c in cpus}
        assert p.summary_runs is None and not p.table("run_rings").lookup(struct.pack("<I", 0))
        for kind in ("faults", "events"):
            outer = cpu_rings.KINDS[kind][0]
            for cpu in cpus:    # a map of maps gives user space the inner map's id
                raw = p.table(outer).lookup(struct.pack("<I", cpu))
                assert struct.unpack("<I", raw)[0] == rings[(kind, cpu)].map_id
        for cpu in cpus[:2]:
            before = {c: rings[("faults", c)].reader.pending() for c in cpus}
            kernel = _touch_on(cpu)
            time.sleep(0.01)
            got = {c: rings[("faults", c)].reader.pending() - before[c] for c in cpus}
            # a fault is sent at the thread's next one (or syscall): the
            # last may be in the next CPU's ring, or not sent yet
            assert kernel > 1000 and got[cpu] >= kernel - 2, (kernel, got)
            assert sum(got.values()) - got[cpu] < 64, got   # another thread's, not ours
        assert p.rings["faults"].pending() == 0      # nothing needed the shared ring
        faults = p.read_rings("faults")
        assert len(faults) >= 2000
        assert set(faults["pid"].tolist()) == {os.getpid()}
    finally:
        p.close(background=False)


@live
def test_summary_mode_runs_go_to_each_cpus_ring(kernel_headers, workloads, tmp_path):
    """--faults=summary: the runs (a row each) are read from the CPUs' run
    rings and the shared one; the trace's faults equal the kernel's."""
    from tracer.probes import Probes
    p = Probes(residency=False, summary=True)
    try:
        cpus = online_cpus()
        assert sorted(c for r in p._cpu_rings if r.kind == "runs" for c in r.cpus) == cpus
        assert len(p.summary_runs.readers) == 1 + len(cpus)
        for r in p._cpu_rings:
            if r.kind == "runs":
                raw = p.table("run_rings").lookup(struct.pack("<I", r.cpus[0]))
                assert struct.unpack("<I", raw)[0] == r.map_id
    finally:
        p.close(background=False)
    from memtrace_helpers import counter, exec_pids, faults_of, n_faults, run_memtrace
    f = workloads["faults"]
    proc, t = run_memtrace(["--faults=summary", "--", "sh", "-c", f"{f} 64 2 & {f} 64 2 & wait"],
                           tmp_path)
    ev, meta = t.events, t.meta
    assert counter(meta, "summary_ring") > 0              # runs came through the rings
    assert not counter(meta, "summary_full"), meta["counters"]
    pids = exec_pids(ev, "faults")
    assert len(pids) == 2
    spans = []
    for pid in pids:     # two rounds of 64 MiB first touched, and the program's own few
        n = n_faults(ev, pid, major=False)
        assert 2 * 64 * 256 <= n <= 2 * 64 * 256 + 300, (pid, n)
        ts = faults_of(ev, pid)["ts"].astype("uint64")
        spans.append((int(ts.min()), int(ts.max())))
    assert max(a for a, _ in spans) < min(b for _, b in spans), "the two did not overlap"


@live
def test_a_cpu_without_a_ring_writes_the_shared_one(kernel_headers, monkeypatch):
    cpus = online_cpus()
    if len(cpus) < 2:
        pytest.skip("one CPU online")
    p = _probes(monkeypatch, cpus=cpus[:1])
    try:
        assert [r.cpus for r in p._cpu_rings] == [[cpus[0]], [cpus[0]]]
        kernel = _touch_on(cpus[1])
        time.sleep(0.01)
        assert kernel > 1000 and p.rings["faults"].pending() >= kernel - 2
        assert len(p.read_rings("faults")) >= kernel - 2
    finally:
        p.close(background=False)


def test_pages_per_ring():
    assert cpu_rings.pages_per_ring(8192, 2, 2048) == 4096
    assert cpu_rings.pages_per_ring(8192, 3, 2048) == 2048       # 2730: a power of two below
    assert cpu_rings.pages_per_ring(8192, 16, 2048) == 2048      # never under the minimum
    assert cpu_rings.pages_per_ring(8192, 1, 2048) == 8192


class _Ring:
    def __init__(self, ts: list[int]) -> None:
        self.dtype = EVENT
        self.out = np.zeros(len(ts), EVENT)
        self.out["ts"] = ts
        self.out["pid"] = np.arange(len(ts))

    def read(self) -> np.ndarray:
        out, self.out = self.out, self.out[:0]
        return out


def test_read_merges_the_rings_in_time_order():
    a, b, empty = _Ring([1, 4, 9]), _Ring([2, 3, 10]), _Ring([])
    got = cpu_rings.read([a, empty, b], ordered=True)
    assert got["ts"].tolist() == [1, 2, 3, 4, 9, 10]
    a, b = _Ring([5, 5]), _Ring([5])
    got = cpu_rings.read([a, b], ordered=True)
    assert got["pid"].tolist() == [0, 1, 0]                  # stable: ring order on ties
    a, b = _Ring([7, 8]), _Ring([1])
    assert cpu_rings.read([a, b], ordered=False)["ts"].tolist() == [7, 8, 1]
    assert len(cpu_rings.read([_Ring([]), _Ring([])], ordered=True)) == 0


class _Outer:
    """An array of maps that takes `fails_after` entries, then refuses."""

    def __init__(self, fails_after: int = 1 << 30) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.fails_after = fails_after

    def update(self, key: bytes, value: bytes) -> None:
        import errno
        from tracer.bpf_syscall import LoadError
        if len(self.entries) >= self.fails_after:
            raise LoadError(errno.EINVAL, "refused")
        self.entries[key] = value

    def delete(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None


@live
def test_rings_not_made_leave_every_cpu_to_the_shared_ring(kernel_headers):
    cpus = online_cpus()
    outer = {"fault_rings": _Outer(len(cpus)), "event_rings": _Outer(0)}
    made, note = cpu_rings.make(outer, cpus=cpus)
    assert made == [] and "not made" in note
    assert outer["fault_rings"].entries == {} and outer["event_rings"].entries == {}


@live
def test_more_cpus_than_rings_share_them_in_turn(kernel_headers):
    """A machine of 40 CPUs (ids given, arrays faked): MAX_RINGS rings of a
    kind, CPU ids dealt to them in turn, every CPU's entry filled, each
    ring its share of the pages (never under the minimum)."""
    cpus = list(range(40))
    outer = {"fault_rings": _Outer(), "event_rings": _Outer()}
    made, note = cpu_rings.make(outer, cpus=cpus)
    try:
        assert not note
        faults = [r for r in made if r.kind == "faults"]
        assert len(faults) == cpu_rings.MAX_RINGS
        assert sorted(c for r in faults for c in r.cpus) == cpus
        assert faults[1].cpus == [1, 17, 33]
        fd_of = {r.fd: r for r in faults}
        for cpu in cpus:       # each CPU's entry is the ring it was dealt
            fd = struct.unpack("<I", outer["fault_rings"].entries[struct.pack("<I", cpu)])[0]
            assert cpu in fd_of[fd].cpus
        assert all(r.reader.size == C_MIN * mmap.PAGESIZE for r in made)
    finally:
        cpu_rings.close(made)
