"""The end-of-run metadata and the summary printed on stderr: what was
captured next to the kernel's own counts, and what was lost."""
from __future__ import annotations

import mmap
import os
import platform
import sys
import time
from pathlib import Path

import tracer
from tracer import peaks, system
from tracer.capture import Options, Result
from tracer.layout import C, SYSCALL_KINDS

LOST_COUNTERS = ("lost_fault", "lost_event", "lost_exec", "lost_rss", "map_full", "summary_full")


def metadata(res: Result, opts: Options, argv: list[str]) -> dict:
    lost = sum(res.counters.get(k, 0) for k in LOST_COUNTERS)
    return {
        "format_version": C["MT_FORMAT_VERSION"],
        "tool_version": tracer.__version__,
        "kernel_release": platform.release(),
        "page_size": mmap.PAGESIZE,
        "clock_offset_ns": time.time_ns() - time.monotonic_ns(),
        "command": opts.command,
        "argv": ["memtrace", *argv],
        "pids": sorted(res.processes),
        "processes": {str(k): v for k, v in sorted(res.processes.items())},
        "start_ts": res.start_ts,
        "end_ts": res.end_ts,
        "complete": res.interrupted in (None, "duration", "SIGINT", "SIGTERM", "SIGHUP"),
        "interrupted": res.interrupted,
        "startup_s": {k: round(v, 4) for k, v in res.startup.items()},
        "counters": res.counters,
        "lost": lost,
        "kernel": kernel_check(res),
        "exit_status": res.exit_status,
        "rows": res.rows,
        # rss rows recorded (either way); how: every change (exact), read
        # from /proc at an interval (sampled, tracer.rss_sample), or off
        "residency": opts.records_rss,
        "rss": rss_mode(opts),
        "rss_interval": opts.rss_interval,
        "stacks": {str(k): v for k, v in sorted(res.stacks.items())},
        "stack_sample": opts.stacks,
        "fault_mode": opts.fault_mode,
        "alloc": opts.alloc,   # fault rows' `alloc` followed (--alloc)
        # minor faults followed to their end (latency), or sent at entry
        "fault_end": "followed" if opts.fault_latency and opts.fault_mode == "events" else "entry",
        "system": None if opts.system is None else system.to_meta(res, opts.system),
        "peaks": _peaks(res, opts),
    }


def _peaks(res: Result, opts: Options) -> dict | None:
    """Peak mapped and resident bytes (tracer.peaks): computed while
    tracing (tracer.peaks_stream), else read back from the spill, which
    holds every row by now; None without one."""
    spill = getattr(res, "spill", None)
    if spill is None or not os.path.exists(spill.path):
        return None
    streamed = spill.peaks() if hasattr(spill, "peaks") else None
    sampled = opts.rss_interval is not None
    pk = streamed or peaks.of_spill(spill.path, mmap.PAGESIZE, opts.records_rss)
    if pk is not None and sampled:
        # a peak between two reads is not seen by the reads, but by the
        # kernel's high-water mark read with them (VmHWM, tracer._procfs):
        # the larger, still a lower bound (it may grow after the last read);
        # its time is not known. The tree's peak (at one instant) keeps the reads'.
        for pid, v in pk["per_pid"].items():
            hwm = res.rss_hwm.get(int(pid), 0)
            v["rss_vmhwm"] = hwm or None
            if hwm and (v["rss"] is None or hwm > v["rss"]):
                v["rss"], v["rss_ts"] = hwm, None
        for v in (*pk["per_pid"].values(), pk["total"]):
            if v["rss"] is not None:
                v["rss_exact"] = False
        pk["rss_interval"] = opts.rss_interval
    return pk


def rss_mode(opts: Options) -> str:
    return "sampled" if opts.rss_interval is not None else "exact" if opts.residency else "off"


def kernel_check(res: Result) -> dict:
    """Captured faults per process next to the kernel's counters.

    The kernel counts in rusage some faults no tracer can see: those it takes
    for the process with no user context (get_user_pages, e.g. copying exec
    arguments; mm_account_fault skips the perf event when regs is NULL), and,
    for `-- CMD`, the faults of memtrace's own child before its exec, which
    BPF counts apart (`pre_exec_fault`)."""
    per_pid = {}
    for pid, k in res.kernel.items():
        if res.origin is not None and not system.with_kernel_figure(res, pid):
            continue   # -a: the kernel's count covers more than was traced of it
        base = res.baseline.get(pid, {"minflt": 0, "majflt": 0})
        cap = res.faults.get(pid, [0, 0])
        per_pid[str(pid)] = {
            "captured_minor": cap[0], "captured_major": cap[1],
            "kernel_minor": k["minflt"] - base["minflt"],
            "kernel_major": k["majflt"] - base["majflt"],
            "source": k["source"] + (" minus the value at attach" if pid in res.baseline else ""),
        }
        # -a: faults made while the process was taken in (running at start,
        # system.start: BPF may have counted them, the kernel's figure has
        # not) and while it was let go (running at the end, system.stop: the
        # kernel's figure has them, BPF may not)
        if "window_minflt" in base:
            per_pid[str(pid)].update(start_window_minor=base["window_minflt"],
                                     start_window_major=base["window_majflt"])
        if "window_minflt" in k:
            per_pid[str(pid)].update(end_window_minor=k["window_minflt"],
                                     end_window_major=k["window_majflt"])
        if "vmhwm" in k:   # still running at the end: its peaks since it started
            per_pid[str(pid)].update(vmhwm=k["vmhwm"], vmpeak=k["vmpeak"])
    # faults of memtrace's own child before its exec (counted, not traced),
    # of which some may be major
    out: dict = {"per_pid": per_pid, "pre_exec_faults": res.counters.get("pre_exec_fault", 0),
                 "pre_exec_major": res.counters.get("pre_exec_major", 0)}
    all_min = sum(v[0] for v in res.faults.values())
    all_maj = sum(v[1] for v in res.faults.values())
    if res.kernel_total:
        # wait4 counts CMD and every descendant it (and they) waited for: the
        # whole tree even where a parent reaped a child before we read it
        ker_min, ker_maj = res.kernel_total["minflt"], res.kernel_total["majflt"]
        cap_min, cap_maj, source, n = all_min, all_maj, res.kernel_total["source"], len(res.processes)
    else:
        cap_min = sum(v["captured_minor"] for v in per_pid.values())
        cap_maj = sum(v["captured_major"] for v in per_pid.values())
        ker_min = sum(v["kernel_minor"] for v in per_pid.values())
        ker_maj = sum(v["kernel_major"] for v in per_pid.values())
        source, n = "/proc/PID/stat", len(per_pid)
    out["total"] = {
        "source": source,
        "processes_with_kernel_counts": n,
        "processes": len(res.processes),
        "captured_minor": cap_min, "captured_major": cap_maj,
        "kernel_minor": ker_min, "kernel_major": ker_maj,
        "unseen_minor": ker_min - cap_min - (out["pre_exec_faults"] - out["pre_exec_major"]),
        "unseen_major": ker_maj - cap_maj - out["pre_exec_major"],
        # the windows above, summed: the difference is within them
        **{f"{w}_window_{m}": sum(v.get(f"{w}_window_{m}", 0) for v in per_pid.values())
           for w in ("start", "end") for m in ("minor", "major")},
        # lost in a full ring: counted by the kernel, not captured
        "lost_minor": res.counters.get("lost_fault", 0) - res.counters.get("lost_fault_major", 0),
        "lost_major": res.counters.get("lost_fault_major", 0),
    }
    if res.kernel_total:
        out["wait4"] = res.kernel_total
    return out


def _n(v: int) -> str:
    return f"{v:,}"


def _bytes(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(v)


def render(res: Result, meta: dict, output: Path, size: int) -> str:
    counts = res.counts
    secs = (res.end_ts - res.start_ts) / 1e9
    nproc = len(res.processes)
    lines = [f"memtrace: {nproc} process{'es' if nproc != 1 else ''}, "
             f"{res.threads} thread{'s' if res.threads != 1 else ''} created, "
             f"{secs:.2f} s" + (f" (stopped by {res.interrupted})" if res.interrupted else "")]
    faults = counts.get("fault", 0)
    minor = sum(v[0] for v in res.faults.values())
    major = sum(v[1] for v in res.faults.values())
    lines.append(f"  faults    {_n(faults)}: {_n(minor)} minor, {_n(major)} major")
    failed = res.counters.get("fault_failed", 0)
    killed = res.counters.get("fault_killed", 0)
    if failed or killed:   # entered, then failed or killed: the kernel does not count them
        lines.append(f"            {_n(failed)} failed (SIGSEGV/SIGBUS), {_n(killed)} killed:"
                     " not counted, not in the trace")
    late = res.counters.get("summary_late_major", 0)
    if late:   # --faults=summary: ended after their entry was written
        lines.append(f"            {_n(late)} major counted as minor (their end came late)")
    untimed = res.counters.get("summary_untimed", 0)
    if untimed:   # --faults=summary: did not pass filemap_fault (swap-in, shmem)
        lines.append(f"            {_n(untimed)} major without latency (not a file page's fault)")
    k = meta["kernel"]["total"]
    if k["processes_with_kernel_counts"]:
        lines.append(f"  kernel    {_n(k['kernel_minor'])} minor, {_n(k['kernel_major'])} major"
                     f" ({k['source'].split(' ')[0]}, {k['processes_with_kernel_counts']} of "
                     f"{k['processes']} processes)")
        pre = meta["kernel"]["pre_exec_faults"]
        pre_maj = meta["kernel"].get("pre_exec_major", 0)
        if pre:
            lines.append(f"            of which {_n(pre - pre_maj)} minor"
                         + (f", {_n(pre_maj)} major" if pre_maj else "")
                         + " before exec (memtrace's own child)")
        lost_min, lost_maj = k.get("lost_minor", 0), k.get("lost_major", 0)
        if lost_min or lost_maj:
            lines.append(f"            of which {_n(lost_min)} minor, {_n(lost_maj)} major"
                         " lost (ring full)")
        un_min, un_maj = k["unseen_minor"] - lost_min, k["unseen_major"] - lost_maj
        s_min, s_maj = k.get("start_window_minor", 0), k.get("start_window_major", 0)
        e_min, e_maj = k.get("end_window_minor", 0), k.get("end_window_major", 0)
        if (un_min or un_maj) and -s_min <= un_min <= e_min and -s_maj <= un_maj <= e_maj:
            # -a: the kernel's counters read just before and just after BPF
            # began (ended) counting a running process bound the difference
            apart = ", ".join(f"{_n(abs(n))} {kind} {'more' if n < 0 else 'fewer'}"
                              for n, kind in ((un_min, "minor"), (un_maj, "major")) if n)
            lines.append(f"            captured {apart}: of the faults made while -a took")
            lines.append(f"            running processes in ({_n(s_min + s_maj)}) or let them go"
                         f" ({_n(e_min + e_maj)}),")
            lines.append("            which the two counts split differently")
        elif un_min or un_maj:
            lines.append(f"            {_n(un_min)} minor, {_n(un_maj)} major not seen: faults the"
                         " kernel took with")
            lines.append("            no user context (e.g. copying exec arguments)")
        else:
            lines.append("            every fault the kernel counted was captured")
    sc = [f"{name} {_n(counts[name])}" for name in SYSCALL_KINDS if counts.get(name)]
    total_sc = sum(counts.get(name, 0) for name in SYSCALL_KINDS)
    lines.extend(_wrap(f"  syscalls  {_n(total_sc)}: ", sc))
    lines.append(f"  mapped    {_bytes(res.bytes_mapped)} mapped, "
                 f"{_bytes(res.bytes_unmapped)} unmapped (successful mmap/munmap)")
    if meta.get("peaks") is not None:
        lines.extend(peak_lines(meta["peaks"], res.processes, meta["kernel"]))
    lost = meta["lost"]
    if lost:
        parts = [f"{name[5:] if name.startswith('lost_') else name} {_n(res.counters[name])}"
                 for name in LOST_COUNTERS if res.counters.get(name)]
        lines.append(f"  LOST      {_n(lost)} events ({', '.join(parts)}): incomplete trace")
    else:
        lines.append("  lost      0 events")
    if res.origin is not None:
        lines.extend(system.process_lines(res, meta["kernel"]["per_pid"]))
    per_row = size / res.rows if res.rows else 0
    lines.append(f"  trace     {output} ({_bytes(size)}, {_n(res.rows)} rows, "
                 f"{per_row:.1f} B/row)")
    return "\n".join(lines)


def as_dict(res: Result, meta: dict, output: Path, size: int) -> dict:
    """The figures `render` prints, for `--json`: same sources, no rounding."""
    minor = sum(v[0] for v in res.faults.values())
    major = sum(v[1] for v in res.faults.values())
    return {
        "processes": {str(k): v for k, v in sorted(res.processes.items())},
        "threads_created": res.threads,
        "duration_s": (res.end_ts - res.start_ts) / 1e9,
        "interrupted": res.interrupted,
        "events": dict(sorted(res.counts.items())),
        "syscalls": sum(res.counts.get(name, 0) for name in SYSCALL_KINDS),
        "faults": {"captured_minor": minor, "captured_major": major},
        "kernel": meta["kernel"],
        "bytes_mapped": res.bytes_mapped,
        "bytes_unmapped": res.bytes_unmapped,
        "peaks": meta.get("peaks"),
        "lost": meta["lost"],
        "lost_by_counter": {name: res.counters.get(name, 0) for name in LOST_COUNTERS},
        "complete": meta["complete"],
        "exit_status": res.exit_status,
        "trace": {"path": str(output), "bytes": size, "rows": res.rows},
    }


def _wrap(head: str, items: list[str], width: int = 79) -> list[str]:
    out, line = [], head
    for it in items:
        if len(line) + len(it) + 2 > width and line.strip():
            out.append(line.rstrip())
            line = " " * 12
        line += it + "  "
    out.append(line.rstrip())
    return out


TOP_PROCESSES = 5


def peak_lines(pk: dict, processes: dict, kernel: dict) -> list[str]:
    """The peaks table: per process (the TOP_PROCESSES largest) and for the
    tree, mapped beside resident; then the kernel's own figure."""
    rows = pk["per_pid"]
    resident = pk.get("residency", True)
    order = sorted(rows, key=lambda p: (-(rows[p]["rss"] or 0), -rows[p]["mapped"], int(p)))
    out = [f"  peak      {'mapped':>11}  {'resident':>12}  (the largest over time)"]
    for p in order[:TOP_PROCESSES]:
        out.append(_peak_row(rows[p], f"{p} {processes.get(int(p), '?')}"))
    if len(order) > TOP_PROCESSES:
        out.append(f"            ... {len(order) - TOP_PROCESSES} more processes (--json: all)")
    if len(order) > 1:
        out.append(_peak_row(pk["total"], f"the tree: {len(order)} processes at once"))
    if not resident:
        out.append("            resident bytes not recorded (--no-rss)")
    elif pk.get("rss_interval"):
        out.append(f"            resident bytes read every {pk['rss_interval']:g} s"
                   " (--rss sampled) with the kernel's")
        out.append("            high-water mark (VmHWM): peaks at least")
    out.extend(_kernel_peak_lines(rows, order, processes, kernel) if resident else [])
    return out


def _peak_row(v: dict, who: str) -> str:
    rss = "-" if v["rss"] is None else (">=" if not v["rss_exact"] else "") + _bytes(v["rss"])
    return f"            {_bytes(v['mapped']):>11}  {rss:>12}  {who}"[:79]


def _kernel_peak_lines(rows: dict, order: list[str], processes: dict, kernel: dict) -> list[str]:
    """wait4's ru_maxrss (-- CMD), else the VmHWM of the processes still
    running, beside our largest peak of one process."""
    w = kernel.get("wait4") or {}
    if w.get("maxrss"):
        best = max((p for p in order if rows[p]["rss"] is not None),
                   key=lambda p: rows[p]["rss"], default=None)
        ours = "none" if best is None else \
            f"{_bytes(rows[best]['rss'])}, {best} {processes.get(int(best), '?')}"
        own = w.get("memtrace_vmhwm")
        if own is not None and w["maxrss"] <= own:
            # the kernel counts the image CMD exec'd from (memtrace's own
            # memory, its VmHWM `own` by CMD's start): it may be all this is
            return [f"  kernel    ru_maxrss {_bytes(w['maxrss'])} (wait4), at most memtrace's own "
                    f"{_bytes(own)}",
                    "            when CMD started, which the kernel counts for CMD's exec: CMD's",
                    "            own peak is not told",
                    f"            ours (one process): {ours}"]
        # mm->hiwater_rss is set from get_mm_rss(), which reads the per-CPU
        # counters' shared count without their CPUs' pending parts
        return [f"  kernel    ru_maxrss {_bytes(w['maxrss'])} (wait4): the high-water mark of one "
                "process,",
                "            kept from per-CPU counts, not their sum (approximate)",
                f"            ours (one process): {ours}"]
    per = kernel.get("per_pid", {})
    return [f"  kernel    VmHWM {_bytes(per[p]['vmhwm'])} of {p} {processes.get(int(p), '?')}"
            " (since it started)" for p in order[:TOP_PROCESSES]
            if per.get(p, {}).get("vmhwm") is not None]
