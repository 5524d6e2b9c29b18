"""Fault attribution in bulk: which mapping version each fault hit.

Versions of one process are disjoint rectangles in (address, time). The
address axis of each process is cut into elementary segments at every start
and end of its versions; an `owner` array gives, per segment, the version
born last that covers it. Walking the versions in birth order (the order the
model made them), the faults between two births read `owner` in one numpy
gather. The version found is the right one if it is still alive at the
fault: any version covering that segment at the fault's time must be the one
born last before it (two versions alive together never overlap). So the only
Python loop is one step per version, never one per fault.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

NO_VMA = -1
ALIVE = np.iinfo(np.int64).max
KERNEL_SPACE = 1 << 63        # x86-64 kernel addresses: the upper half

REASONS = [
    "no mapping at address",
    "process not known (no snapshot/exec seen)",
    "mappings unknown (exec without a maps snapshot)",
    "kernel address",
]


def _segment_keys(v_pid, v_start, v_end, f_pid, f_addr, shift):
    """Sortable keys (process, page) of version starts/ends and of faults,
    packed into int64 when they fit, else made of ranks."""
    nv = len(v_pid)
    codes, uniq = pd.factorize(np.concatenate([v_pid, f_pid]))
    codes = codes.astype(np.int64)
    vp, fp = codes[:nv], codes[nv:]
    vs, ve = (v_start >> shift).astype(np.int64), (v_end >> shift).astype(np.int64)
    fpg = (f_addr >> np.uint64(shift)).astype(np.int64)
    top = max(int(ve.max()) if nv else 0, int(fpg.max()) if len(fpg) else 0)
    pb, idb = top.bit_length() + 1, max(len(uniq), 1).bit_length()
    if pb + idb <= 62:
        return (vp << pb) | vs, (vp << pb) | ve, (fp << pb) | fpg
    # ranks of pages among all boundaries; a fault's rank is that of the
    # highest boundary at or below it (+1 so that "below all" is 0)
    u = np.unique(np.concatenate([vs, ve]))
    m = len(u) + 1
    rs, re = np.searchsorted(u, vs) + 1, np.searchsorted(u, ve) + 1
    rf = np.searchsorted(u, fpg, "right")
    return vp * m + rs, vp * m + re, fp * m + rf


def attribute(v_pid: np.ndarray, v_start: np.ndarray, v_end: np.ndarray, v_bnd: np.ndarray,
              v_dbnd: np.ndarray, f_pid: np.ndarray, f_addr: np.ndarray, f_key: np.ndarray,
              page_size: int) -> np.ndarray:
    """vma_id of each fault (NO_VMA if none). f_key (2 * row + 1) ascending;
    v_bnd nondecreasing with the version id; v_dbnd ALIVE if never ended."""
    nf = len(f_key)
    res = np.full(nf, NO_VMA, np.int64)
    if nf == 0 or len(v_pid) == 0:
        return res
    shift = page_size.bit_length() - 1
    live = np.flatnonzero(v_dbnd > v_bnd)      # versions that existed for a while
    skey, ekey, fkey = _segment_keys(v_pid[live], v_start[live], v_end[live],
                                     f_pid, f_addr, shift)
    bounds = np.unique(np.concatenate([skey, ekey]))
    # owner[k] is segment [bounds[k-1], bounds[k]); owner[0] is below all
    sa = np.searchsorted(bounds, skey) + 1
    sb = np.searchsorted(bounds, ekey) + 1
    fseg = np.searchsorted(bounds, fkey, "right")
    owner = np.full(len(bounds) + 1, NO_VMA, np.int64)
    split = np.searchsorted(f_key, v_bnd[live], "left")
    prev = 0
    for vid, i, a, b in zip(live.tolist(), split.tolist(), sa.tolist(), sb.tolist()):
        if i > prev:
            res[prev:i] = owner[fseg[prev:i]]
            prev = i
        owner[a:b] = vid
    if prev < nf:
        res[prev:] = owner[fseg[prev:]]
    hit = np.flatnonzero(res >= 0)
    dead = hit[v_dbnd[res[hit]] <= f_key[hit]]
    res[dead] = NO_VMA
    return res


def reasons(vid: np.ndarray, f_pid: np.ndarray, f_addr: np.ndarray, f_key: np.ndarray,
            state_log: list[tuple]) -> np.ndarray:
    """Codes into REASONS for the unattributed faults (-1 where attributed).
    state_log: (pid, bnd, state) with state 0 not known, 1 known without its
    mappings (exec without snapshot), 2 known."""
    out = np.full(len(vid), -1, np.int8)
    miss = np.flatnonzero(vid < 0)
    if len(miss) == 0:
        return out
    state = np.zeros(len(miss), np.int8)
    log = pd.DataFrame(state_log, columns=["pid", "bnd", "state"]) if state_log else None
    if log is not None:
        mp = f_pid[miss]
        for pid, grp in log.groupby("pid", sort=False):
            sel = np.flatnonzero(mp == pid)
            if len(sel) == 0:
                continue
            b = grp["bnd"].to_numpy(np.int64)
            s = grp["state"].to_numpy(np.int8)
            k = np.searchsorted(b, f_key[miss[sel]], "right") - 1
            state[sel] = np.where(k >= 0, s[np.maximum(k, 0)], 0)
    code = np.where(state == 2, 0, np.where(state == 1, 2, 1)).astype(np.int8)
    code[f_addr[miss] >= np.uint64(KERNEL_SPACE)] = 3
    out[miss] = code
    return out


def first_touch(keys: np.ndarray) -> np.ndarray:
    """True where a key appears for the first time (hash-based, keeps order)."""
    return ~pd.Series(keys, copy=False).duplicated().to_numpy()


def window_join(lo: np.ndarray, n: np.ndarray, fo: np.ndarray, f_addr: np.ndarray,
                v_start: np.ndarray, v_end: np.ndarray,
                v_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point indices, vma_ids) of the points inside versions known to have
    ended, each version given the points on its lifetime [bnd, dbnd) of its
    process: fo[lo:lo + n]; kept where the address is inside. Its size is
    n.sum(). Exact for any subset of the versions: alive versions of one
    process never overlap."""
    tot = int(n.sum())
    if not tot:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    v = np.repeat(np.arange(len(v_id)), n)
    fi = fo[np.arange(tot) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)]
    a = f_addr[fi]
    hit = (a >= v_start[v]) & (a < v_end[v])
    return fi[hit], v_id[v[hit]]


def key_order(code: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The order of (code, key): a stable sort on code alone when key is
    already ascending (the faults are)."""
    if len(key) and (key[1:] < key[:-1]).any():
        return np.lexsort((key, code))
    small = code.astype(np.int16) if len(code) == 0 or code.max() < (1 << 15) else code
    return np.argsort(small, kind="stable")
