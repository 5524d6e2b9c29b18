"""Hand-built event tables with the columns and dtypes of docs/format.md (as
tracer.trace.Trace.events gives them), for the address-space model's tests."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tracer.trace_schema import KINDS  # the trace's own kinds, one list
DTYPES = {
    "ts": "uint64", "pid": "int32", "tid": "int32", "comm": "category", "kind": None,
    "addr": "UInt64", "len": "UInt64", "prot": "Int32", "flags": "UInt64", "fd": "Int32",
    "off": "UInt64", "new_len": "UInt64", "new_addr": "UInt64", "ret": "Int64",
    "duration": "UInt64", "ip": "UInt64", "major": "boolean", "error_code": "UInt16",
    "latency": "UInt32", "rss_anon": "Int32", "rss_file": "Int32", "rss_shmem": "Int32",
    "rss_swap": "Int32", "child": "Int32", "path": "category", "member": "Int8",
    "rss_size": "Int64", "rss_delta": "Int64", "cause": "category", "inode": "UInt64",
    "alloc": "UInt32", "stack_id": "Int32", "count": "UInt32", "last_ts": "UInt64",
    "pages": "UInt16",
}
PAGE = 4096
R, W, X = 1, 2, 4
RW = R | W
PRIVATE, SHARED, FIXED, ANON = 0x02, 0x01, 0x10, 0x20
FIXED_NOREPLACE = 0x100000
MAP_STACK = 0x20000
MAYMOVE, MREMAP_FIXED, DONTUNMAP = 1, 2, 4


class Events:
    """Appends rows; `frame()` gives the DataFrame. Every row gets the next ts
    (step 1000 ns) unless given one; pid/tid default to the builder's."""

    def __init__(self, pid: int = 100, t0: int = 1000, step: int = 1000) -> None:
        self.rows: list[dict] = []
        self.pid = pid
        self.t = t0
        self.step = step

    def add(self, kind: str, ts: int | None = None, pid: int | None = None,
            tid: int | None = None, comm: str = "prog", **cols) -> int:
        if ts is None:
            self.t += self.step
            ts = self.t
        else:
            self.t = max(self.t, ts)
        pid = self.pid if pid is None else pid
        row = {"ts": ts, "pid": pid, "tid": pid if tid is None else tid, "comm": comm,
               "kind": kind}
        row.update(cols)
        self.rows.append(row)
        return len(self.rows) - 1

    # syscalls: ret decides what happened, as in the trace
    def mmap(self, ret: int, length: int, prot: int = RW, flags: int = PRIVATE | ANON,
             addr: int = 0, fd: int = -1, off: int = 0, **kw) -> int:
        return self.add("mmap", addr=addr, len=length, prot=prot, flags=flags, fd=fd, off=off,
                        ret=ret, duration=100, **kw)

    def munmap(self, addr: int, length: int, ret: int = 0, **kw) -> int:
        return self.add("munmap", addr=addr, len=length, ret=ret, duration=100, **kw)

    def mprotect(self, addr: int, length: int, prot: int, ret: int = 0, **kw) -> int:
        return self.add("mprotect", addr=addr, len=length, prot=prot, ret=ret, duration=100, **kw)

    def mremap(self, addr: int, old_len: int, new_len: int, ret: int, flags: int = MAYMOVE,
               new_addr: int = 0, **kw) -> int:
        return self.add("mremap", addr=addr, len=old_len, new_len=new_len, flags=flags,
                        new_addr=new_addr, ret=ret, duration=100, **kw)

    def brk(self, addr: int, ret: int, **kw) -> int:
        return self.add("brk", addr=addr, ret=ret, duration=100, **kw)

    def madvise(self, addr: int, length: int, advice: int, ret: int = 0, **kw) -> int:
        return self.add("madvise", addr=addr, len=length, flags=advice, ret=ret, **kw)

    def fault(self, addr: int, write: bool = False, exec_: bool = False, major: bool = False,
              rss_anon: int = 0, rss_file: int = 0, ip: int = 0x401000, **kw) -> int:
        ec = 4 | (2 if write else 0) | (16 if exec_ else 0)
        kw.setdefault("count", 1)                 # a full trace: each fault a row
        return self.add("fault", addr=addr, ip=ip, major=major, error_code=ec,
                        latency=500, rss_anon=rss_anon, rss_file=rss_file, rss_shmem=0,
                        rss_swap=0, **kw)

    def fork(self, child: int, **kw) -> int:
        return self.add("fork", child=child, flags=0x11, **kw)

    def thread(self, child: int, **kw) -> int:
        return self.add("thread", child=child, flags=0x3d0f00, **kw)

    def exec(self, path: str = "/usr/bin/prog", **kw) -> int:
        return self.add("exec", path=path, **kw)

    def exit(self, group: bool = True, **kw) -> int:
        return self.add("exit", flags=1 if group else 0, **kw)

    def snapshot(self, lines: list[tuple], cause: str = "exec", ts: int | None = None,
                 pid: int | None = None) -> list[int]:
        """lines: (start, end, perms, offset, path[, inode]); one shared ts."""
        if ts is None:
            self.t += self.step
            ts = self.t
        out = []
        for ln in lines:
            start, end, perms, off, path = ln[:5]
            inode = ln[5] if len(ln) > 5 else (123 if path.startswith("/") else 0)
            prot = (R if perms[0] == "r" else 0) | (W if perms[1] == "w" else 0) \
                | (X if perms[2] == "x" else 0)
            out.append(self.add("map", ts=ts, pid=pid, addr=start, len=end - start, prot=prot,
                                flags=SHARED if perms[3] == "s" else PRIVATE, off=off,
                                path=path, inode=inode, cause=cause))
        return out

    def frame(self) -> pd.DataFrame:
        return frame(self.rows)


def frame(rows: list[dict]) -> pd.DataFrame:
    data = {c: [r.get(c) for r in rows] for c in DTYPES}
    df = pd.DataFrame({c: pd.Series(v, dtype=dt if dt else pd.CategoricalDtype(KINDS))
                       for (c, dt), v in zip(DTYPES.items(), data.values())})
    return df


LAYOUT_CHANGES = ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "exec")
SLOT_SHIFT = 26                       # summary time slots of 2**26 ns (bpf/memtrace.h)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """The `--faults=summary` form of a full trace frame (docs/format.md,
    written here apart from tracer/): its fault rows aggregated per (pid,
    major, error_code, 64 KiB block, time slot) between two layout changes
    (memory syscalls, execs) of their process, one row each at its first
    fault's place and index label: the first fault's ts, tid, comm, addr
    and ip (null on major rows, as the capture leaves it); count; last_ts;
    the pages bitmap; latency the mean (floor) on major rows, null on minor
    ones; summed rss_*; no alloc, no stack."""
    kind = df["kind"].astype(str).to_numpy()
    change = pd.Series(np.isin(kind, LAYOUT_CHANGES).astype(np.int64), index=df.index)
    gen = change.groupby(df["pid"].to_numpy()).cumsum()
    f = df[kind == "fault"]
    addr = f["addr"].to_numpy(np.int64)
    major = f["major"].fillna(False).to_numpy(bool)
    keys = pd.DataFrame({"pid": f["pid"], "major": major,
                         "ec": f["error_code"].astype("Int64").fillna(-1),
                         "block": addr >> 16, "slot": f["ts"].to_numpy(np.int64) >> SLOT_SHIFT,
                         "gen": gen[f.index]}, index=f.index)
    group = keys.groupby(list(keys.columns), sort=False).ngroup().to_numpy()
    g = f.groupby(group, sort=False)
    out = g.head(1).copy()
    n = g.size().to_numpy()
    out["count"] = pd.array(n, dtype="UInt32")
    out["last_ts"] = pd.array(g["ts"].max().to_numpy(), dtype="UInt64")
    bits = np.zeros(len(out), np.int64)
    np.bitwise_or.at(bits, group, 1 << ((addr >> 12) & 15))
    out["pages"] = pd.array(bits, dtype="UInt16")
    row_major = out["major"].fillna(False).to_numpy(bool)
    lat = g["latency"].sum().to_numpy() // n
    out["latency"] = pd.array(np.where(row_major, lat, 0), dtype="UInt32")
    out.loc[~row_major, "latency"] = pd.NA
    out.loc[row_major, "ip"] = pd.NA
    for c in ("rss_anon", "rss_file", "rss_shmem", "rss_swap"):
        out[c] = pd.array(g[c].sum(min_count=1).to_numpy(), dtype="Int32")
    out["alloc"] = pd.array([None] * len(out), dtype="UInt32")
    out["stack_id"] = pd.array([None] * len(out), dtype="Int32")
    both = pd.concat([df[kind != "fault"], out])
    pos = pd.Series(np.arange(len(df)), index=df.index)
    both = both.iloc[np.argsort(pos[both.index].to_numpy(), kind="stable")]
    for c, dt in DTYPES.items():
        if dt is not None and c in both:
            both[c] = both[c].astype(dt)
    return both


def without_new_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A frame as a trace written before `count`, `last_ts` and `pages` loads
    (tracer.trace adds them as nulls)."""
    out = df.copy()
    for c in ("count", "last_ts", "pages"):
        out[c] = pd.array([None] * len(out), dtype=DTYPES[c])
    return out
