"""`memtrace demo`: traces a bundled program that walks the seed stories and
tells, step by step, the syscalls each step caused and the faults it took."""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from tracer import as_summary, capture, markers, preflight, summary
from tracer.errors import SetupError, UsageError
from tracer.trace import load

SOURCE = Path(__file__).resolve().parent / "workloads" / "demo.c"
CACHE = Path("/var/cache/memtrace")
KiB = 1024

# (first marker, title, [(marker, label)]): a step runs from its marker to the next
STORIES = [
    ("seed 000: below M_MMAP_THRESHOLD (128 KiB) malloc grows the heap with brk,\n"
     "above it malloc asks mmap; free returns memory only from the heap's top",
     [(1, "A = malloc(30K)"), (2, "B = malloc(40K)"), (3, "C = malloc(200K)"),
      (4, "D = malloc(100K)"), (5, "free(C) 200K"), (6, "free(B) 40K"),
      (7, "free(D) 100K: trim")]),
    ("seed 003: an anonymous mapping costs nothing until touched; reading maps\n"
     "the shared zero page (no memory), writing allocates",
     [(8, "mmap 16 KiB"), (9, "read 4 pages"), (10, "write 4 pages"), (11, "munmap")]),
    ("seed 000: a shared file mapping read after the file left the page cache\n"
     "(major faults: disk reads), then written",
     [(13, "read 8 pages"), (14, "write 8 pages")]),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see memtrace demo --help)")


def main(argv: list[str]) -> int:
    p = _Parser(prog="memtrace demo", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, help="keep the trace here (.parquet or .csv)")
    args = p.parse_args(argv)
    say = lambda s: print(f"memtrace: {s}", file=sys.stderr)
    preflight.check_all(say)
    exe = _build()
    with tempfile.TemporaryDirectory(prefix="memtrace-demo-") as tmp:
        out = args.output or Path(tmp) / "demo.parquet"
        data = Path(tmp) / "demo.dat"
        opts = capture.Options(command=[str(exe), str(data)], pids=[], follow=True,
                               duration=None, output=out, fmt=out.suffix.lstrip(".") or "parquet")
        res = capture.run(opts, say)
        meta = summary.metadata(res, opts, ["demo", *argv])
        size = res.spill.finish(opts.fmt, meta)  # type: ignore[attr-defined]
        print(narrate(load(out).events, int(res.exit_status or 0)))
        print(summary.render(res, meta, out, size))
        if args.output is None:
            print("(run `memtrace demo -o demo.parquet` to keep the trace)")
    return 0 if res.exit_status == 0 else 1


def _build() -> Path:
    """Compiles the demo program once per source version."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    for d in (CACHE, Path(tempfile.gettempdir()) / "memtrace-cache"):
        exe = d / f"demo-{digest}"
        if exe.exists():
            return exe
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise SetupError("the demo needs a C compiler (gcc): run scripts/setup")
        tmp = exe.with_suffix(".tmp")
        r = subprocess.run([gcc, "-O1", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
        if r.returncode:
            raise SetupError(f"cannot compile the demo: {r.stderr.strip().splitlines()[0]}")
        os.replace(tmp, exe)
        return exe
    raise SetupError("no writable cache directory for the demo program")


def _kib(n: float) -> str:
    return f"{n / KiB:+,.0f} KiB" if n else "0"


def narrate(events: pd.DataFrame, status: int) -> str:
    """The stories, one line per step: syscalls, heap, faults, resident change."""
    marks = markers.markers(events)
    if marks.empty:
        return "memtrace demo: the workload left no markers (it failed?)"
    pid = int(marks["pid"].iloc[0])
    ev = events[(events["pid"] == pid) & ~markers.is_marker(events)]
    at = dict(zip(marks["step"], marks["ts"]))
    heap_start = _heap_start(ev)
    lines = []
    for title, steps in STORIES:
        lines += ["", title]
        lines.append(f"  {'step':<19}{'syscalls':<24}{'heap':>8}  {'faults':<15}{'resident':>9}")
        for n, label in steps:
            t0, t1 = at.get(n), at.get(n + 1)
            if t0 is None or t1 is None:
                lines.append(f"  {label:<19}(no marker: step not reached)")
                continue
            step = ev[(ev["ts"] > t0) & (ev["ts"] < t1)]
            lines.append("  " + _step_line(label, step, ev[ev["ts"] < t1], heap_start))
    return "\n".join(lines)


def _heap_start(ev: pd.DataFrame) -> int | None:
    brk = ev[(ev["kind"] == "brk") & (ev["addr"] == 0)]
    return int(brk["ret"].iloc[0]) if len(brk) else None


def _step_line(label: str, step: pd.DataFrame, before: pd.DataFrame, heap_start: int | None) -> str:
    calls = []
    for _, r in step[step["kind"].isin(["brk", "mmap", "munmap", "mremap", "madvise",
                                         "mprotect"])].iterrows():
        kind = r["kind"]
        if kind == "brk":
            if r["addr"] == 0:
                continue
            prev = before[(before["kind"] == "brk") & (before["ts"] < r["ts"])]["ret"]
            calls.append(f"brk {_kib(int(r['ret']) - int(prev.iloc[-1]))}" if len(prev) else "brk")
        elif kind in ("mmap", "munmap"):
            calls.append(f"{kind} {int(r['len']) / KiB:,.0f} KiB")
        else:
            calls.append(str(kind))
    brks = before[(before["kind"] == "brk")]["ret"]
    heap = f"{(int(brks.iloc[-1]) - heap_start) / KiB:,.0f} KiB" if heap_start and len(brks) else "-"
    faults = step[step["kind"] == "fault"]
    if len(faults):
        n = as_summary.counts(faults)              # a summary row: `count` faults
        total = int(n.sum())
        major = int(n[faults["major"].to_numpy(dtype=bool, na_value=False)].sum())
        write = int(n[(faults["error_code"].fillna(0).astype(int) & 2).to_numpy() != 0].sum())
        parts = []
        if major:
            parts.append(f"{major} major")
        if total - major:
            parts.append(f"{total - major} minor")
        kinds = []
        if total - write:
            kinds.append(f"{total - write}r")
        if write:
            kinds.append(f"{write}w")
        fault_text = " ".join(parts) + f" ({' '.join(kinds)})"
    else:
        fault_text = "none"
    resident = 4096 * int(faults[["rss_anon", "rss_file", "rss_shmem"]].fillna(0).to_numpy().sum())
    rss = step[step["kind"] == "rss"]["rss_delta"].fillna(0)
    resident += int(rss.sum())
    return (f"{label:<19}{', '.join(calls) or 'no syscall':<24}{heap:>8}  "
            f"{fault_text:<15}{_kib(resident):>9}")
