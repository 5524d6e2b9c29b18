"""--faults=summary: the `fault_summary` BPF map drained into fault rows.

BPF counts each fault into a hash entry keyed by (process, 64 KiB block,
access, major, time slot of 2^26 ns, layout generation) instead of sending
a record (bpf/memtrace.bpf.c, layout: memtrace.h), through a per-CPU run
(`summary_acc`): the CPU's consecutive faults of one key, flushed when a
fault of another key comes on that CPU or at a task switch (to the hash, or
to a ring: below). A fault
is counted in the slot of its entry time, so user space drains the slots
that ended two slots (134 ms) ago: no new fault can add to them, and
deleting them loses nothing (but the end of a major fault slower than that:
it stays counted as minor, counter `summary_late_major`) -- provided no
run of such a slot is still waiting on a CPU: each drain first reads the
runs, and neither drains nor lets the watermark pass the slot of the oldest
one not flushed (a CPU whose tasks neither fault nor switch may hold one a
while). At the end of the run, with no process traced any more, BPF stops
flushing at task switches (MT_CFG_SUMMARY_HOLD), and every slot is drained
with the runs still on the CPUs merged in.

A run of several faults none of which is still open (the common case: a
first touch of a block's pages, where a hash insert per run cost a
fault-heavy load more than a ring record in two sets of three:
docs/benchmarks.md, twelfth session), a run of one fault whose key the map does not
hold (on a load whose every fault is a key of its own: each memory syscall
is a new layout generation), and a run the full map cannot take, come
through the `summary_runs` ring instead, read at every drain and held until
its slot is drained: a row of its own.

Each entry becomes one `fault` row with `count` (docs/format.md): the
values of one key (the hash's and the runs') are merged (counts, latencies
and resident-page changes summed, page bitmaps or-ed; time, address, ip and
thread of the earliest first fault).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from tracer import layout
from tracer.layout import C

SLOT_SHIFT = C["MT_SUMMARY_SLOT_SHIFT"]
BLOCK_SHIFT = C["MT_SUMMARY_BLOCK_SHIFT"]
# slots drained: those that ended MARGIN - 1 slots ago or earlier. A fault
# adds to the slot of its entry until its end (a major fault is moved then):
# a major fault longer than that is counted as minor (counter late_major).
MARGIN = 3
# A slot is held back while a fault counted in it sleeps (a major fault
# waiting for its page), but not longer than this many slots (30 s): a
# thread that never runs again must not stop the drains.
HOLD_MAX = 30 * 10**9 >> SLOT_SHIFT

# one merged entry: what trace_rows.summary_batch turns into a row
ROW = np.dtype([("ts", "<u8"), ("last_ts", "<u8"), ("addr", "<u8"), ("ip", "<u8"),
                ("pid", "<u4"), ("tid", "<u4"), ("count", "<u4"), ("latency", "<u4"),
                ("error_code", "<u2"), ("flags", "<u2"), ("pages", "<u2"),
                ("rss_anon", "<i4"), ("rss_file", "<i4"), ("rss_shmem", "<i4"),
                ("rss_swap", "<i4"), ("alloc", "<u4"), ("untimed", "<u4")])
_RSS = ("rss_anon", "rss_file", "rss_shmem", "rss_swap")


def merge(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Entries (keys: layout.SUMMARY_KEY, values: layout.SUMMARY of shape
    (entries, parts): the parts of one key, e.g. per CPU, or the hash's and
    the runs' (tracer.fault_summary.with_runs)) -> ROW records in time
    order, one per entry that counted a fault."""
    count = values["count"].sum(axis=1)
    keep = count > 0
    keys, values, count = keys[keep], values[keep], count[keep]
    n = len(keys)
    if not n:
        return np.zeros(0, ROW)
    # the parts of each entry as one value: sums, or-ed bitmaps, the first
    # fault's time, address, ip and thread
    v = np.zeros(n, layout.SUMMARY)
    seen = values["first_ts"] > 0                # CPUs that counted a fault of it
    first = np.where(seen, values["first_ts"], np.iinfo(np.uint64).max)
    cpu = first.argmin(axis=1)                   # the CPU of the first fault
    rows = np.arange(n)
    v["first_ts"] = first[rows, cpu]
    v["last_ts"] = np.where(seen, values["last_ts"], 0).max(axis=1)
    for f in ("addr", "ip", "tid"):
        v[f] = values[f][rows, cpu]
    v["count"] = count
    for f in ("untimed", "latency", "alloc") + _RSS:
        v[f] = values[f].sum(axis=1)
    v["pages"] = np.bitwise_or.reduce(values["pages"], axis=1)
    out = _rows(keys, v)
    return out[np.argsort(out["ts"], kind="stable")]


def run_rows(runs: np.ndarray) -> np.ndarray:
    """Runs of the ring (layout.SUMMARY_RUN), each a row of its own -> ROW
    records, not sorted: what merge() makes of entries of one part, without
    its reductions over parts (a drain of a syscall-heavy load holds tens of
    thousands)."""
    runs = runs[runs["v"]["count"] > 0]
    return _rows(runs["key"], runs["v"])


def _rows(keys: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One value per entry (layout.SUMMARY, count > 0) and its key -> ROW."""
    out = np.zeros(len(keys), ROW)
    out["ts"] = v["first_ts"]
    out["last_ts"] = v["last_ts"]
    for f in ("addr", "ip", "tid", "pages", "alloc") + _RSS:
        out[f] = v[f]
    for f in ("pid", "error_code", "flags"):
        out[f] = keys[f]
    count = v["count"]
    out["count"] = np.minimum(count, np.iinfo(np.uint32).max)
    # the mean over the major faults whose start was read exactly (untimed:
    # the others, bpf/memtrace.h mt_summary)
    untimed = v["untimed"].astype(np.int64)
    out["latency"] = np.minimum(np.round(v["latency"] / np.maximum(count - untimed, 1)),
                                np.iinfo(np.uint32).max)
    out["untimed"] = np.minimum(untimed, out["count"])
    return out


def with_runs(keys: np.ndarray, values: np.ndarray,
              runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries (keys, values of shape (entries, parts), as merge takes
    them) and runs not flushed (layout.SUMMARY_ACC) -> entries with one more
    part per run: a run joins the entry of its key (one row), or makes an
    entry of its own."""
    runs = runs[runs["live"] != 0]
    if not len(runs):
        return keys, values
    n, parts = values.shape
    extra: list[np.ndarray] = []     # keys no entry has
    at = np.empty(len(runs), np.int64)
    for i, k in enumerate(runs["key"]):
        same = np.flatnonzero(keys == k)
        if not len(same):
            same = [n + j for j, e in enumerate(extra) if e == k]
        if len(same):
            at[i] = same[0]
        else:
            at[i] = n + len(extra)
            extra.append(k)
    out_keys = np.concatenate([keys, np.array(extra, keys.dtype)])
    out = np.zeros((len(out_keys), parts + len(runs)), values.dtype)
    out[:n, :parts] = values
    out[at, parts + np.arange(len(runs))] = runs["v"]
    return out_keys, out


class SummaryReader:
    """Drains the `fault_summary` map and, at the end, the runs still in
    `summary_acc` (tracer.bpf_syscall.Map objects); `hold` tells BPF to stop
    flushing runs at task switches (before the last drain)."""

    def __init__(self, table, runs=None, hold: Callable[[], None] | None = None,
                 sleeping: Callable[[], np.ndarray] | None = None, ring=None) -> None:
        self.table = table
        # runs not in the map (a tracer.ringbuf.RingReader of
        # layout.SUMMARY_RUN), read at every drain, held until their slot is
        # drained: rows of their own
        self.ring = ring
        self._spilled: list[np.ndarray] = []
        self._sleeping = sleeping    # the slots of counted faults still asleep
        self.ncpus = table.ncpus
        self.runs = runs
        self._hold = hold
        self.faults = 0            # counted in the rows drained so far
        # rows not drained yet are all at least this recent (writer.Spill.write's `before`)
        self.drained_to = 0
        self._slot = -1            # the slot of the last drain

    def pending(self) -> np.ndarray:
        """The runs not flushed (layout.SUMMARY_ACC), one per CPU at most."""
        if self.runs is None:
            return np.zeros(0, layout.SUMMARY_ACC)
        raw = self.runs.lookup(bytes(self.runs.d.key_size))
        if raw is None:
            return np.zeros(0, layout.SUMMARY_ACC)
        runs = np.frombuffer(raw, _slot_dtype(self.runs, layout.SUMMARY_ACC),
                             count=self.runs.ncpus)["v"]
        return runs[runs["live"] != 0].copy()

    def drain(self, now_ns: int, final: bool = False) -> np.ndarray:
        """The entries of the slots that ended before the previous one (all,
        if `final`) as ROW records, deleted from the map; nothing (and no
        map read) while the slot of the last drain has not ended. Not
        drained: the slots of a run still on a CPU and after (a run is
        flushed into its slot's entry late); at the end the runs are read
        (BPF holding them) and merged with the entries of their keys."""
        current = now_ns >> SLOT_SHIFT
        if self.ring is not None and not final:   # kept from filling between drains
            self._spilled.append(self.ring.read())
        if not final and current == self._slot:
            return np.zeros(0, ROW)
        self._slot = current
        if final and self._hold is not None and self.runs is not None:
            self._hold()
            time.sleep(HOLD_SETTLE)   # a flush that began before the hold: done
        # the runs first: one flushed after this read is in the map's next read
        runs = self.pending()
        cut = current - MARGIN
        if len(runs):
            cut = min(cut, int(runs["key"]["slot"].min()))
        asleep = self._sleeping() if self._sleeping is not None and not final else ()
        asleep = [s for s in asleep if s > current - HOLD_MAX]
        if asleep:       # a major fault's end would move it out of its slot
            cut = min(cut, int(min(asleep)))
        self.drained_to = now_ns if final else cut << SLOT_SHIFT
        if self.ring is not None:   # after the runs: a run flushed since is in it
            self._spilled.append(self.ring.read())
        raw_keys, raw_values, n = self.table.lookup_batch()
        keys = np.frombuffer(raw_keys, layout.SUMMARY_KEY, count=n)
        values = np.frombuffer(raw_values, _slot_dtype(self.table, layout.SUMMARY),
                               count=n * self.ncpus)
        values = values["v"].reshape(n, self.ncpus)
        done = np.ones(n, bool) if final else keys["slot"] < cut
        if done.any():
            self.table.delete_batch(keys[done].tobytes())
        keys, values = keys[done], values[done]
        if final and len(runs):
            keys, values = with_runs(keys, values, runs)
            self._clear_runs()
        rows = merge(keys, values)
        spilled = np.concatenate(self._spilled) if self._spilled else ()
        if len(spilled):
            out = np.ones(len(spilled), bool) if final else spilled["key"]["slot"] < cut
            self._spilled = [spilled[~out]] if not out.all() else []
            if out.any():
                rows = np.concatenate([rows, run_rows(spilled[out])])
                rows = rows[np.argsort(rows["ts"], kind="stable")]
        else:
            self._spilled = []
        self.faults += int(rows["count"].sum())
        return rows

    def _clear_runs(self) -> None:
        """The runs just merged are not read again (BPF holds them: nothing
        traced, no flush at a switch)."""
        try:
            self.runs.update(bytes(self.runs.d.key_size), bytes(self.runs.value_bytes))
        except OSError:
            pass


# seconds for a BPF program that read MT_CFG_SUMMARY_HOLD before it was set to end
HOLD_SETTLE = 0.005


def _slot_dtype(table, dtype: np.dtype) -> np.dtype:
    """One CPU's value in a map read: the struct padded to 8 bytes."""
    pad = table.slot - dtype.itemsize
    fields = [("v", dtype)] + ([("_pad", f"V{pad}")] if pad else [])
    return np.dtype(fields)
