#!/usr/bin/env python3
"""Benchmark of the address-space model (tracer.address_space.build).

With --trace PATH (repeatable): what a user does with a trace file, timed
per step, best of --repeat runs each from a fresh tracer.load:
  load       tracer.load(PATH) and t.events (Parquet -> pandas)
  frames     t.vmas, t.faults (the model: replay, versions, attribution)
  timelines  t.timeline(pid) for each pid of t.vmas (the model's timeline
             joined with the resident-memory frame of tracer.rss)
and, apart, the model's own share: build() plus model.timeline(pid) for
each pid, from the loaded events. Events per second: the trace's rows over
the time. Wall-clock and CPU time (process_time) both: the machine may be
shared.

Without --trace: a synthetic trace in the shape of tracer.trace.Trace.events:
one process attached with 20 mappings (64 MiB anonymous each), then rounds of
mmap (256 KiB) -> faults -> munmap, the mmaps cycling over 64 addresses as
the kernel's allocator reuses them: by default 2,000,000 faults and 50,000
mmap/munmap. Prints events per second of build() (frames and attribution).

    .venv/bin/python scripts/bench_model.py [--faults N] [--syscalls N] [--repeat N]
    .venv/bin/python scripts/bench_model.py --trace churn.parquet [--repeat N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tracer import address_space  # noqa: E402

KINDS = ["brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "fault",
         "fork", "thread", "exec", "exit", "rename", "rss", "map"]
PAGE = 4096
PID = 1000
BASE = 0x7f0000000000
BIG = 64 << 20
SLOT0 = 0x7e0000000000
SLOT = 256 << 10


def synthetic(n_faults: int, n_syscalls: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rounds = max(n_syscalls // 2, 1)
    per = max(n_faults // rounds, 1)
    n_faults = per * rounds
    nmap = 20
    # row layout: 20 map rows, then per round: mmap, `per` faults, munmap
    n = nmap + rounds * (per + 2)
    kind = np.full(n, KINDS.index("fault"), np.int8)
    r = np.arange(rounds)
    first = nmap + r * (per + 2)
    kind[:nmap] = KINDS.index("map")
    kind[first] = KINDS.index("mmap")
    kind[first + per + 1] = KINDS.index("munmap")
    fault = kind == KINDS.index("fault")
    sysc = ~fault & (np.arange(n) >= nmap)
    mapr = np.arange(n) < nmap

    slot_addr = SLOT0 + (r % 64).astype(np.uint64) * np.uint64(2 * SLOT)
    addr = np.zeros(n, np.uint64)
    length = np.zeros(n, np.uint64)
    addr[:nmap] = BASE + np.arange(nmap, dtype=np.uint64) * np.uint64(2 * BIG)
    length[:nmap] = BIG
    addr[first + per + 1] = slot_addr
    length[first] = length[first + per + 1] = SLOT
    # faults: 7 in 8 on the long-lived mappings, the rest on the round's mmap
    fr = np.repeat(r, per)
    on_slot = rng.random(n_faults) < 0.125
    big = rng.integers(0, nmap, n_faults).astype(np.uint64)
    fa = np.where(on_slot,
                  slot_addr[fr] + rng.integers(0, SLOT // PAGE, n_faults).astype(np.uint64) * np.uint64(PAGE),
                  BASE + big * np.uint64(2 * BIG)
                  + rng.integers(0, BIG // PAGE, n_faults).astype(np.uint64) * np.uint64(PAGE))
    addr[fault] = fa + np.uint64(0x10)
    ret = np.zeros(n, np.int64)
    ret[first] = slot_addr.astype(np.int64)
    prot = np.zeros(n, np.int32)
    prot[first] = 3
    prot[:nmap] = 3
    flags = np.zeros(n, np.uint64)
    flags[first] = 0x22
    flags[:nmap] = 2
    ec = np.where(rng.random(n) < 0.5, 6, 4).astype(np.uint16)
    ts = (np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(100)
    ts[:nmap] = ts[0]

    def col(values, valid, dtype):
        return pd.arrays.IntegerArray(values.astype(dtype.lower()), ~valid) if dtype[0] == "I" \
            else pd.array(pd.arrays.IntegerArray(values.astype(dtype.lower()), ~valid), dtype=dtype)
    none = np.zeros(n, bool)
    zero = np.zeros(n, np.int64)
    df = pd.DataFrame({
        "ts": ts, "pid": np.full(n, PID, np.int32), "tid": np.full(n, PID, np.int32),
        "comm": pd.Categorical.from_codes(np.zeros(n, np.int8), ["bench"]),
        "kind": pd.Categorical.from_codes(kind, KINDS),
        "addr": pd.array(addr, dtype="UInt64"),
        "len": col(length, sysc | mapr, "UInt64"), "prot": col(prot, mapr | (kind == 1), "Int32"),
        "flags": col(flags, mapr | (kind == 1), "UInt64"),
        "fd": col(np.full(n, -1), kind == 1, "Int32"), "off": col(zero, mapr | (kind == 1), "UInt64"),
        "new_len": col(zero, none, "UInt64"), "new_addr": col(zero, none, "UInt64"),
        "ret": col(ret, sysc, "Int64"), "duration": col(zero + 500, sysc, "UInt64"),
        "ip": col(np.full(n, 0x401000), fault, "UInt64"),
        "major": pd.arrays.BooleanArray(np.zeros(n, bool), ~fault),
        "error_code": col(ec, fault, "UInt16"), "latency": col(zero + 900, fault, "UInt32"),
        "rss_anon": col(np.ones(n), fault, "Int16"), "rss_file": col(zero, fault, "Int16"),
        "rss_shmem": col(zero, fault, "Int16"), "rss_swap": col(zero, fault, "Int16"),
        "child": col(zero, none, "Int32"),
        "path": pd.Categorical.from_codes(np.where(mapr, 0, -1).astype(np.int8), [""]),
        "member": col(zero, none, "Int8"), "rss_size": col(zero, none, "Int64"),
        "rss_delta": col(zero, none, "Int64"),
        "cause": pd.Categorical.from_codes(np.where(mapr, 0, -1).astype(np.int8), ["attach"]),
        "inode": col(zero, mapr, "UInt64"),
    })
    return df


class _Clock:
    """Wall-clock and CPU seconds of a block, kept as the best of the runs."""

    def __init__(self) -> None:
        self.best: dict[str, tuple[float, float]] = {}
        self.now: dict[str, tuple[float, float]] = {}

    def lap(self, name: str, t0: tuple[float, float]) -> tuple[float, float]:
        t1 = (time.perf_counter(), time.process_time())
        self.now[name] = (t1[0] - t0[0], t1[1] - t0[1])
        return t1

    def keep(self) -> None:
        for k, (w, c) in self.now.items():
            bw, bc = self.best.get(k, (float("inf"), float("inf")))
            self.best[k] = (min(w, bw), min(c, bc))


def bench_trace(path: str, repeat: int) -> None:
    import tracer
    clock = _Clock()
    for _ in range(repeat):
        t0 = (time.perf_counter(), time.process_time())
        t = tracer.load(path)
        n = len(t.events)
        t1 = clock.lap("load", t0)
        t.vmas, t.faults
        t2 = clock.lap("frames", t1)
        pids = sorted(int(p) for p in t.vmas["pid"].unique())
        for pid in pids:
            t.timeline(pid)
        clock.lap("timelines", t2)
        # the model's own share, from the same events
        t3 = (time.perf_counter(), time.process_time())
        m = address_space.build(t.events, page_size=int(t.meta.get("page_size", 4096)))
        for pid in pids:
            m.timeline(pid)
        clock.lap("model", t3)
        clock.now["total"] = tuple(clock.now["load"][i] + clock.now["frames"][i]
                                   + clock.now["timelines"][i] for i in (0, 1))
        clock.keep()
    kinds = t.events["kind"].value_counts()
    print(f"{path}: {n:,} events ({int(kinds.get('fault', 0)):,} faults, "
          f"{n - int(kinds.get('fault', 0)):,} others), {len(t.vmas):,} versions, "
          f"{len(pids)} processes; best of {repeat}")
    print(f"  {'step':<10} {'wall s':>8} {'events/s':>12} {'cpu s':>8} {'events/s':>12}")
    for k in ("load", "frames", "timelines", "total", "model"):
        w, c = clock.best[k]
        print(f"  {k:<10} {w:8.3f} {n / w:12,.0f} {c:8.3f} {n / c:12,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=2_000_000)
    ap.add_argument("--syscalls", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--trace", action="append", default=[],
                    help="a trace file to time (repeatable) instead of the synthetic one")
    a = ap.parse_args()
    if a.trace:
        for path in a.trace:
            bench_trace(path, a.repeat)
        return
    df = synthetic(a.faults, a.syscalls)
    print(f"{len(df):,} events: {int((df['kind'] == 'fault').sum()):,} faults, "
          f"{int(df['kind'].isin(['mmap', 'munmap']).sum()):,} mmap/munmap")
    best = None
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        m = address_space.build(df)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        print(f"  build: {dt:.3f} s, {len(df) / dt:,.0f} events/s")
    print(f"best: {best:.3f} s = {len(df) / best:,.0f} events/s; {len(m.vmas):,} versions; "
          f"{m.coverage!r}")


if __name__ == "__main__":
    main()
