"""The address-space model: from the event table (docs/format.md) to the
mappings of every traced process over time, and each fault's mapping.

    >>> from tracer import address_space
    >>> m = address_space.build(events)
    >>> m.vmas            # one row per mapping version
    >>> m.faults          # the faults with their mapping
    >>> m.maps_at(pid, ts, merge=True)

tracer.as_model replays the mapping-changing events (the kernel's rule is
cited in each function), tracer.as_faults attributes the faults in bulk,
tracer.vma_kinds classifies, tracer.maps_text renders and compares maps.

Where the events leave a choice:
- exec: the address space is the snapshot (`map` rows, cause `exec`) that
  follows the exec, applied at the exec's ts, less the ranges the mmap,
  mremap and brk calls between the exec and the snapshot made: those are
  replayed (created_by mmap/brk/...) and then the snapshot is reconciled
  (names filled in; any disagreement settled in the snapshot's favour,
  created_by exec at the snapshot's ts). A file mapped by mmap has no name
  in the events (only its fd) until a snapshot shows it.
- thread stacks: an anonymous private mmap with MAP_STACK, or the last
  anonymous private mmap of a thread that then creates a thread (`thread`
  row) without another mmap/munmap/mremap/brk in between (glibc's
  allocate_stack: mmap, mprotect of the guard, clone). Its PROT_NONE part is
  a guard.
- stack growth: a fault below a [stack] (VM_GROWSDOWN) mapping grows it to
  the faulting page (a summary row: its lowest page) when the stack stays
  within stack_limit (RLIMIT_STACK, 8 MiB) and 256 pages clear of an
  accessible mapping below: the kernel's own rule since Linux 4.20 (no
  distance-from-sp check any more).
- faults inside execve: the kernel-mode faults of the exec'ing thread after
  its last user-mode fault and last syscall, before the exec row (which is
  sent at the end of execve), are the ELF loader's writes into the new
  image: if the old image has nothing there, they are attributed to the new.
- fork copies the parent's mappings even with CLONE_VM (vfork,
  posix_spawn): the child's own syscalls before its exec change the copy,
  not the parent.
- a mapping the model lacks (mremap of an unknown range) is taken as
  anonymous read-write.
- a summary fault row (`count` faults, `--faults=summary`) is attributed as
  one fault at its first fault's time and address: no layout change of its
  process came between its faults. Its pages in other mappings of its
  64 KiB block make parts of their own (tracer.as_summary.split).
- order: the rows in table order (sorted by ts); a change at row p is seen
  by the faults after it; a stack growth by its own fault.
"""
from __future__ import annotations

import gc

import numpy as np
import pandas as pd

from tracer import as_replay, as_summary, as_touch, as_versions
from tracer import as_model as am
from tracer import as_process as ap
from tracer import vma_kinds as vk
from tracer.as_frames import AddressSpaces, Coverage, assemble
from tracer.maps_text import compare_maps, render

__all__ = ["build", "AddressSpaces", "Coverage", "compare_maps", "render"]

_KIND_CODES = {"mmap": am.MMAP, "munmap": am.MUNMAP, "mremap": am.MREMAP,
               "mprotect": am.MPROTECT, "brk": am.BRK, "fork": am.FORK,
               "thread": am.THREAD, "exec": am.EXEC, "exit": am.EXIT, "map": am.SNAP}
_FAULT = 99


def _kind_codes(events: pd.DataFrame) -> np.ndarray:
    kind = events["kind"]
    if isinstance(kind.dtype, pd.CategoricalDtype):
        table = np.array([_KIND_CODES.get(c, _FAULT if c == "fault" else -1)
                          for c in kind.cat.categories] + [-1], np.int16)
        return table[kind.cat.codes.to_numpy()]
    arr = kind.to_numpy(dtype=object)
    out = np.full(len(arr), -1, np.int16)
    for name, code in list(_KIND_CODES.items()) + [("fault", _FAULT)]:
        out[arr == name] = code
    return out


def _num(s: pd.Series, dtype: str, na, pos: np.ndarray | None = None) -> np.ndarray:
    """s (its rows at positions pos) as numpy, missing values as na."""
    a = s.array if pos is None else s.array.take(pos)
    return a.to_numpy(dtype=dtype, na_value=na)


def _strs(s: pd.Series) -> list:
    return [None if (x is None or x is pd.NA or (isinstance(x, float) and np.isnan(x))) else x
            for x in s.to_numpy(dtype=object).tolist()]


def _rows(at: np.ndarray | None, pos: np.ndarray) -> np.ndarray:
    """The events' rows at positions pos of the ts order (at: that order,
    None if the events are in it)."""
    return pos if at is None else at[pos]


def _mmap_paths(events: pd.DataFrame, cpos: np.ndarray, codes: np.ndarray) -> list:
    """The file behind each mmap(fd): the path of the latest successful
    open/openat of that fd in that process before the mmap (an as-of join;
    a descriptor inherited across fork or made by dup is not followed).
    cpos: the change rows' positions in events."""
    out: list = [None] * len(cpos)
    is_open = np.flatnonzero((events["kind"] == "open").to_numpy(bool))
    if not len(is_open):
        return out
    opens = events[["ts", "pid", "ret", "path"]].iloc[is_open]
    opens = pd.DataFrame({"ts": opens["ts"].to_numpy(np.uint64).astype(np.int64),
                          "pid": opens["pid"].to_numpy(np.int64),
                          "fd": opens["ret"].to_numpy(np.int64, na_value=-1),
                          "path": opens["path"].astype(object).to_numpy()})
    is_mmap = np.flatnonzero(codes == am.MMAP)
    if not len(is_mmap) or not len(opens):
        return out
    m = events[["ts", "pid", "fd"]].iloc[cpos[is_mmap]]
    maps = pd.DataFrame({"ts": m["ts"].to_numpy(np.uint64).astype(np.int64),
                         "pid": m["pid"].to_numpy(np.int64),
                         "fd": m["fd"].to_numpy(np.int64, na_value=-1),
                         "k": is_mmap})
    maps = maps[maps["fd"] >= 0].sort_values("ts", kind="stable")
    joined = pd.merge_asof(maps, opens.sort_values("ts", kind="stable"), on="ts",
                           by=["pid", "fd"], direction="backward", allow_exact_matches=False)
    for k, path in zip(joined["k"].tolist(), joined["path"].tolist()):
        out[k] = path if isinstance(path, str) else None
    return out


def _snapshots(sub: pd.DataFrame, idx: np.ndarray) -> dict[int, tuple]:
    """map rows (sub, at positions idx) -> {first row position: (pid, ts,
    cause, [Line])}."""
    pid, ts = sub["pid"].to_numpy(np.int64).tolist(), sub["ts"].to_numpy(np.uint64).tolist()
    start = _num(sub["addr"], "uint64", 0).tolist()
    size = _num(sub["len"], "uint64", 0).tolist()
    prot = _num(sub["prot"], "int64", 0).tolist()
    flags = _num(sub["flags"], "uint64", 2).tolist()
    off = _num(sub["off"], "uint64", 0).tolist()
    inode = _num(sub["inode"], "uint64", 0).tolist()
    path, cause = _strs(sub["path"]), _strs(sub["cause"])
    groups: dict[tuple, int] = {}
    out: dict[int, tuple] = {}
    for k, p in enumerate(idx.tolist()):
        key = (pid[k], ts[k], cause[k])
        first = groups.setdefault(key, p)
        if first == p:
            out[p] = (pid[k], ts[k], cause[k] or "attach", [])
        out[first][3].append(ap.Line(start[k], start[k] + size[k], prot[k] & vk.PROT_MASK,
                                     (flags[k] & vk.MAP_TYPE) == vk.MAP_SHARED,
                                     path[k] or None, off[k], inode[k] or None, p))
    for g in out.values():
        g[3].sort(key=lambda ln: ln.start)
    return out


def _stack_windows(snaps: dict, forks: list[tuple[int, int]], limit: int) -> dict[int, list]:
    """Per pid, the address ranges below its [stack] where a fault may grow it."""
    win: dict[int, list] = {}
    for pid, _ts, _c, lines in snaps.values():
        for ln in lines:
            if ln.path == vk.STACK:
                win.setdefault(pid, []).append((max(ln.end - limit, 0), ln.start))
    for parent, child in forks:
        if parent in win:
            win.setdefault(child, []).extend(win[parent])
    return win


def _subtract(lines: list, ranges: list[tuple[int, int]]) -> list:
    out = []
    for ln in lines:
        segs = [(ln.start, ln.end)]
        for a, b in ranges:
            nxt = []
            for s, e in segs:
                if b <= s or a >= e:
                    nxt.append((s, e))
                    continue
                if s < a:
                    nxt.append((s, a))
                if b < e:
                    nxt.append((b, e))
            segs = nxt
        for s, e in segs:
            off = ln.off + (s - ln.start) if vk.has_file(ln.path) else ln.off
            out.append(ap.Line(s, e, ln.prot, ln.shared, ln.path, off, ln.inode, ln.pos))
    return out


def _exec_bases(etype, eref, epid, c, snaps, page) -> dict[int, tuple]:
    """For each exec entry: (base lines, heap) from the snapshot that follows
    it, less the ranges the syscalls between them made (replayed later)."""
    bases: dict[int, tuple] = {}
    execs = np.flatnonzero(etype == am.EXEC)
    if not len(execs):
        return bases
    # where an exec's window ends: its snapshot, another exec, the last exit
    term = (etype == am.EXEC)
    ex = np.flatnonzero(etype == am.EXIT)
    term[ex[(c["flags"][eref[ex]] & np.uint64(vk.EXIT_GROUP_DEAD)) != 0]] = True
    sn = np.flatnonzero(etype == am.SNAP)
    term[sn[[snaps[r][2] == "exec" for r in eref[sn].tolist()]]] = True
    order = np.argsort(epid, kind="stable")
    spid = epid[order]
    for k in execs.tolist():
        pid = epid[k]
        mine = order[np.searchsorted(spid, pid):np.searchsorted(spid, pid, "right")]
        after = mine[np.searchsorted(mine, k) + 1:]
        stop = np.flatnonzero(term[after])
        if not len(stop) or etype[after[stop[0]]] != am.SNAP:
            continue
        snap = snaps[eref[after[stop[0]]]]
        window = after[:stop[0]]
        made, brk = [], False
        for k2 in window[etype[window] < am.SNAP].tolist():
            r, t = eref[k2], etype[k2]
            ret = int(c["ret"][r])
            if t == am.MMAP and ret >= 0:
                made.append((ret, ret + vk.page_align(int(c["len"][r]), page)))
            elif t == am.MREMAP and ret >= 0:
                made.append((ret, ret + vk.page_align(int(c["new_len"][r]), page)))
            elif t == am.BRK:
                brk = True
        lines = snap[3]
        heap_lines = [ln for ln in lines if ln.path == vk.HEAP]
        heap = None
        if heap_lines:
            h = heap_lines[0]
            if brk:   # the heap is the replayed brk calls' doing
                made.append((h.start, heap_lines[-1].end))
                heap = (h.start, h.start)
            else:
                heap = (h.start, heap_lines[-1].end)
        bases[k] = (_subtract(lines, sorted(made)), heap)
    return bases


_COLS = (("addr", "uint64", 0), ("len", "uint64", 0), ("prot", "int64", 0),
         ("flags", "uint64", 0), ("fd", "int64", -1), ("off", "uint64", 0),
         ("new_len", "uint64", 0), ("ret", "int64", -1), ("child", "int64", -1))
_MAX_TRIES = 3       # builds with fewer chains after a chain's range was found taken


def build(events: pd.DataFrame, page_size: int = 4096, stack_limit: int = vk.STACK_LIMIT,
          stack_guard_gap: int | None = None, fast: bool = True) -> "AddressSpaces":
    """Replays the events (sorted by ts; rows of equal ts in table order) into
    mapping versions and attributes every fault. stack_limit is RLIMIT_STACK
    and stack_guard_gap the kernel's gap (bytes, default 256 pages).
    fast=False replays every change in the loop (no mmap chains, no brk
    runs) and attributes faults one version at a time: the same result,
    slower; kept for the tests to compare."""
    # the cyclic garbage collector would walk the many objects made here
    # again and again; they hold no cycles
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(events, page_size, stack_limit, stack_guard_gap, fast)
    finally:
        if enabled:
            gc.enable()


def _build(events, page_size, stack_limit, stack_guard_gap, fast):
    # positions below are in ts order (rows of equal ts in table order);
    # `at` maps them to the table's rows: only the columns used are gathered
    ts = events["ts"].to_numpy()
    at = np.argsort(ts, kind="stable") if len(ts) and (ts[1:] < ts[:-1]).any() else None
    gap = vk.STACK_GUARD_GAP_PAGES * page_size if stack_guard_gap is None else stack_guard_gap
    kc = _kind_codes(events) if at is None else _kind_codes(events)[at]
    fidx = np.flatnonzero(kc == _FAULT)
    cidx = np.flatnonzero((kc >= 0) & (kc != _FAULT) & (kc != am.SNAP))
    mrows = np.flatnonzero(kc == am.SNAP)
    snaps = _snapshots(events.iloc[_rows(at, mrows)], mrows)

    cpos = _rows(at, cidx)
    c = {"pos": cidx.astype(np.int64), "type": kc[cidx].astype(np.int64),
         "ts": ts[cpos].astype(np.uint64),
         "pid": events["pid"].to_numpy()[cpos].astype(np.int64),
         "tid": events["tid"].to_numpy()[cpos].astype(np.int64)}
    for col, dt, na in _COLS:
        c[col] = _num(events[col], dt, na, cpos)
    c["path"] = _mmap_paths(events, cpos, kc[cidx])

    fpos = _rows(at, fidx)
    f_pid = events["pid"].to_numpy()[fpos].astype(np.int32)
    f_addr = _num(events["addr"], "uint64", 0, fpos)
    f_key = 2 * fidx.astype(np.int64) + 1
    f_ts = ts[fpos]
    # where a fault may grow a stack: a summary row's lowest page
    g_addr = f_addr if "pages" not in events else \
        as_summary.lowest_page(f_addr, _num(events["pages"], "int64", 0, fpos))

    fk = np.flatnonzero(c["type"] == am.FORK)
    forks = list(zip(c["pid"][fk].tolist(), c["child"][fk].tolist()))
    win = _stack_windows(snaps, forks, stack_limit)
    gidx = np.zeros(0, np.int64)
    if win and len(fidx):
        codes, uniq = pd.factorize(f_pid)
        lo = np.array([min((w[0] for w in win.get(int(p), [])), default=0) for p in uniq], np.uint64)
        hi = np.array([max((w[1] for w in win.get(int(p), [])), default=0) for p in uniq], np.uint64)
        gidx = np.flatnonzero((g_addr >= lo[codes]) & (g_addr < hi[codes]))

    # the loop's entries: changes, snapshots, stack-growth candidates, by boundary
    spos = np.array(sorted(snaps), np.int64)
    ebnd = np.concatenate([2 * cidx.astype(np.int64) + 1, 2 * spos + 1, 2 * fidx[gidx]])
    etype = np.concatenate([c["type"], np.full(len(spos), am.SNAP),
                            np.full(len(gidx), am.GROW)]).astype(np.int64)
    eref = np.concatenate([np.arange(len(cidx)), spos, gidx]).astype(np.int64)
    order = np.argsort(ebnd, kind="stable")
    ebnd, etype, eref = ebnd[order], etype[order], eref[order]
    epid = np.empty(len(etype), np.int64)
    ch = etype < am.SNAP
    epid[ch] = c["pid"][eref[ch]]
    sn = etype == am.SNAP
    epid[sn] = [snaps[r][0] for r in eref[sn].tolist()]
    epid[etype == am.GROW] = f_pid[eref[etype == am.GROW]]
    bases = _exec_bases(etype, eref, epid, c, snaps, page_size)

    R = as_replay.Replay(c, snaps, bases, ebnd, etype, eref, epid, fidx, f_pid, g_addr, f_key, f_ts,
                page_size, stack_limit, gap)
    if fast:
        R.prepare({p: max(w[1] for w in ws) for p, ws in win.items()})
    exclude: set = set()
    for attempt in range(_MAX_TRIES + 1):
        M, chains, failed = R.run(fast and attempt < _MAX_TRIES, exclude)
        if not failed:
            break
        exclude |= failed

    V = as_versions.merge(M, chains)
    mmap_lin = np.full(len(cidx), -1, np.int64)
    if M.mmap_lin:
        mmap_lin[np.searchsorted(c["pos"], np.fromiter(M.mmap_lin.keys(), np.int64))] = \
            V["lin_rank"][np.fromiter(M.mmap_lin.values(), np.int64)]
    if len(chains):
        mmap_lin[chains.mmap_rows] = V["lin_rank"][len(M.lin_bnd) + np.arange(len(chains))]
    tstack = as_touch.thread_stacks(etype, eref, epid, c, mmap_lin, page_size)
    retry = _exec_faults(events, fidx, fpos, f_pid, c)
    return assemble(events, at, V, tstack, as_versions.heap_log(M), M.state_log, fidx, f_pid,
                    f_addr, f_key, page_size, retry, join=fast)


def _exec_faults(events, fidx, fpos, f_pid, c) -> tuple[np.ndarray, np.ndarray]:
    """Faults taken inside execve after the new mm is in place (fs/exec.c:
    begin_new_exec -> exec_mmap, then the ELF loader's padzero and stack
    set-up): kernel-mode faults of the exec'ing thread after its last
    user-mode fault and its last syscall, before the exec row (sent at
    sched_process_exec, the end of execve). They belong to the new image:
    (fault indices, key of the exec) for a second attribution."""
    execs = np.flatnonzero(c["type"] == am.EXEC).tolist()
    if not execs or not len(fidx):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    f_tid = events["tid"].to_numpy()[fpos]
    user = as_summary.user_mode(events[["ip", "error_code"]].iloc[fpos])
    pid_of = c["pid"]
    idx, keys = [], []
    for k in execs:
        p, pid, tid = int(c["pos"][k]), int(c["pid"][k]), int(c["tid"][k])
        before = np.flatnonzero((pid_of[:k] == pid))
        lo = int(c["pos"][before[-1]]) if len(before) else -1
        a, b = np.searchsorted(fidx, lo, "right"), np.searchsorted(fidx, p)
        sel = a + np.flatnonzero((f_pid[a:b] == pid) & (f_tid[a:b] == tid))
        if len(sel) == 0:
            continue
        u = np.flatnonzero(user[sel])
        sel = sel[u[-1] + 1:] if len(u) else sel
        idx.append(sel)
        keys.append(np.full(len(sel), 2 * p + 1, np.int64))
    if not idx:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(idx), np.concatenate(keys)

