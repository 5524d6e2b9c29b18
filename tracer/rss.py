"""Resident memory over time, from the kernel's own counters (kmem:rss_stat).

    >>> t.rss                 # every change of every process's resident bytes
    >>> t.timeline(pid)       # the virtual columns with resident bytes beside
    >>> rss.check(t.events)   # does every change add up? (acceptance: nothing unexplained)

Where the values come from (docs/format.md):
- an `rss` row with a null `rss_delta` is an absolute value: cause
  `new_mm` when the process starts running on an address space whose
  counters the BPF side knows from their start (a forked child: the values
  the fork copied; an exec's new image: its argument pages and the loader's
  faults; rows at or before the `exec` row), else `baseline` (the first
  value of a counter seen, e.g. of a process attached with -p), or
  `sampled` (read from /proc/PID/status at an interval, `--rss sampled`:
  tracer.rss_sample; no change between two reads is recorded);
- a `fault` row's `rss_anon`, `rss_file`, `rss_shmem`, `rss_swap` are the
  pages the kernel added (or removed) inside that fault;
- any other `rss` row is a change outside a fault, `rss_delta` bytes,
  during the memory syscall `cause`, made by another task (`other_task`:
  reclaim, a write into the process from outside) or, if null, the
  kernel's own.

A running value is its last absolute value plus every change after it;
before the first one it is unknown (<NA>). One fact of the kernel is taken
as known: when the last thread has gone (`exit` row, flags 1) the mm is
torn down: every counter is 0 (the teardown's own kmem:rss_stat events are
the process's own task changing an mm it no longer runs on: dropped). Such
rows have cause `exit`; `exec` rows (cause `exec`) change nothing.

One attribution is made here rather than by the BPF side: a fault that began
on one CPU and ended on another (it slept, e.g. reading a file, and moved)
is sent without its entry (error_code null) and its changes as `rss` rows
with no cause just before it; those rows get cause `fault` (nothing else
happens on a thread between a change inside its fault and the fault's end).
A summary fault row (`--faults=summary`) stands for `count` faults: its
`rss_*` are their sums, so summing rows stays exact. Its faults are counted
at their entry, so none lacks its entry and the join above never applies to
it.

Known gaps of the capture (bpf/memtrace.bpf.c), which `check` shows where a
later counter value disagrees: see tests/integration/test_rss_live.py (xfail).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MEMBERS = {0: "file", 1: "anon", 2: "swap", 3: "shmem"}   # kmem:rss_stat member
KINDS = ("anon", "file", "shmem", "swap")                   # t.rss's columns, in order
RESIDENT = ("anon", "file", "shmem")                        # VmRSS = their sum
_FAULT_COL = {k: "rss_" + k for k in KINDS}
COLUMNS = ["ts", "pid", *KINDS, "cause"]
INFERRED = ("exec", "exit")                                 # causes not from a counter
BASELINES = ("baseline", "new_mm", "sampled")               # causes of absolute values


def _empty() -> pd.DataFrame:
    out = pd.DataFrame({"ts": pd.Series([], dtype="uint64"),
                        "pid": pd.Series([], dtype="int32"),
                        **{k: pd.Series([], dtype="Int64") for k in KINDS},
                        "cause": pd.Series([], dtype="category")})
    out.index.name = "event"
    return out


def _changes(events: pd.DataFrame, page_size: int) -> pd.DataFrame:
    """The rows that set or change a counter, one per event, in time order:
    per kind a change `d_<kind>` (bytes, 0 if none) and a reset `r_<kind>`
    (absolute bytes; NaN: unknown from here; absent: no reset), and cause."""
    kind = events["kind"]
    is_fault = (kind == "fault").to_numpy(bool)
    is_rss = (kind == "rss").to_numpy(bool)
    is_exec = (kind == "exec").to_numpy(bool)
    flags = events["flags"].to_numpy(dtype=np.float64, na_value=0) if "flags" in events \
        else np.zeros(len(events))
    is_exit = (kind == "exit").to_numpy(bool) & (flags == 1)

    fault_d = {}
    any_fault_change = np.zeros(len(events), bool)
    for k in KINDS:
        col = _FAULT_COL[k]
        v = events[col].to_numpy(dtype=np.float64, na_value=0) if col in events \
            else np.zeros(len(events))
        v = np.where(is_fault, v, 0.0) * page_size
        fault_d[k] = v
        any_fault_change |= v != 0
    sel = (is_fault & any_fault_change) | is_rss | is_exec | is_exit
    idx = np.flatnonzero(sel)
    ev = events.iloc[idx]
    n = len(idx)
    out = pd.DataFrame({"pos": idx, "ts": ev["ts"].to_numpy(np.uint64),
                        "pid": ev["pid"].to_numpy(np.int32)}, index=events.index[idx])

    member = ev["member"].to_numpy(dtype=np.float64, na_value=-1) if "member" in ev \
        else np.full(n, -1.0)
    size = ev["rss_size"].to_numpy(dtype=np.float64, na_value=np.nan) if "rss_size" in ev \
        else np.full(n, np.nan)
    delta = ev["rss_delta"].to_numpy(dtype=np.float64, na_value=np.nan) if "rss_delta" in ev \
        else np.full(n, np.nan)
    rss, fault = is_rss[idx], is_fault[idx]
    ex, ext = is_exec[idx], is_exit[idx]
    base = rss & np.isnan(delta)
    for k in KINDS:
        m = member == {v: key for key, v in MEMBERS.items()}[k]
        out["d_" + k] = np.where(fault, fault_d[k][idx],
                                 np.where(rss & m & ~base, np.nan_to_num(delta), 0.0))
        reset = np.full(n, np.inf)                       # inf: no reset here
        reset = np.where(rss & m & base, size, reset)
        reset = np.where(ext, 0.0, reset)
        out["r_" + k] = reset
    cause = ev["cause"].astype(object).to_numpy() if "cause" in ev else np.full(n, None, object)
    null = pd.isna(cause)
    cause = np.where(null, "kernel", cause.astype(str))
    if (rss & null & ~base).any():
        cause = np.where(_inside_unjoined_fault(events, idx[rss & null & ~base])[idx],
                         "fault", cause)
    cause = np.where(base & ~np.isin(cause, BASELINES), "baseline", cause)
    cause = np.where(fault, "fault", cause)
    cause = np.where(ex, "exec", np.where(ext, "exit", cause))
    out["cause"] = cause
    out["member"] = member
    out["size"] = size
    out["is_rss"] = rss
    # time order; events of one ts keep their table order
    return out.sort_values(["ts", "pos"], kind="stable")


def _inside_unjoined_fault(events: pd.DataFrame, cand: np.ndarray) -> np.ndarray:
    """For the candidate rss rows (positions in events; changes with no
    syscall in progress): True where the thread's next event is a fault sent
    without its entry (error_code null: it began on another CPU, so the BPF
    side could not add the change to it and sent it alone). Nothing else
    happens on a thread between a change inside its fault and that fault's
    end, so the change is the fault's. Returns a mask over the rows of
    `events`, True only at candidates."""
    n = len(events)
    hit = np.zeros(n, bool)
    tid = events["tid"].to_numpy()
    tids = np.unique(tid[cand])
    rows = np.flatnonzero(np.isin(tid, tids))
    order = rows[np.lexsort((rows, events["ts"].to_numpy(np.uint64)[rows], tid[rows]))]
    nxt = np.full(n, -1)
    same = tid[order[1:]] == tid[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    unjoined = (events["kind"] == "fault").to_numpy(bool) & events["error_code"].isna().to_numpy() \
        if "error_code" in events else np.zeros(n, bool)
    ok = nxt[cand] >= 0
    hit[cand[ok]] = unjoined[nxt[cand[ok]]]
    return hit


def _running(ch: pd.DataFrame, k: str) -> np.ndarray:
    """Running value of kind k per process (float, NaN unknown): the last
    reset plus the changes after it."""
    reset = ch["r_" + k].to_numpy()
    is_reset = reset != np.inf
    pid = ch["pid"].to_numpy()
    n = len(ch)
    start = pd.Series(np.where(is_reset, np.arange(n), np.nan)).groupby(pid).ffill().to_numpy()
    known = ~np.isnan(start)
    si = np.where(known, start, 0).astype(np.int64)
    base = np.where(known, reset[si], np.nan)      # NaN: before any reset, or reset to unknown
    cs = pd.Series(np.where(is_reset, 0.0, ch["d_" + k].to_numpy())).groupby(pid).cumsum()
    cs = cs.to_numpy()
    return base + cs - cs[si]


def _int64(v: np.ndarray) -> pd.arrays.IntegerArray:
    nan = np.isnan(v)
    return pd.arrays.IntegerArray(np.where(nan, 0, v).astype(np.int64), nan)


def frame(events: pd.DataFrame, page_size: int = 4096) -> pd.DataFrame:
    """t.rss: one row per event that set or changed a process's resident
    counters, indexed by the event's index in `events` (name `event`), in
    time order: ts, pid, anon, file, shmem, swap (bytes after the event,
    Int64, <NA> where unknown), cause (`fault`, the syscall's name,
    `kernel`, `baseline`, or the inferred `exec` / `exit`)."""
    if len(events) == 0:
        return _empty()
    ch = _changes(events, page_size)
    if len(ch) == 0:
        return _empty()
    out = pd.DataFrame({"ts": ch["ts"].to_numpy(np.uint64), "pid": ch["pid"].to_numpy(np.int32)},
                       index=ch.index)
    for k in KINDS:
        out[k] = _int64(_running(ch, k))
    out["cause"] = pd.Categorical(ch["cause"].to_numpy())
    out.index.name = "event"
    return out


def at(rss: pd.DataFrame, pid: int, ts: int) -> pd.Series:
    """pid's resident bytes (anon, file, shmem, swap) after every event up
    to and including ts; all <NA> if nothing is known by then."""
    r = rss[(rss["pid"] == pid) & (rss["ts"] <= np.uint64(ts))]
    if len(r) == 0:
        return pd.Series({k: pd.NA for k in KINDS}, dtype="Int64")
    return r[list(KINDS)].iloc[-1]


def peak(rss: pd.DataFrame, pid: int | None = None) -> pd.DataFrame:
    """Peak resident bytes per process (pid given: that process only),
    indexed by pid: `peak` (the largest anon + file + shmem over its rows,
    summing the parts known there), its `ts`, and `exact` (all three parts
    were known at that row; False: a lower bound, e.g. a forked child's
    shmem is unknown until it changes)."""
    r = rss if pid is None else rss[rss["pid"] == pid]
    cols = ["peak", "ts", "exact"]
    if len(r) == 0:
        return pd.DataFrame(columns=cols).rename_axis("pid")
    parts = r[list(RESIDENT)]
    total = parts.sum(axis=1, skipna=True, min_count=1)
    df = pd.DataFrame({"pid": r["pid"].to_numpy(), "ts": r["ts"].to_numpy(np.uint64),
                       "total": total.to_numpy(dtype=np.float64, na_value=np.nan),
                       "exact": parts.notna().all(axis=1).to_numpy(bool)})
    df = df[~np.isnan(df["total"].to_numpy())]
    # the largest total; among equal ones the first, preferring an exact one
    df = df.sort_values(["pid", "total", "exact", "ts"], ascending=[True, False, False, True],
                        kind="stable").drop_duplicates("pid")
    out = pd.DataFrame({"peak": pd.array(df["total"].to_numpy(np.int64), dtype="Int64"),
                        "ts": df["ts"].to_numpy(np.uint64), "exact": df["exact"].to_numpy(bool)},
                       index=pd.Index(df["pid"].to_numpy(), name="pid"))
    return out


def join_timeline(tl: pd.DataFrame, rss: pd.DataFrame, pid: int) -> pd.DataFrame:
    """The timeline `tl` (indexed by ts) with resident bytes beside its
    virtual columns: rss_anon, rss_file, rss_shmem, rss_total (anon + file +
    shmem, the kernel's VmRSS), Int64, <NA> where unknown.

    A resident change at a ts the timeline has no row for (a MADV_DONTNEED,
    a change of the kernel's) gets a row of its own, the virtual columns
    carried forward from the row before it; on rows of one ts the resident
    value is the one after all of that ts's events."""
    r = rss[rss["pid"] == pid]
    res_cols = ["rss_anon", "rss_file", "rss_shmem", "rss_total"]
    if len(r) == 0:
        out = tl.copy()
        for c in res_cols:
            out[c] = pd.array([pd.NA] * len(out), dtype="Int64")
        return out
    rr = pd.DataFrame({"ts": r["ts"].to_numpy(np.uint64)})
    for k in RESIDENT:
        rr["rss_" + k] = r[k].to_numpy(dtype=np.float64, na_value=np.nan)
    rr = rr.groupby("ts", sort=True).last().reset_index()    # last value of each ts
    name = tl.index.name or "ts"
    tl_ts = tl.index.to_numpy(np.uint64)
    extra_ts = rr["ts"].to_numpy(np.uint64)
    extra_ts = extra_ts[~_member(extra_ts, tl_ts)]
    if len(tl_ts):                       # the model knows nothing before its first row
        extra_ts = extra_ts[extra_ts > tl_ts.min()]
    else:
        extra_ts = extra_ts[:0]
    # an extra row takes the virtual columns of the timeline row before it
    keys = np.concatenate([tl_ts, extra_ts])
    order = np.argsort(keys, kind="stable")           # a timeline row first on a tie
    src = np.concatenate([np.arange(len(tl_ts)), _last_before(tl_ts, extra_ts)])
    both = tl.iloc[src[order]].copy()
    both.index = pd.Index(keys[order], dtype=np.uint64, name=name)
    ts_col = name
    both = both.reset_index()
    # resident values as of each row (after every event of its ts)
    merged = pd.merge_asof(both[[ts_col]].reset_index(), rr.rename(columns={"ts": ts_col}),
                           on=ts_col, direction="backward").set_index("index")
    for k in RESIDENT:
        both["rss_" + k] = merged.loc[both.index, "rss_" + k].to_numpy()
    total = both["rss_anon"] + both["rss_file"] + both["rss_shmem"]   # NaN if any unknown
    both["rss_total"] = total
    for c in res_cols:
        both[c] = _int64(both[c].to_numpy(dtype=np.float64))
    both = both.set_index(ts_col)
    both.index = both.index.astype(np.uint64)
    both.index.name = name
    return both


def _member(x: np.ndarray, of: np.ndarray) -> np.ndarray:
    """np.isin(x, of) by a binary search in sorted `of` (numpy's isin hashes
    every value: 0.3 s for a 525k-fault timeline, this 0.02 s)."""
    s = np.sort(of)
    if len(s) == 0:
        return np.zeros(len(x), bool)
    pos = np.minimum(np.searchsorted(s, x), len(s) - 1)
    return s[pos] == x


def _last_before(ts: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Positions in `ts` (not sorted) of the last row with ts <= each of `at`."""
    order = np.argsort(ts, kind="stable")
    k = np.searchsorted(ts[order], at, side="right") - 1
    return order[np.maximum(k, 0)]


def check(events: pd.DataFrame, page_size: int = 4096) -> pd.DataFrame:
    """Does every resident change add up? One row per process, counter and
    counter lifetime (from a baseline to the next baseline, exec or exit):
    pid, kind, baseline (bytes) and its ts, final (the last value the kernel
    reported in it: an `rss` row's rss_size) and its ts, fault_deltas and
    rss_deltas (the sums of the changes between them), gap = final -
    baseline - fault_deltas - rss_deltas (0: nothing unexplained),
    mismatches (rss rows whose size is not the running value: where a gap
    appeared), and after_final (changes after the last reported value,
    which no counter value checks)."""
    cols = ["pid", "kind", "baseline", "baseline_ts", "final", "final_ts", "fault_deltas",
            "rss_deltas", "gap", "mismatches", "after_final"]
    if len(events) == 0:
        return pd.DataFrame(columns=cols)
    ch = _changes(events, page_size)
    rows = []
    for k in KINDS:
        key = {v: m for m, v in MEMBERS.items()}[k]
        reset = ch["r_" + k].to_numpy()
        is_reset = reset != np.inf
        pid = ch["pid"].to_numpy()
        seg = pd.Series(is_reset.astype(np.int64)).groupby(pid).cumsum().to_numpy()
        val = _running(ch, k)
        known = (ch["is_rss"].to_numpy() & (ch["member"].to_numpy() == key))
        size = ch["size"].to_numpy()
        d = ch["d_" + k].to_numpy()
        fault = (ch["cause"].to_numpy() == "fault")
        df = pd.DataFrame({"pid": pid, "seg": seg, "reset": is_reset, "known": known,
                           "size": size, "val": val, "d": d, "fault": fault,
                           "ts": ch["ts"].to_numpy(np.uint64),
                           "base": np.isin(ch["cause"].to_numpy(), BASELINES)})
        for (p, s), g in df.groupby(["pid", "seg"], sort=True):
            if s == 0 or not g["base"].iloc[0]:
                continue                  # no baseline: nothing the kernel stated
            kn = g[g["known"]]
            last = kn.index[-1]
            upto = g.loc[:last].iloc[1:]            # after the baseline, to the last value
            after = g.loc[last:].iloc[1:]
            fd = float(upto.loc[upto["fault"], "d"].sum())
            rd = float(upto.loc[~upto["fault"], "d"].sum())
            b, f = float(g["size"].iloc[0]), float(kn["size"].iloc[-1])
            mism = int((kn["size"] != kn["val"]).sum())
            rows.append({"pid": int(p), "kind": k, "baseline": int(b),
                         "baseline_ts": int(g["ts"].iloc[0]), "final": int(f),
                         "final_ts": int(kn["ts"].iloc[-1]), "fault_deltas": int(fd),
                         "rss_deltas": int(rd), "gap": int(f - b - fd - rd),
                         "mismatches": mism, "after_final": int(after["d"].sum())})
    return pd.DataFrame(rows, columns=cols)
