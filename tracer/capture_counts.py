"""What a capture counts as it reads the rings, and the kernel's own counts
of the same processes, which the summary reconciles them with: rows by kind,
faults by process (minor, major), bytes mapped and unmapped; each process's
minflt and majflt from /proc/PID/stat, read before it is reaped, CMD's
from wait4, and VmHWM and VmPeak of the processes still there at the end.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from tracer import _procfs
from tracer.errors import NoSuchProcess
from tracer.layout import C

if TYPE_CHECKING:
    from tracer.capture import Result


def account_events(ev: np.ndarray, res: Result, live_pids: set[int]) -> None:
    kinds, counts = np.unique(ev["kind"], return_counts=True)
    from tracer.layout import KIND_NAMES
    for k, n in zip(kinds.tolist(), counts.tolist()):
        name = KIND_NAMES[k]
        res.counts[name] = res.counts.get(name, 0) + n
    ok = ev["ret"] >= 0
    mmap_ = (ev["kind"] == C["MT_EV_MMAP"]) & ok
    res.bytes_mapped += int(ev["args"][mmap_, 1].sum())
    munmap = (ev["kind"] == C["MT_EV_MUNMAP"]) & ok
    res.bytes_unmapped += int(ev["args"][munmap, 1].sum())
    for e in ev[ev["kind"] == C["MT_EV_FORK"]]:
        live_pids.add(int(e["aux"]))
        # the parent's name, unless the child's exec, read first, named it
        res.processes.setdefault(int(e["aux"]), e["comm"].decode("utf-8", "replace"))
    res.threads += int((ev["kind"] == C["MT_EV_THREAD"]).sum())
    dead = (ev["kind"] == C["MT_EV_EXIT"]) & ((ev["flags"] & C["MT_EXIT_GROUP_DEAD"]) != 0)
    for pid in ev["pid"][dead].tolist():
        # read the zombie's own counters before its parent reaps it
        read_kernel_counts(pid, res)
        live_pids.discard(pid)


def account_faults(f: np.ndarray, res: Result, count: np.ndarray | None = None) -> None:
    """Faults by process, minor and major; `count`: the faults each row
    stands for (summary rows), else one."""
    n = np.ones(len(f)) if count is None else count.astype(np.float64)
    res.counts["fault"] = res.counts.get("fault", 0) + int(n.sum())
    major = (f["flags"] & C["MT_FAULT_MAJOR"]) != 0
    pids, inv = np.unique(f["pid"], return_inverse=True)
    minor_n = np.bincount(inv, weights=n * ~major, minlength=len(pids))
    major_n = np.bincount(inv, weights=n * major, minlength=len(pids))
    for pid, mi, ma in zip(pids.tolist(), minor_n.tolist(), major_n.tolist()):
        acc = res.faults.setdefault(pid, [0, 0])
        acc[0] += int(mi)
        acc[1] += int(ma)


def read_kernel_counts(pid: int, res: Result) -> None:
    if pid in res.kernel and res.kernel[pid]["source"] != "/proc/PID/stat (running)":
        return
    try:
        st = _procfs.read_stat(pid)
    except NoSuchProcess:
        return
    if st.state == "X":
        return
    source = "/proc/PID/stat (exited)" if st.state == "Z" else "/proc/PID/stat (running)"
    res.kernel[pid] = {"minflt": st.minflt, "majflt": st.majflt, "source": source}


def reap(pid: int, res: Result) -> bool:
    """Reaps CMD if it has exited, reading its own counters first."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    if info is None:
        return False
    read_kernel_counts(pid, res)
    _, status, ru = os.wait4(pid, 0)
    res.exit_status = os.waitstatus_to_exitcode(status)
    if res.exit_status < 0:  # killed by a signal: report it as a shell does
        res.exit_status = 128 - res.exit_status
    res.kernel_total = {"minflt": ru.ru_minflt, "majflt": ru.ru_majflt,
                        "source": "wait4 (CMD and the children it waited for)",
                        # the largest RSS of CMD (counting the image it exec'd
                        # from: memtrace's) and of the children it waited for
                        "maxrss": ru.ru_maxrss * 1024, "memtrace_vmhwm": res.memtrace_vmhwm}
    return True


def vm_peaks(pid: int) -> tuple[int | None, int | None]:
    """The kernel's VmHWM and VmPeak of a running process (bytes), since it
    started; None if it is gone (an exited process has no mm)."""
    try:
        st = _procfs.read_status(pid)
    except (NoSuchProcess, OSError):
        return None, None
    hwm, peak = st.get("VmHWM"), st.get("VmPeak")
    return (hwm if isinstance(hwm, int) else None, peak if isinstance(peak, int) else None)


def read_kernel_peaks(pid: int, res: Result) -> None:
    """A process still there at the end: its own peaks, as the kernel has them."""
    hwm, peak = vm_peaks(pid)
    if pid in res.kernel and hwm is not None:
        res.kernel[pid].update(vmhwm=hwm, vmpeak=peak)
