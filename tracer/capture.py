"""The capture loop: start or attach to the processes, drain the rings in
batches, stream them to the spill, stop when everything traced has exited
(or on a signal / the duration), and reconcile with the kernel's counters.

What it guarantees however the run ends (README "Guarantees"):
- a process BPF stopped at its exec (SIGSTOP, until its maps are read) is
  always continued: normal end, signal or exception (not SIGKILL of memtrace);
- stopped by a signal, memtrace does not exit leaving the CMD it started
  running (tracer.cmd_stop); a signal ignored when memtrace started stays
  ignored by CMD, and SIGHUP by memtrace too (nohup);
- the spill holds everything up to the last flush (`flush_interval`);
- a run that fails before tracing starts leaves no file behind, and a stale
  trace at PATH is removed before (so PATH never shows an older run as if it
  were this one);
- a traced process whose exit event was lost cannot keep memtrace waiting:
  BPF drops it from `traced` at its exit, which the loop checks every flush.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from tracer import _procfs, cmd_stop, system, trace_rows, writer
from tracer.fault_summary import SLOT_SHIFT, SummaryReader
from tracer.errors import NoSuchProcess, OutputError, UsageError
from tracer.layout import EVENT, C
from tracer.live import NetMapped
from tracer.probes import Probes

Say = Callable[[str], None]


@dataclass
class Options:
    command: list[str] | None
    pids: list[int]
    follow: bool
    duration: float | None
    output: Path
    fmt: str
    fault_ring_pages: int | None = None
    stop_at_exec: bool = True
    poll_interval: float = 0.1
    flush_interval: float = 1.0
    run_as: tuple[int, int, list[int]] | None = None   # CMD's uid, gid, groups (None: ours)
    owner: tuple[int, int] | None = None               # chown the output files to uid, gid
    residency: bool = True       # kmem:rss_stat and kmem:mm_page_alloc attached
    stacks: int = 0              # user stacks: 0 off, else of syscalls and 1 fault in N per CPU
    fault_mode: str = "events"   # "summary": faults counted in BPF (tracer.fault_summary)
    system: system.Filters | None = None   # -a: every process matching these (tracer/system.py)


@dataclass
class Result:
    """What the run captured, for the summary and the metadata."""
    start_ts: int = 0
    end_ts: int = 0
    startup: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)       # rows by kind
    faults: dict = field(default_factory=dict)       # pid -> [minor, major]
    bytes_mapped: int = 0
    bytes_unmapped: int = 0
    processes: dict = field(default_factory=dict)    # pid -> comm
    threads: int = 0
    counters: dict = field(default_factory=dict)
    kernel: dict = field(default_factory=dict)       # pid -> {minflt, majflt, source}
    kernel_total: dict | None = None                 # wait4 of CMD: whole tree
    baseline: dict = field(default_factory=dict)     # -p: counters at attach
    exit_status: int | None = None
    interrupted: str | None = None
    rows: int = 0
    exe: dict = field(default_factory=dict)          # pid -> executable, read at exec
    stacks: dict = field(default_factory=dict)       # --stacks: stack id -> user ips
    net_mapped: NetMapped | None = None              # for the live view (tracer.live)
    origin: dict | None = None                       # -a: pid -> how it came (system.ORIGINS)
    left: set = field(default_factory=set)           # -a: pids that left the filters
    scan: dict = field(default_factory=dict)         # -a: the processes decided at start
    memtrace_vmhwm: int | None = None                # our own VmHWM when CMD started


# Signals that end tracing normally (the files are finished). SIGHUP: the
# terminal went away, which must not lose the trace either.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop:
    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.reason = signal.Signals(signum).name


def _interrupt(signum: int, frame: object) -> None:
    """Before tracing starts (the BPF compile), SIGTERM and SIGHUP interrupt
    like Ctrl-C: the clean-up below runs and nothing is left behind."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(opts: Options, say: Say,
        live: Callable[[Result, Callable[[], dict]], None] | None = None) -> Result:
    """`live`, if given, is called after each turn of the loop with the
    running Result and a function that reads the BPF counters."""
    res = Result(net_mapped=NetMapped() if live is not None else None)
    # what CMD inherits (nohup; `&` in a script ignores SIGINT): left alone
    ignored = {s for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN}
    old = {s: signal.signal(s, _interrupt) for s in STOP_SIGNALS[1:] if s not in ignored}
    try:
        spill = writer.Spill(opts.output)       # fails early if the output is not writable
    except BaseException:
        _restore(old)
        raise
    chown(spill.path, opts.owner, say)
    try:
        _remove_stale(opts.output)
        probes = Probes(opts.fault_ring_pages, residency=opts.residency,
                        summary=opts.fault_mode == "summary")
    except BaseException:
        _restore(old)
        _discard(spill)
        raise
    res.startup = dict(probes.startup)
    comms = trace_rows.CommTable()
    stop = _Stop()
    pending: list[pa.RecordBatch] = []
    live_pids: set[int] = set()
    held: set[int] = set()        # stopped by BPF at exec, not yet continued
    child: subprocess.Popen | None = None
    ending: cmd_stop.Ending | None = None
    started = False

    def catch(signals) -> None:
        for s in signals:
            old.setdefault(s, signal.getsignal(s))
            signal.signal(s, stop)
    try:
        probes.set_config(C["MT_CFG_FOLLOW"], int(opts.follow))
        probes.set_config(C["MT_CFG_STOP_AT_EXEC"], int(opts.stop_at_exec))
        probes.set_config(C["MT_CFG_STACKS"], opts.stacks)
        summary = None
        if opts.fault_mode == "summary":
            summary = SummaryReader(probes.table("fault_summary"))
            probes.set_config(C["MT_CFG_FAULT_MODE"], C["MT_FAULT_MODE_SUMMARY"])
        res.start_ts = time.monotonic_ns()
        # from here a signal ends tracing normally; caught before CMD starts,
        # so that one arriving while it starts cannot leave it behind
        catch(s for s in STOP_SIGNALS if s not in ignored)
        if stop.reason:
            raise KeyboardInterrupt(stop.reason)
        if opts.command:
            probes.set_config(C["MT_CFG_SPAWNER_TID"], threading.get_native_id())
            try:
                child = subprocess.Popen(opts.command, **_user_args(opts.run_as))
            except OSError as e:
                raise UsageError(f"cannot run {opts.command[0]}"
                                 f"{_as_whom(opts.run_as)}: {e.strerror or e}") from None
            finally:
                probes.set_config(C["MT_CFG_SPAWNER_TID"], 0)
            # wait4's ru_maxrss of CMD counts the image it exec'd from: ours
            res.memtrace_vmhwm = _vm_peaks(os.getpid())[0]
            live_pids.add(child.pid)
            res.processes[child.pid] = Path(opts.command[0]).name[:15]
        for pid in opts.pids:
            probes.trace_pid(pid)
            live_pids.add(pid)
            pending.extend(_attach_snapshot(pid, res, comms))
        if opts.system is not None:
            res.origin = {}
            batches, pids = system.start(
                probes, opts.system, res, lambda pid: _attach_snapshot(pid, res, comms),
                lambda: pending.extend(_drain(probes, res, comms, live_pids,
                                              held if opts.stop_at_exec else None,
                                              opts.residency)))
            pending.extend(batches)
            live_pids |= pids
        started = True
        # how a script stops a memtrace it started with `&`; CMD has its own
        catch((signal.SIGINT, signal.SIGTERM))
        res.startup["first_event"] = (time.monotonic_ns() - res.start_ts) / 1e9
        poller = select.epoll()
        for fd in probes.ring_fds():
            poller.register(fd, select.EPOLLIN)
        deadline = time.monotonic() + opts.duration if opts.duration else None
        summary_slot = [0]

        def drain(final: bool = False) -> None:
            pending.extend(_drain(probes, res, comms, live_pids,
                                  held if opts.stop_at_exec else None, opts.residency))
            if summary is None:
                return
            now = time.monotonic_ns()
            if final or now >> SLOT_SHIFT != summary_slot[0]:   # a slot has ended
                summary_slot[0] = now >> SLOT_SHIFT
                rows = summary.drain(now, final)
                if len(rows):
                    pending.append(trace_rows.summary_batch(rows, comms, opts.residency))
                    _account_faults(rows, res, rows["count"])
                    if res.origin is not None:   # -a: processes first seen by their faults
                        pending.extend(system.account(
                            res, np.zeros(0, EVENT), rows, live_pids,
                            lambda pid: _attach_snapshot(pid, res, comms)))

        def watermark() -> int:
            marks = [r.drained_to for r in probes.rings.values()]
            return min(marks + ([summary.drained_to] if summary is not None else []))

        last_flush = time.monotonic()
        while True:
            poller.poll(opts.poll_interval)
            drain()
            if child is not None and res.exit_status is None:
                _reap(child.pid, res)
            now = time.monotonic()
            if now - last_flush >= opts.flush_interval:
                # rows newer than a ring's watermark wait: time order across flushes
                spill.write(pending, before=watermark())
                pending = []
                last_flush = now
                if live_pids:  # exited, though its exit event was lost
                    live_pids &= probes.traced_pids().keys()
            if live is not None:
                live(res, probes.counters)
            if stop.reason:
                res.interrupted = res.interrupted or stop.reason
                if child is None or res.exit_status is not None:
                    break
                ending = ending or cmd_stop.Ending(child.pid, res.processes[child.pid],
                                                   res.interrupted, say)
                if not ending.step():
                    break
            elif deadline and now >= deadline:
                res.interrupted = "duration"
                if child is not None and res.exit_status is None:
                    say(f"{res.processes[child.pid]} (pid {child.pid}) goes on running,"
                        " untraced (-d)")
                break
            if not live_pids and opts.system is None and (child is None
                                                          or res.exit_status is not None):
                break
        # the events of a process that has exited are all committed: drain
        probes.set_config(C["MT_CFG_STOP_AT_EXEC"], 0)
        drain()
        if opts.system is not None:   # each process's counters read as it is untraced
            system.stop(probes, live_pids, res, lambda pid: _read_kernel_counts(pid, res))
        if live_pids or opts.system is not None:
            # Stopped while processes still run: untrace them all in BPF
            # first, so the last drain is a clean cut (else a child forked
            # between the reads of the event and fault rings would show its
            # faults without its fork row).
            _untrace_all(probes)
        drain(final=True)
        res.end_ts = time.monotonic_ns()
        res.counters = probes.counters()
        if opts.stacks:
            res.stacks = probes.stacks()
        for pid in [] if opts.system else list(live_pids) + list(res.baseline):
            _read_kernel_counts(pid, res)
            _read_kernel_peaks(pid, res)
        spill.write(pending)
        res.rows = spill.rows
        return res
    except BaseException:
        if not started:  # nothing traced yet: leave nothing behind
            _discard(spill)
        raise
    finally:
        _restore(old)
        _release(probes, held, opts.stop_at_exec)
        probes.close()
        res.spill = spill  # type: ignore[attr-defined]


def _untrace_all(probes: Probes) -> None:
    try:
        traced = probes.table("traced")
        for key in list(traced.keys()):
            traced.delete(key)
    except Exception:  # the cut is then only less clean
        return
    time.sleep(0.01)   # BPF programs that read the map before: done


def _restore(old: dict) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def _discard(spill: writer.Spill) -> None:
    try:
        spill.close()
    except Exception:
        pass
    try:
        os.unlink(spill.path)
    except FileNotFoundError:
        pass


def _remove_stale(output: Path) -> None:
    """A trace left at PATH by an earlier run would be taken for this run's
    if this one is cut short (tracer.load prefers PATH to PATH.partial)."""
    for p in (output, Path(str(output) + ".meta.json")):
        try:
            if p.is_file():
                p.unlink()
        except OSError as e:
            raise OutputError(f"cannot replace {p}: {e.strerror or e}") from None


def chown(path: Path, owner: tuple[int, int] | None, say: Say) -> None:
    """Gives an output file to `owner` (uid, gid): the user who ran sudo."""
    if owner is None:
        return
    try:
        os.chown(path, *owner)
    except OSError as e:
        say(f"cannot give {path} to uid {owner[0]}: {e.strerror or e}")


def _user_args(run_as: tuple[int, int, list[int]] | None) -> dict:
    if run_as is None:
        return {}
    uid, gid, groups = run_as
    return {"user": uid, "group": gid, "extra_groups": groups}


def _as_whom(run_as: tuple[int, int, list[int]] | None) -> str:
    return "" if run_as is None else f" as uid {run_as[0]}"


def _release(probes: Probes, held: set[int], stop_at_exec: bool) -> None:
    """Continues every process BPF stopped at exec that was not continued
    yet: those seen (`held`), and those whose exec record is still in the
    ring. Runs however the capture ends; only a SIGKILL of memtrace skips it."""
    if stop_at_exec:
        try:
            probes.set_config(C["MT_CFG_STOP_AT_EXEC"], 0)
            time.sleep(0.02)  # an exec's BPF program in flight has sent its SIGSTOP
            late = probes.rings["execs"].read()
            if "kind" in (late.dtype.names or ()):
                late = late[late["kind"] == C["MT_EV_EXEC"]]
            held.update(late["pid"].tolist())
        except Exception:
            pass
    for pid in sorted(held):
        _continue(pid)
    held.clear()


def _attach_snapshot(pid: int, res: Result, comms: trace_rows.CommTable) -> list[pa.RecordBatch]:
    st = _procfs.read_stat(pid)
    res.baseline[pid] = {"minflt": st.minflt, "majflt": st.majflt}
    res.processes[pid] = st.comm
    for tid in _procfs.list_tids(pid):
        try:
            comms.update([tid], [_procfs.read_comm(pid, tid)])
        except NoSuchProcess:
            pass
    return [_maps_rows(pid, st.comm, "attach")]


def _maps_rows(pid: int, comm: str, cause: str) -> pa.RecordBatch:
    ts = time.monotonic_ns()
    return trace_rows.maps_batch(ts, pid, comm, cause, _procfs.read_maps(pid))


def _drain(probes: Probes, res: Result, comms: trace_rows.CommTable,
           live_pids: set[int], held: set[int] | None,
           residency: bool = True) -> list[pa.RecordBatch]:
    """Reads the three rings; `held` (None if BPF does not stop processes at
    exec) gets the pids of the execs read, and loses each once continued."""
    out: list[pa.RecordBatch] = []
    paths = probes.rings["execs"].read()
    execs = paths[paths["kind"] == C["MT_EV_EXEC"]]
    if held is not None and len(execs):
        held.update(execs["pid"].tolist())  # continued below, or by _release
    events = probes.rings["events"].read()
    faults = probes.rings["faults"].read()
    if len(execs):
        res.counts["exec"] = res.counts.get("exec", 0) + len(execs)
        for pid, comm in zip(execs["pid"].tolist(), execs["comm"].tolist()):
            if res.origin is not None:   # -a: a process may enter the trace at its exec
                system.entered(pid, res, held is not None, live_pids)
            res.processes[pid] = comm.decode("utf-8", "replace")
            try:  # the kernel-made mappings: binary, loader, stack, vdso
                out.append(_maps_rows(pid, res.processes[pid], "exec"))
                res.exe[pid] = os.readlink(f"/proc/{pid}/exe")
            except (NoSuchProcess, OSError):
                pass
            finally:
                if held is not None:  # BPF stopped it at exec: let it run
                    _continue(pid)
                    held.discard(pid)
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
        _account_events(events, res, live_pids)
    if res.net_mapped is not None:   # for the live view
        res.net_mapped.update(out[-1] if len(events) else None, execs)
    if len(faults):
        out.append(trace_rows.fault_batch(faults, comms, residency))
        _account_faults(faults, res)
    if res.origin is not None:   # -a: forks, processes that left, processes first seen
        out.extend(system.account(res, events, faults, live_pids,
                                  lambda pid: _attach_snapshot(pid, res, comms)))
    return out


def _continue(pid: int) -> None:
    _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _account_events(ev: np.ndarray, res: Result, live_pids: set[int]) -> None:
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
        _read_kernel_counts(pid, res)
        live_pids.discard(pid)


def _account_faults(f: np.ndarray, res: Result, count: np.ndarray | None = None) -> None:
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


def _read_kernel_counts(pid: int, res: Result) -> None:
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


def _reap(pid: int, res: Result) -> bool:
    """Reaps CMD if it has exited, reading its own counters first."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    if info is None:
        return False
    _read_kernel_counts(pid, res)
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


def _vm_peaks(pid: int) -> tuple[int | None, int | None]:
    """The kernel's VmHWM and VmPeak of a running process (bytes), since it
    started; None if it is gone (an exited process has no mm)."""
    try:
        st = _procfs.read_status(pid)
    except (NoSuchProcess, OSError):
        return None, None
    hwm, peak = st.get("VmHWM"), st.get("VmPeak")
    return (hwm if isinstance(hwm, int) else None, peak if isinstance(peak, int) else None)


def _read_kernel_peaks(pid: int, res: Result) -> None:
    """A process still there at the end: its own peaks, as the kernel has them."""
    hwm, peak = _vm_peaks(pid)
    if pid in res.kernel and hwm is not None:
        res.kernel[pid].update(vmhwm=hwm, vmpeak=peak)
