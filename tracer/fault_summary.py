"""--faults=summary: the `fault_summary` BPF map drained into fault rows.

BPF counts each fault into a per-CPU hash entry keyed by (process, 64 KiB
block, access, major, time slot of 2^26 ns, layout generation) instead of
sending a record (bpf/memtrace.bpf.c `summarise`, layout: memtrace.h). An
entry is only written while the clock is in its slot, so user space drains
the slots that ended two slots (134 ms) ago: no fault can still be adding
to them, and deleting them loses nothing (but the end of a major fault
slower than that: it stays counted as minor, counter `summary_late_major`). At the end of the run, with no
process traced any more, every slot is drained.

Each entry becomes one `fault` row with `count` (docs/format.md): the CPUs'
values are merged (counts, latencies and resident-page changes summed, page
bitmaps or-ed; time, address, ip and thread of the earliest first fault).
"""
from __future__ import annotations

import numpy as np

from tracer import layout
from tracer.layout import C

SLOT_SHIFT = C["MT_SUMMARY_SLOT_SHIFT"]
BLOCK_SHIFT = C["MT_SUMMARY_BLOCK_SHIFT"]
# slots drained: those that ended MARGIN - 1 slots ago or earlier. A fault
# adds to the slot of its entry until its end (a major fault is moved then):
# a major fault longer than that is counted as minor (counter late_major).
MARGIN = 3

# one merged entry: what trace_rows.summary_batch turns into a row
ROW = np.dtype([("ts", "<u8"), ("last_ts", "<u8"), ("addr", "<u8"), ("ip", "<u8"),
                ("pid", "<u4"), ("tid", "<u4"), ("count", "<u4"), ("latency", "<u4"),
                ("error_code", "<u2"), ("flags", "<u2"), ("pages", "<u2"),
                ("rss_anon", "<i4"), ("rss_file", "<i4"), ("rss_shmem", "<i4"),
                ("rss_swap", "<i4"), ("alloc", "<u4")])
_RSS = ("rss_anon", "rss_file", "rss_shmem", "rss_swap")


def merge(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Entries (keys: layout.SUMMARY_KEY, values: layout.SUMMARY of shape
    (entries, CPUs)) -> ROW records in time order, one per entry that
    counted a fault."""
    count = values["count"].sum(axis=1)
    keep = count > 0
    keys, values, count = keys[keep], values[keep], count[keep]
    n = len(keys)
    out = np.zeros(n, ROW)
    if not n:
        return out
    seen = values["first_ts"] > 0                # CPUs that counted a fault of it
    first = np.where(seen, values["first_ts"], np.iinfo(np.uint64).max)
    cpu = first.argmin(axis=1)                   # the CPU of the first fault
    rows = np.arange(n)
    out["ts"] = first[rows, cpu]
    out["last_ts"] = np.where(seen, values["last_ts"], 0).max(axis=1)
    for f in ("addr", "ip", "tid"):
        out[f] = values[f][rows, cpu]
    out["pid"] = keys["pid"]
    out["count"] = np.minimum(count, np.iinfo(np.uint32).max)
    latency = values["latency"].sum(axis=1)
    out["latency"] = np.minimum(np.round(latency / count), np.iinfo(np.uint32).max)
    out["error_code"] = keys["error_code"]
    out["flags"] = keys["flags"]
    out["pages"] = np.bitwise_or.reduce(values["pages"], axis=1)
    for f in _RSS:
        out[f] = values[f].sum(axis=1)
    out["alloc"] = values["alloc"].sum(axis=1)
    return out[np.argsort(out["ts"], kind="stable")]


class SummaryReader:
    """Drains the `fault_summary` map (a tracer.bpf_syscall.Map)."""

    def __init__(self, table) -> None:
        self.table = table
        self.ncpus = table.ncpus
        self.faults = 0            # counted in the rows drained so far
        # rows not drained yet are all at least this recent (writer.Spill.write's `before`)
        self.drained_to = 0
        self._slot = -1            # the slot of the last drain

    def drain(self, now_ns: int, final: bool = False) -> np.ndarray:
        """The entries of the slots that ended before the previous one (all,
        if `final`) as ROW records, deleted from the map; nothing (and no
        map read) while the slot of the last drain has not ended."""
        current = now_ns >> SLOT_SHIFT
        if not final and current == self._slot:
            return np.zeros(0, ROW)
        self._slot = current
        self.drained_to = now_ns if final else (current - MARGIN) << SLOT_SHIFT
        raw_keys, raw_values, n = self.table.lookup_batch()
        if not n:
            return np.zeros(0, ROW)
        keys = np.frombuffer(raw_keys, layout.SUMMARY_KEY, count=n)
        values = np.frombuffer(raw_values, _slot_dtype(self.table), count=n * self.ncpus)
        values = values["v"].reshape(n, self.ncpus)
        done = np.ones(n, bool) if final else keys["slot"] < current - MARGIN
        if done.any():
            self.table.delete_batch(keys[done].tobytes())
        rows = merge(keys[done], values[done])
        self.faults += int(rows["count"].sum())
        return rows


def _slot_dtype(table) -> np.dtype:
    """One CPU's value in a batch: the struct padded to 8 bytes."""
    pad = table.slot - layout.SUMMARY.itemsize
    fields = [("v", layout.SUMMARY)] + ([("_pad", f"V{pad}")] if pad else [])
    return np.dtype(fields)
