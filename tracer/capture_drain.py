"""The capture loop's read of the rings: each ring's records into row
batches, a process held at its exec continued first, the counts kept
(tracer/capture_counts.py), and, with -a, the processes that enter or leave
the trace (tracer/system.py). Used by tracer/capture.py only.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import pyarrow as pa

from tracer import _procfs, system, trace_rows
from tracer.capture_counts import account_events, account_faults
from tracer.capture_procs import resume
from tracer.errors import NoSuchProcess
from tracer.layout import C
from tracer.probes import Probes

if TYPE_CHECKING:
    from tracer.capture import Result


def attach_snapshot(pid: int, res: Result, comms: trace_rows.CommTable) -> list[pa.RecordBatch]:
    st = _procfs.read_stat(pid)
    res.baseline[pid] = {"minflt": st.minflt, "majflt": st.majflt}
    res.processes[pid] = st.comm
    for tid in _procfs.list_tids(pid):
        try:
            comms.update([tid], [_procfs.read_comm(pid, tid)])
        except NoSuchProcess:
            pass
    return [maps_rows(pid, st.comm, "attach")]


def maps_rows(pid: int, comm: str, cause: str) -> pa.RecordBatch:
    ts = time.monotonic_ns()
    return trace_rows.maps_batch(ts, pid, comm, cause, _procfs.read_maps(pid))


def drain(probes: Probes, res: Result, comms: trace_rows.CommTable,
          live_pids: set[int], held: set[int] | None,
          residency: bool = True, alloc: bool = False) -> list[pa.RecordBatch]:
    """Reads the three rings; `held` (None if BPF does not stop processes at
    exec) gets the pids of the execs read, and loses each once continued."""
    out: list[pa.RecordBatch] = []
    paths = probes.rings["execs"].read()
    execs = paths[paths["kind"] == C["MT_EV_EXEC"]]
    if held is not None and len(execs):
        held.update(execs["pid"].tolist())  # continued below, or by release_held
    # A process held at its exec waits for this loop: its maps and exe are
    # read and it is continued before anything else is read or built (the
    # other rings, the rows), so the hold is that read and nothing more
    # (docs/benchmarks.md, fifteenth session).
    maps: list[tuple[int, int, list]] = []     # pid, ts, /proc/PID/maps as read
    if len(execs):
        res.counts["exec"] = res.counts.get("exec", 0) + len(execs)
        for pid, comm in zip(execs["pid"].tolist(), execs["comm"].tolist()):
            if res.origin is not None:   # -a: a process may enter the trace at its exec
                system.entered(pid, res, held is not None, live_pids)
            res.processes[pid] = comm.decode("utf-8", "replace")
            try:  # the kernel-made mappings: binary, loader, stack, vdso
                ts = time.monotonic_ns()
                maps.append((pid, ts, _procfs.read_maps(pid)))
                res.exe[pid] = os.readlink(f"/proc/{pid}/exe")
            except (NoSuchProcess, OSError):
                pass
            finally:
                if held is not None:  # BPF stopped it at exec: let it run
                    resume(pid)
                    held.discard(pid)
    events = probes.read_rings("events")
    faults = probes.read_rings("faults")
    for pid, ts, entries in maps:
        out.append(trace_rows.maps_batch(ts, pid, res.processes[pid], "exec", entries))
    if len(paths):
        # name opened files as /proc/PID/maps will, while the process is here
        names = [_procfs.resolve_path(pid, f.decode("utf-8", "backslashreplace"),
                                      res.exe.get(pid))
                 if k == C["MT_EV_OPEN"] else f.decode("utf-8", "backslashreplace")
                 for pid, k, f in zip(paths["pid"].tolist(), paths["kind"].tolist(),
                                      paths["filename"].tolist())]
        out.append(trace_rows.exec_batch(paths, comms, names))
        res.counts["open"] = res.counts.get("open", 0) + len(paths) - len(execs)
    if len(events):
        out.append(trace_rows.event_batch(events, comms))
        account_events(events, res, live_pids)
    if res.net_mapped is not None:   # for the live view
        res.net_mapped.update(out[-1] if len(events) else None, execs)
    if len(faults):
        out.append(trace_rows.fault_batch(faults, comms, residency, alloc))
        account_faults(faults, res)
    if res.origin is not None:   # -a: forks, processes that left, processes first seen
        out.extend(system.account(res, events, faults, live_pids,
                                  lambda pid: attach_snapshot(pid, res, comms)))
    return out
