"""`memtrace [-p PID | -a | -- CMD]`: trace, write the trace, print the summary.

Run through sudo (SUDO_UID/SUDO_GID set), CMD runs as the invoking user, as
any program that user runs would (the environment as sudo left it), unless
`--user NAME` or `--as-root`; the output files are given to the invoking
user either way."""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
import time
from pathlib import Path

from tracer import (_procfs, capture, capture_files, check, dataset, live, preflight, rss_sample,
                    summary, system)
from tracer.budget import EXIT_BUDGET
from tracer.errors import NoSuchProcess, OutputError, UsageError
from tracer.layout import C

# Exit status with --fail-on-loss when events were lost (README "Exit codes").
LOST_EXIT = 7

EPILOG = """examples:
  sudo memtrace -- ./myprog arg       # trace myprog and its children
  sudo memtrace -o run.parquet -- make
  sudo memtrace -p 1234 -d 10         # attach to PID 1234 for 10 s
  sudo memtrace -p 1234,1240 --no-follow -o run.csv
  sudo memtrace -a -d 10              # every process, for 10 s
  sudo memtrace -a --comm nginx --uid www-data
  sudo memtrace --budget budget.toml --junit budget.xml -- ./myprog
  memtrace report run.parquet         # summarise a trace
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise UsageError(f"{message} (see memtrace --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="memtrace", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Trace every memory syscall and page fault of a process tree.")
    p.add_argument("-p", "--pid", type=_pid_list, action="extend", default=[],
                   metavar="PID[,PID...]",
                   help="attach to running processes (all their threads); may be repeated")
    p.add_argument("-a", "--all", action="store_true",
                   help="trace every process (system-wide; with --comm, --cgroup, --uid:"
                   " those matching all the filters given) until -d or Ctrl-C")
    p.add_argument("--comm", action="append", metavar="NAME",
                   help="with -a: processes of this name (/proc/PID/comm); may be repeated")
    p.add_argument("--cgroup", metavar="PATH",
                   help="with -a: processes in this cgroup v2 or below it")
    p.add_argument("--uid", metavar="UID|NAME", help="with -a: processes of this (real) user")
    p.add_argument("-o", "--output", type=Path, metavar="PATH",
                   help="trace file, .parquet or .csv (default: memtrace-COMM-TIME.parquet);"
                   " with --dataset, the dataset directory")
    p.add_argument("--dataset", action="store_true",
                   help="write the trace as one run of the dataset -o DIR "
                   "(DIR/host=H/date=D/run=R/, docs/format.md; memtrace query DIR)")
    p.add_argument("-d", "--duration", type=_positive_float, metavar="SECONDS",
                   help="stop after this long")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but errors (no status line while tracing)")
    p.add_argument("--no-follow", dest="follow", action="store_false",
                   help="with -p: do not trace children forked after attach")
    p.add_argument("--no-exec-stop", dest="stop_at_exec", action="store_false", default=None,
                   help="do not hold a process at exec while its maps are read "
                   "(the exec snapshot is then read late; the default with -a)")
    p.add_argument("--exec-stop", dest="stop_at_exec", action="store_true", default=None,
                   help="with -a: hold every traced process at exec until its maps are read")
    p.add_argument("--ring-pages", type=_power_of_two, metavar="N",
                   help="size of each CPU's fault ring buffer in pages (default: "
                   "%d shared by the CPUs' rings, at least %d each; past 16 CPUs, "
                   "CPUs share 16 rings)"
                   % (C["MT_FAULT_RING_PAGES"], C["MT_CPU_RING_MIN_PAGES"]))
    p.add_argument("--fail-on-loss", action="store_true",
                   help=f"exit with status {LOST_EXIT} if any event was lost "
                   "(default: CMD's status; the loss is reported either way)")
    p.add_argument("--rss", choices=RSS_MODES,
                   help="resident memory. exact: every change of the kernel's counters, "
                   "each fault with the pages it made resident (kmem:rss_stat; the default "
                   "in events mode); sampled: each process's counters read from "
                   "/proc/PID/status every --rss-interval, which adds no hook to the traced "
                   "program (the default with --faults=summary and -a); off: no rss rows")
    p.add_argument("--no-rss", dest="rss", action="store_const", const="off",
                   help="--rss off")
    p.add_argument("--rss-interval", type=_positive_float, metavar="SECONDS",
                   help=f"with --rss sampled: how often (default {rss_sample.DEFAULT_INTERVAL:g})")
    p.add_argument("--stacks", nargs="?", type=_positive_int, const=STACK_SAMPLE, default=0,
                   metavar="N", help="record user stacks of the memory syscalls and of one "
                   f"fault in N per CPU (default {STACK_SAMPLE}; 1: every fault); walked by "
                   "frame pointers")
    p.add_argument("--faults", dest="fault_mode", choices=("events", "summary"),
                   help="events: one row per page fault (default, but with -a); "
                   "summary: faults counted in the kernel per process, 64 KiB block, "
                   "access and 67 ms slot, one row per count (the lowest overhead; "
                   "the default with -a)")
    p.add_argument("--alloc", action="store_true",
                   help="count the pages the kernel allocates inside each fault "
                   "(kmem:mm_page_alloc): a copy-on-write copy, a zeroed page, "
                   "read-ahead; costs a fault-heavy program about 9%%")
    p.add_argument("--fault-latency", action="store_true",
                   help="follow each minor fault to its end: its latency and end time "
                   "(the PAGE_FAULTS_MIN perf event, the costliest hook; default: "
                   "latency of major faults only, a minor fault's row at its entry)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--user", metavar="NAME",
                     help="run CMD as this user (name or uid; default: the user who ran "
                     "sudo, else root)")
    who.add_argument("--as-root", action="store_true",
                     help="run CMD as root even when memtrace is run through sudo")
    check.add_options(p)   # --budget, --json, --junit
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                   help="command to start and trace")
    return p


STACK_SAMPLE = 64
RSS_MODES = ("exact", "sampled", "off")


def residency(args: argparse.Namespace, fault_mode: str) -> tuple[str, float | None]:
    """--rss and --rss-interval: the mode (RSS_MODES) and, when sampled, the
    interval. Sampled by default in summary mode: kmem:rss_stat alone costs
    more than its budget (tracer/rss_sample.py)."""
    mode = args.rss or ("sampled" if fault_mode == "summary" else "exact")
    if args.rss_interval is not None and mode != "sampled":
        raise UsageError(f"--rss-interval is for --rss sampled (residency is {mode})")
    if getattr(args, "alloc", False) and (mode != "exact" or fault_mode == "summary"):
        raise UsageError("--alloc counts pages inside each fault row: it needs --faults=events "
                         f"and --rss exact (here {fault_mode}, rss {mode})")
    return mode, ((args.rss_interval or rss_sample.DEFAULT_INTERVAL) if mode == "sampled"
                  else None)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _pid_list(text: str) -> list[int]:
    pids = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) <= 0:
            raise argparse.ArgumentTypeError(f"not a process id: {part!r}")
        pids.append(int(part))
    return pids


def _check_pids(pids: list[int]) -> None:
    """Each PID once, a process (not a thread of one), with user memory."""
    seen: set[int] = set()
    for pid in pids:
        if pid in seen:
            raise UsageError(f"process {pid} is listed twice")
        seen.add(pid)
    for pid in pids:
        if pid == os.getpid():
            raise UsageError(f"{pid} is memtrace itself")
        if not _procfs.exists(pid):
            tgid = _thread_group(pid)
            if tgid is not None:
                raise UsageError(f"{pid} is a thread of process {tgid}: give -p {tgid}"
                                 " (memtrace traces whole processes)")
            raise NoSuchProcess(pid)
        if _procfs.is_kernel_thread(pid):
            raise UsageError(f"process {pid} is a kernel thread: it has no user memory to trace")


def _thread_group(tid: int) -> int | None:
    """The process a thread id belongs to, None if there is no such task."""
    try:
        tgid = _procfs.read_status(tid).get("Tgid")
    except (NoSuchProcess, OSError):
        return None
    return tgid if isinstance(tgid, int) and tgid != tid else None


def _sudo_user() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran memtrace through sudo, if that is how
    it runs (as root, SUDO_UID and SUDO_GID set, not root itself)."""
    if os.geteuid() != 0 or "SUDO_UID" not in os.environ:
        return None
    try:
        uid, gid = int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID", ""))
    except ValueError:
        raise UsageError("SUDO_UID/SUDO_GID are not numbers: unset them, or give"
                         " --user NAME or --as-root") from None
    return None if uid == 0 else (uid, gid)


def _user(spec: str) -> tuple[int, int, list[int]]:
    """--user NAME (or a numeric uid): (uid, gid, supplementary groups)."""
    try:
        pw = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except KeyError:
        raise UsageError(f"no such user: {spec}") from None
    return pw.pw_uid, pw.pw_gid, _groups(pw.pw_name, pw.pw_gid)


def _invoker(uid: int, gid: int) -> tuple[int, int, list[int]]:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry: its primary group only
        return uid, gid, [gid]
    return uid, gid, _groups(name, gid)


def _groups(name: str, gid: int) -> list[int]:
    try:
        return sorted(set(os.getgrouplist(name, gid)))
    except OSError:
        return [gid]


def _run_as(args: argparse.Namespace, sudo: tuple[int, int] | None
            ) -> tuple[int, int, list[int]] | None:
    if args.as_root:
        return None
    if args.user is not None:
        return _user(args.user)
    return _invoker(*sudo) if sudo else None


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def _power_of_two(text: str) -> int:
    if not text.isdigit() or int(text) < 1 or int(text) & (int(text) - 1):
        raise argparse.ArgumentTypeError(f"not a power of two: {text!r}")
    return int(text)




def check_mode(args: argparse.Namespace, command: list[str]) -> system.Filters | None:
    """What to trace, checked before anything runs: -p, -- CMD or -a (its
    filters, None without -a)."""
    if args.all:
        if command or args.pid:
            raise UsageError("-a traces every process: not with -p or a command"
                             " (see memtrace --help)")
        if args.user is not None or args.as_root:
            raise UsageError("--user and --as-root choose who runs CMD: not with -a")
        if not args.follow:
            raise UsageError("--no-follow is for -p: -a decides each process by itself")
        if args.stop_at_exec is None:   # not every exec of the machine held (README)
            args.stop_at_exec = False
        return system.parse_filters(args.comm, args.cgroup, args.uid)
    if args.stop_at_exec is None:
        args.stop_at_exec = True
    if args.comm or args.cgroup is not None or args.uid is not None:
        raise UsageError("--comm, --cgroup and --uid choose the processes of -a: give -a")
    if bool(command) == bool(args.pid):
        raise UsageError("give either -p PID, -a or -- CMD (see memtrace --help)")
    if args.pid and (args.user is not None or args.as_root):
        raise UsageError("--user and --as-root choose who runs CMD: not with -p")
    return None


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    filters = check_mode(args, command)
    fault_mode = args.fault_mode or ("summary" if filters else "events")
    rss_mode, interval = residency(args, fault_mode)
    budget = check.prepare(args)   # a bad budget fails here, before tracing
    say = (lambda s: None) if args.quiet else (lambda s: print(f"memtrace: {s}", file=sys.stderr))

    # everything that can be checked is checked before tracing starts
    preflight.check_all(say)
    if command:
        exe = shutil.which(command[0])
        if exe is None:
            raise UsageError(f"command not found: {command[0]}")
    _check_pids(args.pid)
    sudo = _sudo_user()
    run_as = _run_as(args, sudo) if command else None
    name = (Path(command[0]).name if command else "all" if filters is not None
            else _procfs.read_stat(args.pid[0]).comm)
    output = args.output or Path(f"memtrace-{_safe(name)}-{time.strftime('%Y%m%d-%H%M%S')}.parquet")
    run = dataset.start_run(args.output) if args.dataset else None
    if run is not None:
        output = run.events     # DIR/host=H/date=D/.run=R/events.parquet
    fmt = _format_of(output)
    if output.is_dir():
        raise OutputError(f"{output} is a directory: name a .parquet or .csv file"
                          " (or add --dataset)")
    if not output.parent.is_dir():
        raise OutputError(f"cannot write {output}: no directory {output.parent}")

    opts = capture.Options(command=command or None, pids=args.pid, follow=args.follow,
                           duration=args.duration, output=output, fmt=fmt,
                           fault_ring_pages=args.ring_pages, stop_at_exec=args.stop_at_exec,
                           run_as=run_as, owner=sudo, residency=rss_mode == "exact",
                           rss_interval=interval,
                           stacks=args.stacks, system=filters,
                           fault_latency=args.fault_latency, alloc=args.alloc,
                           fault_mode=fault_mode)
    view = live.LiveView.for_stream(sys.stderr, args.quiet, summary.LOST_COUNTERS)
    try:
        res = capture.run(opts, view.wrap(say) if view else say, live=view)
    except BaseException:
        if run is not None:
            run.abandon()
        raise
    finally:
        if view is not None:
            view.clear()
    try:
        meta = summary.metadata(res, opts, argv)
        if run is not None:
            meta["dataset"] = run.identity()
    except BaseException:   # the Parquet encoded while tracing goes; the spill stays
        res.spill.abandon()  # type: ignore[attr-defined]
        raise
    size = res.spill.finish(fmt, meta)  # type: ignore[attr-defined]
    if run is not None:   # the sidecar, then the run in place; commit chowns it all
        output, sudo = run.commit(meta, sudo, say), None
    if sudo:
        for p in (output, Path(str(output) + ".meta.json") if fmt == "csv" else None):
            if p is not None:
                capture_files.chown(p, sudo, say)
    if not args.quiet:
        print(summary.render(res, meta, output, size), file=sys.stderr)
    over = check.after_record(args, budget, res, meta, output, size, sudo, say)
    if meta["lost"]:
        print(f"memtrace: {meta['lost']:,} events LOST: the trace is incomplete "
              "(see the summary)", file=sys.stderr)
        if args.fail_on_loss and not over:
            return LOST_EXIT
    if over:
        return EXIT_BUDGET
    if res.exit_status is not None:
        return res.exit_status
    return 0


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "trace"


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise UsageError(f"{path}: the output name must end in .parquet or .csv")
