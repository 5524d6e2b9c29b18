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

Beside the loop: tracer/capture_drain.py (the rings read into rows),
tracer/capture_counts.py (what it counts, and the kernel's counts),
tracer/capture_procs.py (CMD's start, the processes held at exec),
tracer/capture_files.py (the files beside the spill).
"""
from __future__ import annotations

import mmap
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
# np.unique's first call imports numpy.ma (5 ms here, numpy 2.4), and the
# loop's first np.unique came while a process was held at its exec: imported
# with the rest, before CMD exists (docs/benchmarks.md, fifteenth session)
import numpy.ma  # noqa: F401
import pyarrow as pa

from tracer import (capture_drain, cmd_stop, drain_gate, layout, pending_faults, ring_pump,
                    system, trace_rows, writer)
from tracer.capture_counts import (account_events, account_faults, read_kernel_counts,
                                   read_kernel_peaks, reap, vm_peaks)
from tracer.capture_files import chown, discard_spill, remove_stale
from tracer.capture_procs import ExitWatch, as_whom, release_held, user_args
from tracer.fault_summary import SummaryReader
from tracer.errors import UsageError
from tracer.layout import EVENT, C
from tracer.live import NetMapped
from tracer.peaks_stream import PeaksStream
from tracer.probes import Probes
from tracer.rss_sample import Sampler, pids_of

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
    rss_interval: float | None = None   # --rss sampled: /proc read this often (rss_sample)
    stacks: int = 0              # user stacks: 0 off, else of syscalls and 1 fault in N per CPU
    fault_mode: str = "events"   # "summary": faults counted in BPF (tracer.fault_summary)
    fault_latency: bool = False  # minor faults' ends followed (PAGE_FAULTS_MIN attached)
    alloc: bool = False          # pages allocated inside each fault (kmem:mm_page_alloc)
    system: system.Filters | None = None   # -a: every process matching these (tracer/system.py)

    @property
    def records_rss(self) -> bool:
        """rss rows recorded, either way (exact or sampled)."""
        return self.residency or self.rss_interval is not None


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
    rss_hwm: dict = field(default_factory=dict)      # --rss sampled: pid -> VmHWM reached traced


# A flush also when this many rows wait (not only every flush_interval): the
# last flush, and one in flight at the last exit, delay the end (sorting).
FLUSH_ROWS = 1 << 16

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
    try:   # fails early if the output is not writable; Parquet and peaks while tracing
        spill = writer.Spill(opts.output, stream=opts.fmt == "parquet",
                             peaks=PeaksStream(mmap.PAGESIZE, opts.records_rss))
    except BaseException:
        _restore(old)
        raise
    chown(spill.path, opts.owner, say)
    try:
        remove_stale(opts.output)
        probes = Probes(opts.fault_ring_pages, residency=opts.residency,
                        summary=opts.fault_mode == "summary", fault_end=opts.fault_latency,
                        alloc=opts.alloc)
        opts.alloc = probes.alloc      # as attached (not in summary mode, nor --no-rss)
        if probes.cpu_rings_note:
            say(probes.cpu_rings_note)
    except BaseException:
        _restore(old)
        discard_spill(spill)
        raise
    res.startup = dict(probes.startup)
    pump = ring_pump.RingPump(probes.bulk_readers())
    comms = trace_rows.CommTable()
    stop = _Stop()
    pending: list[pa.RecordBatch] = []
    live_pids: set[int] = set()
    held: set[int] = set()        # stopped by BPF at exec, not yet continued
    child: subprocess.Popen | None = None
    exit_watch: ExitWatch | None = None
    ending: cmd_stop.Ending | None = None
    started = False
    sampler = Sampler(opts.rss_interval) if opts.rss_interval is not None else None

    def catch(signals) -> None:
        for s in signals:
            old.setdefault(s, signal.getsignal(s))
            signal.signal(s, stop)
    try:
        probes.set_config(C["MT_CFG_FOLLOW"], int(opts.follow))
        probes.set_config(C["MT_CFG_STOP_AT_EXEC"], int(opts.stop_at_exec))
        probes.set_config(C["MT_CFG_STACKS"], opts.stacks)
        probes.set_config(C["MT_CFG_FAULT_END"], int(probes.fault_end))
        summary = None
        if opts.fault_mode == "summary":
            summary = SummaryReader(
                probes.table("fault_summary"), probes.table("summary_acc"),
                hold=lambda: probes.set_config(C["MT_CFG_SUMMARY_HOLD"], 1),
                sleeping=lambda: pending_faults.parked_summary_slots(probes),
                ring=probes.summary_runs)
            probes.set_config(C["MT_CFG_FAULT_MODE"], C["MT_FAULT_MODE_SUMMARY"])
            # a run's next fault on the short path, but where a fault's
            # resident-set changes are gathered in its slot (bpf: summary_continue)
            probes.set_config(C["MT_CFG_SUMMARY_FAST"], int(not opts.residency))
        res.start_ts = time.monotonic_ns()
        pump.start()
        # from here a signal ends tracing normally; caught before CMD starts,
        # so that one arriving while it starts cannot leave it behind
        catch(s for s in STOP_SIGNALS if s not in ignored)
        if stop.reason:
            raise KeyboardInterrupt(stop.reason)
        if opts.command:
            probes.set_config(C["MT_CFG_SPAWNER_TID"], threading.get_native_id())
            try:
                child = subprocess.Popen(opts.command, **user_args(opts.run_as))
            except OSError as e:
                raise UsageError(f"cannot run {opts.command[0]}"
                                 f"{as_whom(opts.run_as)}: {e.strerror or e}") from None
            finally:
                probes.set_config(C["MT_CFG_SPAWNER_TID"], 0)
            # wait4's ru_maxrss of CMD counts the image it exec'd from: ours
            res.memtrace_vmhwm = vm_peaks(os.getpid())[0]
            live_pids.add(child.pid)
            res.processes[child.pid] = Path(opts.command[0]).name[:15]
        for pid in opts.pids:
            probes.trace_pid(pid)
            live_pids.add(pid)
            pending.extend(capture_drain.attach_snapshot(pid, res, comms))
        if opts.system is not None:
            res.origin = {}
            batches, pids = system.start(
                probes, opts.system, res,
                lambda pid: capture_drain.attach_snapshot(pid, res, comms),
                lambda: pending.extend(capture_drain.drain(
                    probes, res, comms, live_pids, held if opts.stop_at_exec else None,
                    opts.residency, opts.alloc)))
            pending.extend(batches)
            live_pids |= pids
        started = True
        # how a script stops a memtrace it started with `&`; CMD has its own
        catch((signal.SIGINT, signal.SIGTERM))
        res.startup["first_event"] = (time.monotonic_ns() - res.start_ts) / 1e9
        # Edge-triggered: a ring wakes the loop only when BPF asks (an exec
        # held, a process's end), else the loop drains every poll_interval.
        # Level-triggered, a ring is readable whenever it holds a record, so
        # under a steady load each poll returned at once and the loop drained
        # in small batches: 117 drains in a 0.7 s malloc churn, 8 this way
        # (docs/benchmarks.md, fourteenth session).
        poller = select.epoll()
        for fd in probes.ring_fds():
            poller.register(fd, select.EPOLLIN | select.EPOLLET)
        if child is not None:
            exit_watch = ExitWatch(poller, child.pid)
        deadline = time.monotonic() + opts.duration if opts.duration else None
        # the rings and the summary map read when there is a reason (tracer.drain_gate)
        gate = drain_gate.DrainGate(
            [*probes.rings.values(), *(probes.summary_runs.readers if summary is not None else ())],
            opts.flush_interval if live is None else drain_gate.LIVE_INTERVAL, time.monotonic())
        recent: list[int] = []    # the processes of the last read's rows

        def drain(final: bool = False, rings: bool = True) -> None:
            nonlocal recent
            if rings:
                first = len(pending)
                pending.extend(capture_drain.drain(probes, res, comms, live_pids,
                                                   held if opts.stop_at_exec else None,
                                                   opts.residency, opts.alloc))
                gate.drained(time.monotonic())
                rows = summary.drain(time.monotonic_ns(), final) if summary is not None else ()
                if len(rows):
                    pending.append(trace_rows.summary_batch(rows, comms, opts.residency))
                    account_faults(rows, res, rows["count"])
                    if res.origin is not None:   # -a: processes first seen by their faults
                        pending.extend(system.account(
                            res, np.zeros(0, EVENT), rows, live_pids,
                            lambda pid: capture_drain.attach_snapshot(pid, res, comms)))
                recent = pids_of(pending[first:])
            if sampler is not None:   # whose counters may have moved: read next
                # (rings not read: CMD's processes alive; with -a, whose rows
                # came at the last read, so that the idle ones cost nothing)
                sampler.active(recent if rings or opts.system is not None else live_pids)
                rows = sampler.take(res.left)
                if len(rows):
                    pending.append(trace_rows.event_batch(rows, comms))
                    account_events(rows, res, live_pids)

        def watermark() -> int:
            marks = [r.drained_to for r in probes.rings.values()]
            return min(marks + ([summary.drained_to] if summary is not None else []))

        last_flush = time.monotonic()
        while True:
            woke = poller.poll(opts.poll_interval)
            drain(rings=gate.due(bool(woke), time.monotonic()))
            if child is not None and res.exit_status is None and reap(child.pid, res):
                exit_watch.close()
            now = time.monotonic()
            if sampler is not None and sampler.due(now):
                sampler.read(live_pids)
            # also by size: what is left to sort and encode at the end stays small
            if (now - last_flush >= opts.flush_interval
                    or sum(b.num_rows for b in pending) >= FLUSH_ROWS):
                # rows newer than a ring's watermark wait: time order across
                # flushes; a fault still open in BPF comes later with its
                # entry's time: bound by the open ones, read before the rings
                # (read now: tracer.drain_gate may have let them wait)
                bound = None if probes.fault_end else pending_faults.open_since(probes)
                drain()
                mark = watermark() if bound is None else min(watermark(), bound)
                spill.write(pending, before=mark)
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
        if sampler is not None:   # the processes still running (-p, -a, -d): their last values
            sampler.read(live_pids)
            res.rss_hwm = sampler.hwm()
        pump.stop()
        # the events of a process that has exited are all committed: drain
        probes.set_config(C["MT_CFG_STOP_AT_EXEC"], 0)
        drain()
        if opts.system is not None:   # each process's counters read as it is untraced
            system.stop(probes, live_pids, res, lambda pid: read_kernel_counts(pid, res))
        if live_pids or opts.system is not None:
            # Stopped while processes still run: untrace them all in BPF
            # first, so the last drain is a clean cut (else a child forked
            # between the reads of the event and fault rings would show its
            # faults without its fork row).
            _untrace_all(probes)
        left_open = np.zeros(0, layout.FAULT)
        if not probes.fault_end:   # the faults still open in BPF: read as they are
            probes.freeze_slots()
            left_open = pending_faults.read(probes)
        drain(final=True)
        if len(left_open):
            pending.append(trace_rows.fault_batch(left_open, comms, opts.residency, opts.alloc))
            account_faults(left_open, res)
        res.end_ts = time.monotonic_ns()
        res.counters = probes.counters()
        if opts.stacks:
            res.stacks = probes.stacks()
        for pid in [] if opts.system else list(live_pids) + list(res.baseline):
            read_kernel_counts(pid, res)
            read_kernel_peaks(pid, res)
        spill.write(pending)
        spill.end()    # the last rows encoded while the summary's peaks are computed
        res.rows = spill.rows
        return res
    except BaseException:
        if not started:  # nothing traced yet: leave nothing behind
            discard_spill(spill)
        else:
            spill.abandon()
        raise
    finally:
        pump.stop()
        if exit_watch is not None:
            exit_watch.close()
        _restore(old)
        release_held(probes, held, opts.stop_at_exec)
        probes.close()
        res.spill = spill  # type: ignore[attr-defined]


def _untrace_all(probes: Probes) -> None:
    try:
        probes.untrace_all()
    except Exception:  # the cut is then only less clean
        return
    time.sleep(0.01)   # BPF programs that read the map before: done


def _restore(old: dict) -> None:
    for s, h in old.items():
        signal.signal(s, h)
