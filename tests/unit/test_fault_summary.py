"""tracer.fault_summary: BPF summary entries (the hash's, and the per-CPU
runs not flushed yet) -> fault rows; the drain's cut and watermark."""
from __future__ import annotations

import numpy as np

from tracer import fault_summary, layout
from tracer.fault_summary import ROW, SummaryReader, merge, with_runs


def _entries(n: int, cpus: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.zeros(n, layout.SUMMARY_KEY)
    values = np.zeros((n, cpus), layout.SUMMARY)
    return keys, values


def _fields(v, *values) -> None:
    """Fills entry value `v` by name (the header's order may change)."""
    names = ("count", "first_ts", "last_ts", "addr", "ip", "latency", "rss_anon", "rss_file",
             "rss_shmem", "rss_swap", "alloc", "tid", "pages", "pad", "untimed")
    for name, x in zip(names, values, strict=True):
        v[name] = x


def test_merge_sums_counts_and_keeps_the_first_fault():
    keys, v = _entries(2, 2)
    keys["pid"] = [10, 11]
    keys["error_code"] = [6, 4]
    keys["flags"] = [0, 1]
    # entry 0: 3 faults on CPU 0 from t=200, 2 on CPU 1 from t=100
    _fields(v[0, 0], 3, 200, 290, 0x7000_1000, 0x400, 0, 3, 0, 0, 0, 0, 7, 0b0110, 0, 0)
    _fields(v[0, 1], 2, 100, 150, 0x7000_0000, 0x500, 0, 2, 0, 0, 0, 0, 8, 0b0001, 0, 0)
    # entry 1: a major fault moved off CPU 0 (-1 there), counted on CPU 1
    _fields(v[1, 0], -1, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0)
    _fields(v[1, 1], 2, 50, 60, 0x8000_0000, 0, 4000, 0, 2, 0, 0, 0, 9, 0b1, 0, 0)
    rows = merge(keys, v)
    assert rows.dtype == ROW and len(rows) == 2
    first, second = rows[1], rows[0]          # time order: entry 1 starts at 50
    assert (first["count"], first["ts"], first["last_ts"]) == (5, 100, 290)
    assert (first["addr"], first["ip"], first["tid"]) == (0x7000_0000, 0x500, 8)
    assert first["pages"] == 0b0111 and first["rss_anon"] == 5 and first["pid"] == 10
    assert (second["count"], second["latency"], second["rss_anon"]) == (1, 4000, -1)
    assert second["flags"] == 1 and second["error_code"] == 4


def test_major_latency_is_the_mean_of_the_timed_faults():
    # 3 majors on one key: two timed (4000 + 2000 ns), one not (a swap-in:
    # it did not pass filemap_fault); another key's single major untimed
    keys, v = _entries(2, 2)
    keys["flags"] = [1, 1]
    keys["pid"] = [10, 11]
    v[0, 0]["count"], v[0, 0]["first_ts"], v[0, 0]["latency"] = 2, 100, 6000
    v[0, 1]["count"], v[0, 1]["first_ts"], v[0, 1]["untimed"] = 1, 150, 1
    v[1, 0]["count"], v[1, 0]["first_ts"], v[1, 0]["untimed"] = 1, 200, 1
    rows = merge(keys, v)
    assert [(int(r["count"]), int(r["latency"]), int(r["untimed"])) for r in rows] == [
        (3, 3000, 1), (1, 0, 1)]
    from tracer.trace_rows import CommTable, summary_batch
    latency = summary_batch(rows, CommTable()).column("latency").to_pylist()
    assert latency == [3000, None]     # none of the second's faults timed: no latency


def test_merge_drops_entries_that_count_nothing():
    keys, v = _entries(3, 1)
    v[:, 0]["count"] = [0, 1, -0]
    v[:, 0]["first_ts"] = [5, 6, 7]
    rows = merge(keys, v)
    assert len(rows) == 1 and rows[0]["ts"] == 6
    assert len(merge(*_entries(0, 4))) == 0


# ---- the runs BPF keeps per CPU (summary_acc), and the drain around them ----

def _key(pid: int, slot: int, block: int = 0x7000) -> np.ndarray:
    k = np.zeros((), layout.SUMMARY_KEY)
    k["pid"], k["slot"], k["block"] = pid, slot, block
    return k


def _value(count: int, first_ts: int, last_ts: int, pages: int = 1, rss_anon: int = 0,
           tid: int = 0) -> np.ndarray:
    v = np.zeros((), layout.SUMMARY)
    v["count"], v["first_ts"], v["last_ts"], v["pages"] = count, first_ts, last_ts, pages
    v["rss_anon"], v["tid"], v["addr"] = rss_anon, tid, 0x7000_0000
    return v


def _run(key: np.ndarray, value: np.ndarray, live: int = 1) -> np.ndarray:
    r = np.zeros((), layout.SUMMARY_ACC)
    r["key"], r["v"], r["live"], r["seq"] = key, value, live, 2
    return r


class _Def:
    def __init__(self, key_size: int) -> None:
        self.key_size = key_size


class FakeHash:
    """fault_summary as tracer.bpf_syscall.Map shows it (shared: 1 CPU column)."""
    ncpus, slot = 1, layout.SUMMARY.itemsize

    def __init__(self, entries) -> None:
        self.entries = {k.tobytes(): v for k, v in entries}
        self.deleted: list[np.ndarray] = []

    def lookup_batch(self):
        keys = b"".join(self.entries)
        values = b"".join(v.tobytes() for v in self.entries.values())
        return keys, values, len(self.entries)

    def delete_batch(self, keys: bytes) -> int:
        ks = np.frombuffer(keys, layout.SUMMARY_KEY)
        for k in ks:
            del self.entries[k.tobytes()]
        self.deleted.extend(ks)
        return len(ks)


class FakeRuns:
    """summary_acc: one entry, a value per CPU (the struct is a multiple of 8)."""
    slot = layout.SUMMARY_ACC.itemsize

    def __init__(self, runs) -> None:
        self.ncpus = len(runs)
        self.d = _Def(4)
        self.value_bytes = self.slot * self.ncpus
        self.raw = np.array(runs, layout.SUMMARY_ACC).tobytes()

    def lookup(self, key: bytes) -> bytes:
        assert key == bytes(4)
        return self.raw

    def update(self, key: bytes, value: bytes) -> None:
        assert len(value) == self.value_bytes
        self.raw = value


def _reader(entries, runs, monkeypatch):
    monkeypatch.setattr(fault_summary, "HOLD_SETTLE", 0)
    held = []
    r = SummaryReader(FakeHash(entries), FakeRuns(runs), hold=lambda: held.append(1))
    return r, held


def test_with_runs_joins_a_run_to_the_entry_of_its_key():
    keys = np.array([_key(10, 5), _key(11, 5)])
    values = np.array([_value(3, 200, 300, pages=0b11)])[:, None].repeat(2, 0)
    values[1, 0] = _value(1, 400, 400)
    runs = np.array([_run(_key(10, 5), _value(2, 100, 350, pages=0b100, tid=7)),
                     _run(_key(12, 6), _value(4, 500, 600)),
                     _run(_key(11, 5), _value(9, 1, 1), live=0)])      # flushed: ignored
    k, v = with_runs(keys, values, runs)
    assert v.shape == (3, 3) and list(k["pid"]) == [10, 11, 12]
    rows = merge(k, v)
    by_pid = {int(r["pid"]): r for r in rows}
    r10 = by_pid[10]
    assert (r10["count"], r10["ts"], r10["last_ts"], r10["tid"]) == (5, 100, 350, 7)
    assert r10["pages"] == 0b111
    assert by_pid[11]["count"] == 1 and by_pid[12]["count"] == 4
    # two CPUs' runs of one key no entry has: one row
    k3, v3 = with_runs(keys, values, np.array([_run(_key(13, 7), _value(1, 90, 91)),
                                              _run(_key(13, 7), _value(2, 80, 95))]))
    rows = merge(k3, v3)
    assert v3.shape == (3, 3) and list(k3["pid"]) == [10, 11, 13]
    assert [(int(r["pid"]), int(r["count"]), int(r["ts"]), int(r["last_ts"]))
            for r in rows if r["pid"] == 13] == [(13, 3, 80, 95)]
    # nothing pending: unchanged
    k2, v2 = with_runs(keys, values, runs[2:])
    assert k2 is keys and v2 is values


def test_drain_holds_back_the_slot_of_a_run_still_on_a_cpu(monkeypatch):
    """A run of slot 8 not flushed yet: slot 5 is drained, slots 8 and 9
    stay in the map (the run will be added to its entry), and the watermark
    stays at slot 8's start (a row of slot 8 may still come)."""
    shift = fault_summary.SLOT_SHIFT
    entries = [(_key(1, 5), _value(1, 5 << shift, 5 << shift)),
               (_key(1, 8), _value(2, 8 << shift, 8 << shift)),
               (_key(1, 9), _value(4, 9 << shift, 9 << shift))]
    run = _run(_key(1, 8), _value(16, (8 << shift) + 10, (8 << shift) + 20))
    r, held = _reader(entries, [run, _run(_key(2, 3), _value(1, 3 << shift, 3 << shift), 0)],
                      monkeypatch)
    now = 12 << shift                       # cut without runs: slot 9
    rows = r.drain(now)
    assert list(rows["count"]) == [1] and r.faults == 1
    assert r.drained_to == 8 << shift
    assert sorted(k.tobytes() for k in r.table.deleted) == [_key(1, 5).tobytes()]
    assert not held
    # the run flushed meanwhile (in the map now, and no longer live): both go
    r.table.entries[_key(1, 8).tobytes()]["count"] += 16
    flushed = _run(_key(1, 8), _value(16, 0, 0), live=0)
    r.runs.raw = FakeRuns([flushed, flushed]).raw
    rows = r.drain(now + (1 << shift))      # slot 13: cut 10
    assert list(rows["count"]) == [18, 4] and r.drained_to == 10 << shift


def test_final_drain_merges_the_runs_left_on_the_cpus(monkeypatch):
    shift = fault_summary.SLOT_SHIFT
    entries = [(_key(1, 8), _value(2, (8 << shift) + 5, (8 << shift) + 6, rss_anon=2)),
               (_key(1, 9), _value(4, 9 << shift, 9 << shift))]
    runs = [_run(_key(1, 8), _value(16, 8 << shift, (8 << shift) + 9, pages=0xfffe,
                                    rss_anon=16)),
            _run(_key(3, 9), _value(5, (9 << shift) + 1, (9 << shift) + 2))]
    r, held = _reader(entries, runs, monkeypatch)
    rows = r.drain(9 << shift, final=True)
    assert held == [1] and not r.table.entries
    assert [(int(x["pid"]), int(x["count"])) for x in rows] == [(1, 18), (1, 4), (3, 5)]
    assert rows[0]["ts"] == 8 << shift and rows[0]["rss_anon"] == 18
    assert rows[0]["pages"] == 0xffff
    assert r.faults == 27
    # the runs read are cleared: a second read finds none
    assert len(r.pending()) == 0


def test_drain_holds_back_the_slot_of_a_fault_still_asleep(monkeypatch):
    """A counted fault parked in slot 6 (a major fault waiting for its page:
    its end moves it out of slot 6's entry): slots 6 and after stay; one
    asleep for longer than HOLD_MAX slots holds nothing back."""
    shift = fault_summary.SLOT_SHIFT
    entries = [(_key(1, 5), _value(1, 5 << shift, 5 << shift)),
               (_key(1, 6), _value(2, 6 << shift, 6 << shift))]
    monkeypatch.setattr(fault_summary, "HOLD_SETTLE", 0)
    asleep = [np.array([6], np.uint32)]
    r = SummaryReader(FakeHash(entries), FakeRuns([]), sleeping=lambda: asleep[0])
    rows = r.drain(12 << shift)
    assert list(rows["count"]) == [1] and r.drained_to == 6 << shift
    asleep[0] = np.array([6], np.uint32)
    rows = r.drain((6 + fault_summary.HOLD_MAX + 1) << shift)
    assert list(rows["count"]) == [2]


class FakeRing:
    """summary_runs (tracer.ringbuf.RingReader): what was sent since the last read."""

    def __init__(self) -> None:
        self.sent: list[np.ndarray] = []

    def read(self) -> np.ndarray:
        out = np.array(self.sent, layout.SUMMARY_RUN)
        self.sent = []
        return out


def _spilled(key: np.ndarray, value: np.ndarray) -> np.ndarray:
    r = np.zeros((), layout.SUMMARY_RUN)
    r["key"], r["v"] = key, value
    return r


def test_runs_the_full_map_sent_to_the_ring_are_rows_once_their_slot_is_drained(monkeypatch):
    """A run not in the map comes through the ring: read at
    every drain (so the ring does not fill between slots), held while its
    slot may still be added to, then a row of its own, in time order with
    the map's rows; at the end every one held is a row. Nothing is lost."""
    shift = fault_summary.SLOT_SHIFT
    monkeypatch.setattr(fault_summary, "HOLD_SETTLE", 0)
    ring = FakeRing()
    r = SummaryReader(FakeHash([(_key(1, 5), _value(2, (5 << shift) + 50, (5 << shift) + 60))]),
                      FakeRuns([]), hold=lambda: None, ring=ring)
    ring.sent = [_spilled(_key(1, 5), _value(3, (5 << shift) + 10, (5 << shift) + 20)),
                 _spilled(_key(2, 10), _value(7, 10 << shift, (10 << shift) + 1))]
    rows = r.drain(12 << shift)            # cut: slot 9
    assert [(int(x["pid"]), int(x["count"])) for x in rows] == [(1, 3), (1, 2)]
    assert list(rows["ts"]) == sorted(rows["ts"]) and r.faults == 5
    # the same slot again: no drain, but the ring is read (and held)
    ring.sent = [_spilled(_key(2, 11), _value(1, 11 << shift, 11 << shift))]
    assert len(r.drain((12 << shift) + 1)) == 0 and not ring.sent
    rows = r.drain(14 << shift, final=True)
    assert [(int(x["pid"]), int(x["count"])) for x in rows] == [(2, 7), (2, 1)]
    assert r.faults == 13


def test_a_ring_run_is_the_row_merge_makes_of_it():
    """run_rows (the ring's runs, each a row of its own) against merge() of
    the same runs as entries of one part: the same rows, random values."""
    rng = np.random.default_rng(7)
    runs = np.zeros(500, layout.SUMMARY_RUN)
    for f in runs["key"].dtype.names:
        runs["key"][f] = rng.integers(0, 1000, len(runs))
    for f in runs["v"].dtype.names:
        runs["v"][f] = rng.integers(0, 5000, len(runs)).astype(runs["v"].dtype[f])
    runs["v"]["count"] = rng.integers(-1, 40, len(runs))     # not every one counts
    runs["v"]["first_ts"] = rng.integers(1, 1 << 40, len(runs))
    runs["v"]["untimed"] = np.minimum(runs["v"]["untimed"], np.maximum(runs["v"]["count"], 0))
    rows = fault_summary.run_rows(runs)
    rows = rows[np.argsort(rows["ts"], kind="stable")]
    expected = merge(runs["key"], runs["v"][:, None])
    assert len(rows) == int((runs["v"]["count"] > 0).sum()) == len(expected)
    assert (rows == expected).all()
