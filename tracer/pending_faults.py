"""Faults still open in BPF when tracing stops.

When minor faults' ends are not followed (the default; `--fault-latency`
follows them), BPF sends a fault when its thread's next fault, syscall,
signal or exit shows it has ended (bpf/memtrace.bpf.c `close_slot`). A
process that exits closes all of its own; a process still running when
tracing stops (`-p`, `-a`, `-d`) leaves its threads' last faults in the
CPUs' `fault_slot` entries, or in `parked` for a thread switched out since.
User space freezes the slots (MT_CFG_FROZEN: BPF no longer closes nor
overwrites them) and reads these here, as fault records like the ring's.
"""
from __future__ import annotations

import time

import numpy as np

from tracer import layout
from tracer.layout import C

SLOT = layout.dtypes()["mt_fault_slot"]


def _slots(raw: list[bytes]) -> np.ndarray:
    """Values of `fault_slot`/`parked` (each struct mt_fault_slot, then the
    summary key) -> their mt_fault_slot parts."""
    if not raw:
        return np.zeros(0, SLOT)
    return np.frombuffer(b"".join(v[:SLOT.itemsize] for v in raw), SLOT)


def _open(slots: np.ndarray) -> np.ndarray:
    """The slots holding a fault of a traced process that BPF will send as a
    fault row (summary mode counted its own at entry)."""
    return slots[(slots["active"] != 0) & (slots["state"] == C["MT_STATE_TRACED"])
                 & (slots["summary"] == 0)]


def to_records(slots: np.ndarray) -> np.ndarray:
    """The open faults of traced processes among `slots`, as layout.FAULT
    records (flag NO_END: the entry's time, no latency), in time order."""
    open_ = _open(slots)
    out = np.zeros(len(open_), layout.FAULT)
    for f in ("ts", "addr", "ip", "pid", "tid", "error_code", "alloc", "stack_id"):
        out[f] = open_[f]
    kernel_mode = (open_["error_code"] & C["MT_PF_USER"]) == 0
    out["flags"] = C["MT_FAULT_NO_END"] | np.where(kernel_mode, C["MT_FAULT_KERNEL_MODE"], 0)
    # kmem:rss_stat's member order: file, anon, swap entries, shmem
    for i, name in enumerate(("rss_file", "rss_anon", "rss_swap", "rss_shmem")):
        out[name] = open_["rss"][:, i]
    return out[np.argsort(out["ts"], kind="stable")]


def read(probes) -> np.ndarray:
    """The faults left open in BPF (a tracer.probes.Probes whose slots are
    frozen), as layout.FAULT records."""
    return to_records(_read_slots(probes))


def _read_slots(probes) -> np.ndarray:
    zero = (0).to_bytes(4, "little")
    raw = probes.table("fault_slot").percpu_values(zero)
    raw += [v for _, v in probes.table("parked").items()]
    return _slots(raw)


def parked_summary_slots(probes) -> np.ndarray:
    """The time slots (fault_summary keys' `slot`) of the faults counted in
    summary mode whose thread was switched out inside or after them
    (`parked`): a major fault sleeps there, and its end moves it out of its
    slot's entry, so that slot must not be drained before (SummaryReader)."""
    raw = [v for _, v in probes.table("parked").items()]
    if not raw:
        return np.zeros(0, np.uint32)
    at, size = SLOT.itemsize, layout.SUMMARY_KEY.itemsize
    slots = _slots(raw)
    keys = np.frombuffer(b"".join(v[at:at + size] for v in raw), layout.SUMMARY_KEY)
    return keys["slot"][(slots["active"] != 0) & (slots["summary"] != 0)].copy()


def open_since(probes) -> int:
    """A time no fault still to come from BPF is older than: the entry of
    the oldest fault open now, or now. Read before the rings, it bounds what
    the next ring read can still bring (writer.Spill.write's `before`)."""
    now = time.monotonic_ns()      # CLOCK_MONOTONIC, as bpf_ktime_get_ns
    open_ = _open(_read_slots(probes))
    return int(min(now, open_["ts"].min())) if len(open_) else now
