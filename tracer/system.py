"""`memtrace -a`: system-wide capture. Which processes it traces, how the
processes already running at start are taken in, where each traced process
came from (for the kernel cross-check), and the summary's table of them.

A process is traced while it matches every filter given (none: every
process):
- `--comm NAME` (repeatable, any of the names): the process's name as in
  /proc/PID/comm (its main thread's: the program's file name cut to 15
  bytes, unless the process renamed itself);
- `--uid UID|NAME`: its real uid (as `ps -U`);
- `--cgroup PATH`: it is in that cgroup v2 or in one below it.

Each process is decided once, when first seen, and the decision is kept in
BPF's `traced` map: at start for every process running (here, from /proc),
at fork (the child of a traced process is traced from its first instant,
unless its name fails --comm; uid and cgroup are its parent's), else at its
first event (BPF's current_state). It is decided again at every exec (a
new name; a uid or cgroup changed before the exec, as su and service
managers do) and, with --comm, when its main thread is renamed. A traced
process that stops matching leaves the trace with an exit row flagged
`left` (docs/format.md). memtrace and the processes it starts are never
traced (MT_STATE_EXCLUDED, inherited across fork and exec), nor are kernel
threads.
"""
from __future__ import annotations

import errno
import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from tracer import _procfs, bpf_syscall
from tracer.errors import NoSuchProcess, UsageError
from tracer.layout import C

COMM_MAX = C["MT_COMM_LEN"] - 1
BPF_NOEXIST = 1
TRACED, IGNORED, EXCLUDED = C["MT_STATE_TRACED"], C["MT_STATE_IGNORED"], C["MT_STATE_EXCLUDED"]
LEFT = C["MT_EXIT_LEFT"]

# where a traced process came from (Result.origin): only "fork" (its whole
# life) and "start"/"exec" with their counters read then (Result.baseline)
# have a kernel figure to set beside the captured faults
ORIGINS = ("start", "fork", "exec", "seen")


class Cgroup(NamedTuple):
    path: str      # the directory, resolved
    rel: str       # as /proc/PID/cgroup names it ("/a/b")
    id: int        # cgroup v2 id: the directory's inode (bpf_get_current_cgroup_id)


@dataclass(frozen=True)
class Filters:
    comms: tuple[str, ...] = ()
    uid: int | None = None
    cgroup: Cgroup | None = None

    def config(self) -> dict[int, int]:
        """The `config` entries of bpf/memtrace.h (MT_CFG_*) for these filters."""
        return {C["MT_CFG_ALL"]: C["MT_ALL_FILTERS"],
                C["MT_CFG_UID"]: 0 if self.uid is None else self.uid + 1,
                C["MT_CFG_CGROUP"]: 0 if self.cgroup is None else self.cgroup.id,
                C["MT_CFG_COMM"]: int(bool(self.comms))}

    def comm_keys(self) -> list[bytes]:
        """The keys of BPF's `comm_filter`: each name zero-padded to 16 bytes."""
        return [n.encode().ljust(C["MT_COMM_LEN"], b"\0") for n in self.comms]

    def matches(self, comm: str, uid: int | None, cgroup: str | None) -> bool:
        """BPF's decide(), for a process read from /proc."""
        if self.uid is not None and uid != self.uid:
            return False
        if self.cgroup is not None:
            top = self.cgroup.rel.rstrip("/")
            if cgroup is None or (cgroup != self.cgroup.rel and not cgroup.startswith(top + "/")):
                return False
        return not self.comms or comm in self.comms

    def describe(self) -> str:
        parts = [f"--comm {','.join(self.comms)}"] if self.comms else []
        if self.uid is not None:
            parts.append(f"--uid {self.uid}")
        if self.cgroup is not None:
            parts.append(f"--cgroup {self.cgroup.path}")
        return " ".join(parts) or "every process"

    def to_meta(self) -> dict:
        return {"comm": list(self.comms), "uid": self.uid,
                "cgroup": None if self.cgroup is None else self.cgroup.path,
                "cgroup_id": None if self.cgroup is None else self.cgroup.id}


# ---- the command line ----

def parse_filters(comms: list[str] | None, cgroup: str | None, uid: str | None) -> Filters:
    names = tuple(dict.fromkeys(parse_comm(c) for c in comms or ()))
    if len(names) > C["MT_COMM_FILTERS"]:
        raise UsageError(f"--comm: at most {C['MT_COMM_FILTERS']} names")
    return Filters(names, None if uid is None else parse_uid(uid),
                   None if cgroup is None else parse_cgroup(cgroup))


def parse_comm(name: str) -> str:
    raw = name.encode()
    if not raw or b"\0" in raw:
        raise UsageError(f"--comm {name!r}: not a process name")
    if len(raw) > COMM_MAX:
        cut = raw[:COMM_MAX].decode(errors="ignore")
        raise UsageError(f"--comm {name}: longer than {COMM_MAX} bytes, which is all the"
                         f" kernel keeps of a process's name: give --comm {cut}")
    return name


def parse_uid(spec: str) -> int:
    if spec.isdigit():
        return int(spec)
    try:
        return pwd.getpwnam(spec).pw_uid
    except KeyError:
        raise UsageError(f"--uid {spec}: no such user") from None


def parse_cgroup(path: str, mounts: list[tuple[str, str]] | None = None) -> Cgroup:
    """PATH as a directory of a cgroup v2 mount (/sys/fs/cgroup/a/b) or as
    /proc/PID/cgroup names it (/a/b, relative to the mount)."""
    mounts = _procfs.cgroup2_mounts() if mounts is None else mounts
    if not mounts:
        raise UsageError(f"--cgroup {path}: no cgroup v2 hierarchy is mounted")
    for root, point in mounts:
        for cand in (Path(path), Path(point) / path.lstrip("/")):
            try:
                real = Path(os.path.realpath(cand))
                rel = real.relative_to(point)
            except ValueError:
                continue
            if (real / "cgroup.procs").is_file():
                return Cgroup(str(real), os.path.normpath(os.path.join(root, rel)),
                              os.stat(real).st_ino)
    raise UsageError(f"--cgroup {path}: no such cgroup (not a directory of the cgroup v2"
                     f" hierarchy at {mounts[0][1]})")


# ---- the start ----

Snapshot = Callable[[int], list]


DRAIN_EVERY = 0.05   # s: the rings are drained while the scan runs (1,000 processes: 0.6-3 s)


def start(probes, filters: Filters, res, snapshot: Snapshot,
          drain: Callable[[], None]) -> tuple[list, set[int]]:
    """Before tracing: memtrace excluded, the filters given to BPF, then
    every running process decided, the traced ones snapshotted (their maps,
    their fault counters: `snapshot`), the rings drained meanwhile. A
    process BPF decided first (forked by a traced one, or at its exec) is
    left to its events. Returns the snapshots' batches and the pids traced."""
    traced = probes.table("traced")
    own = os.getpid()
    probes.trace_pid(own, EXCLUDED)
    names = probes.table("comm_filter")
    for key in filters.comm_keys():
        names.update(key, b"\x01")
    config = filters.config()
    for index, value in sorted(config.items(), key=lambda kv: kv[0] == C["MT_CFG_ALL"]):
        probes.set_config(index, value)     # MT_CFG_ALL last: the filters are in place
    # BPF decides no new process while the scan runs: each process's capture
    # starts when it is put in the map, just before its counters are read
    t0 = last = time.monotonic()
    batches: list = []
    pids: set[int] = set()
    scanned, unreadable = 0, []
    for pid in _procfs.list_pids():
        if pid == own:
            continue
        if time.monotonic() - last >= DRAIN_EVERY:
            drain()
            last = time.monotonic()
        state, before = _decide(pid, filters)
        if state is None:
            continue
        scanned += 1
        if not _insert(probes, traced, pid, state) or state != TRACED:
            continue
        res.origin[pid] = "start"
        pids.add(pid)
        try:
            batches.extend(snapshot(pid))
        except NoSuchProcess:      # gone: its exit is in the events
            pass
        except PermissionError:    # more privileged than memtrace: traced, no maps
            unreadable.append(pid)
        base = res.baseline.get(pid)
        if base is not None and before is not None:
            # its counters read before BPF counts it and after (snapshot):
            # of the faults between, BPF saw some (those after the map's
            # epoch moved), the kernel's figure none; at 300k faults/s a
            # few (-a runs of the README's neighbour here: 0 to 56 faults
            # at the start, 0 to 32 at the end)
            base["window_minflt"] = base["minflt"] - before.minflt
            base["window_majflt"] = base["majflt"] - before.majflt
    probes.set_config(C["MT_CFG_ALL"], config[C["MT_CFG_ALL"]] | C["MT_ALL_NEW"])
    res.startup["scan"] = time.monotonic() - t0
    res.scan = {"processes": scanned, "traced": len(pids), "seconds": res.startup["scan"],
                "maps_unreadable": unreadable}
    return batches, pids


def _decide(pid: int, filters: Filters) -> tuple[int | None, _procfs.ProcStat | None]:
    """TRACED or IGNORED for a running process, None if it is gone or a
    zombie; and its stat, read before the decision reaches BPF."""
    try:
        st = _procfs.read_stat(pid)
        if st.flags & _procfs.PF_KTHREAD:
            return IGNORED, st
        if st.state in ("Z", "X"):
            return None, None
        uid = _procfs.read_status(pid).get("Uid") if filters.uid is not None else None
        cg = _procfs.read_cgroup_v2(pid) if filters.cgroup is not None else None
    except NoSuchProcess:
        return None, None
    return (TRACED if filters.matches(st.comm, uid, cg) else IGNORED), st


def _insert(probes, traced, pid: int, state: int) -> bool:
    """Puts the decision in BPF's map; False if BPF made one first."""
    try:
        traced.update(pid.to_bytes(4, "little"), state.to_bytes(4, "little"), BPF_NOEXIST)
    except bpf_syscall.LoadError as e:
        if e.errno != errno.EEXIST:
            raise
        return False
    probes.traced_changed()
    return True


# ---- while tracing ----

def entered(pid: int, res, held: bool, live_pids: set[int]) -> None:
    """An exec of `pid` was read: if it is new to the trace (or comes back
    after leaving it), it entered at this exec. Its counters are read now,
    which is exact while BPF holds it stopped at the exec (`held`)."""
    if pid in res.origin and pid not in res.left:
        return
    res.origin[pid] = "exec"
    live_pids.add(pid)
    res.left.discard(pid)
    res.kernel.pop(pid, None)
    res.baseline.pop(pid, None)
    if held:
        try:
            st = _procfs.read_stat(pid)
        except NoSuchProcess:
            return
        res.baseline[pid] = {"minflt": st.minflt, "majflt": st.majflt}


def account(res, events: np.ndarray, faults: np.ndarray, live_pids: set[int],
            snapshot: Snapshot) -> list:
    """After a drain: children forked (traced from birth), processes that
    left the filters, and processes seen for the first time otherwise
    (snapshotted now, late). Returns the snapshots' batches."""
    kind = events["kind"]
    for child in events["aux"][kind == C["MT_EV_FORK"]].tolist():
        res.origin[child] = "fork"
        res.left.discard(child)
        res.baseline.pop(child, None)
    exits = (kind == C["MT_EV_EXIT"]) & ((events["flags"] & LEFT) != 0)
    for pid in events["pid"][exits].tolist():
        res.left.add(pid)
        res.kernel.pop(pid, None)
        live_pids.discard(pid)
    out: list = []
    seen = np.union1d(np.unique(events["pid"]), np.unique(faults["pid"]))
    for pid in seen.tolist():
        if pid in res.origin:
            continue
        res.origin[pid] = "seen"
        live_pids.add(pid)
        try:
            out.extend(snapshot(pid))
        except (NoSuchProcess, PermissionError):
            res.processes.setdefault(pid, "?")
        res.baseline.pop(pid, None)   # read late: no kernel figure
    return out


def stop(probes, live_pids: set[int], res, read_counts: Callable[[int], None]) -> None:
    """The end: no more decisions, then each process still traced untraced
    and its counters read at once (`read_counts`), so that the kernel's
    figure and the capture end within microseconds of each other."""
    probes.set_config(C["MT_CFG_ALL"], 0)
    for pid in sorted(live_pids):
        try:
            before = _procfs.read_stat(pid)
        except NoSuchProcess:
            before = None
        probes.untrace_pid(pid)
        read_counts(pid)
        k = res.kernel.get(pid)
        if k is not None and k["source"].endswith("(running)"):
            k["source"] = STOPPED   # not read again later (capture_counts.read_kernel_counts)
            if before is not None:
                # as at the start: the faults between the two reads, which
                # the kernel's figure has and BPF saw some of (before the
                # epoch moved)
                k["window_minflt"] = k["minflt"] - before.minflt
                k["window_majflt"] = k["majflt"] - before.majflt


STOPPED = "/proc/PID/stat (as tracing stopped)"


def with_kernel_figure(res, pid: int) -> bool:
    """Whether the kernel's counters of `pid` cover exactly what was traced
    of it: its whole life (forked by a traced process), or since counters
    read when it was taken in (at start, or held at its exec)."""
    o = res.origin.get(pid)
    return pid not in res.left and (o == "fork" or (o in ("start", "exec") and pid in res.baseline))


# ---- the summary ----

def to_meta(res, filters: Filters) -> dict:
    """The run's `system` metadata: filters, start, each process's origin."""
    return {**filters.to_meta(), "scan": res.scan,
            "origin": {str(p): o for p, o in sorted(res.origin.items())},
            "left": sorted(res.left)}


def _n(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def process_lines(res, per_pid: dict, top: int = 10) -> list[str]:
    """The summary's table of -a (at most 80 columns): the `top` processes
    by faults captured, the others summed, the total; beside each, the
    kernel's count where it covers what was traced (kernel_check's per_pid)."""
    rows = []
    for pid in set(res.processes) | set(res.faults):
        cap = res.faults.get(pid, [0, 0])
        k = per_pid.get(str(pid))
        ker = None if k is None else (k["kernel_minor"], k["kernel_major"])
        rows.append((cap[0] + cap[1], pid, cap, ker))
    rows.sort(key=lambda r: (-r[0], r[1]))
    out = ["  " + "by process".ljust(25) + " " + "faults captured".rjust(19)
           + " " + "the kernel's count".rjust(19) + "  traced",
           "  " + "    pid  name".ljust(25) + " " + "minor".rjust(11) + " " + "major".rjust(7)
           + " " + "minor".rjust(11) + " " + "major".rjust(7) + "  from"]

    def line(label: str, cap, ker, origin: str) -> str:
        kmin, kmaj = (None, None) if ker is None else ker
        return (f"  {label:<25.25} {_n(cap[0]):>11} {_n(cap[1]):>7} {_n(kmin):>11}"
                f" {_n(kmaj):>7}  {origin}").rstrip()

    for _, pid, cap, ker in rows[:top]:
        name = str(res.processes.get(pid, "?"))
        origin = res.origin.get(pid, "") + (",left" if pid in res.left else "")
        out.append(line(f"{pid:>7}  {name}", cap, ker, origin))
    if len(rows) > top:
        rest = rows[top:]
        out.append(line(f"  ({len(rest)} more)", _sum(r[2] for r in rest), None, ""))
    out.append(line(f"  all {len(rows)}", _sum(r[2] for r in rows), None, ""))
    kers = [r for r in rows if r[3] is not None]
    out.append(line(f"  {len(kers)} with kernel counts", _sum(r[2] for r in kers),
                    _sum(r[3] for r in kers), ""))
    return out


def _sum(pairs) -> list[int]:
    a = b = 0
    for x, y in pairs:
        a, b = a + x, b + y
    return [a, b]
