"""Fault attribution in bulk: which mapping version each fault hit.

Versions of one process are disjoint rectangles in (address, time), so a
point (address, time) is in at most one of them, and any subset of the
versions can be searched on its own: a version found alive there is the
answer. Two searches, split by attributor():

- attribute(): the address axis of each process is cut into elementary
  segments at every start and end of its versions; an `owner` array gives,
  per segment, the version born last that covers it. Walking the versions
  in birth order (the order the model made them), the faults between two
  births read `owner` in one numpy gather. The version found is the right
  one if it is still alive at the fault: any version covering that segment
  at the fault's time must be the one born last before it. One Python step
  per version, never one per fault: for the long-lived versions.
- window_join(): each version that ended is paired with the points of its
  process during its life (a range of the points sorted by process and
  time), kept where the address is inside: for the many short-lived ones.
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


_JOIN_MAX = 256          # points on a version's lifetime for it to be joined
_STEP_ALL = 2048         # fewer versions: all stepped through (cheaper than the join's set-up)
_JOIN_SLACK = 1 << 16    # the join's budget: twice the points plus this


def attributor(V: dict, page_size: int, f_pid: np.ndarray, f_key: np.ndarray,
               join: bool = True):
    """The function (p_pid, p_addr, p_key[, main]) -> vma_id per point
    (NO_VMA if none) for the versions V (tracer.as_versions.merge).

    A version that ended and had few faults (f_pid, f_key: all of them) of
    its process during its life is joined to the points on its lifetime
    (window_join); the others -- long-lived ones: the program, libraries,
    stacks -- go through attribute(), one step per version, first: a point
    it finds a version for is done (that version is the one alive there),
    the others are joined. Few: at most _JOIN_MAX
    (beyond, a step of the loop costs less than joining them) and the
    join's size (points per version, summed) within a budget, versions with
    fewest first; the versions beyond the budget of a call's points are
    stepped through for those points. join=False: all are stepped through."""
    pid, start, end, bnd, dbnd = V["pid"], V["start"], V["end"], V["bnd"], V["d_bnd"]
    pids = np.sort(pd.unique(pid))
    ended = np.flatnonzero(V["dead"])
    vc = np.searchsorted(pids, pid[ended]).astype(np.int64) << np.int64(41)
    v_lo, v_hi = vc | bnd[ended], vc | dbnd[ended]

    def joinable(sel: np.ndarray, p_pid: np.ndarray, p_key: np.ndarray):
        """Of the versions ended[sel]: which fit for these points (a mask),
        with their points fo[first:first + n]."""
        fc = _codes(pids, p_pid)
        fo = key_order(fc, p_key)
        fk = ((fc << np.int64(41)) | p_key)[fo]
        first = np.searchsorted(fk, v_lo[sel])
        n = np.searchsorted(fk, v_hi[sel]) - first
        fits = n <= _JOIN_MAX
        budget = 2 * len(p_key) + _JOIN_SLACK
        if n[fits].sum() > budget:
            o = np.argsort(np.where(fits, n, _JOIN_MAX + 1), kind="stable")
            fits[o[np.cumsum(n[o]) > budget]] = False
        return fits, first, n, fo

    if join and len(pid) > _STEP_ALL:
        fits0, first0, n0, fo0 = joinable(np.arange(len(ended)), f_pid, f_key)
        sel0 = np.flatnonzero(fits0)
    else:
        sel0 = np.zeros(0, np.int64)
    paint0 = np.ones(len(pid), bool)
    paint0[ended[sel0]] = False
    loop0 = np.flatnonzero(paint0)

    def step(loop, p_pid, p_addr, p_key) -> np.ndarray:
        vid = attribute(pid[loop], start[loop], end[loop], bnd[loop], dbnd[loop],
                        p_pid, p_addr, p_key, page_size)
        hit = vid >= 0
        vid[hit] = loop[vid[hit]]
        return vid

    def attribute_points(p_pid: np.ndarray, p_addr: np.ndarray, p_key: np.ndarray,
                         main: bool = False) -> np.ndarray:
        """main: the points are the faults given to attributor (their join
        is known)."""
        vid = step(loop0, p_pid, p_addr, p_key)
        if not len(sel0):
            return vid
        if main:
            join = ended[sel0]
            fi, vv = window_join(first0[sel0], n0[sel0], fo0, p_addr, start[join], end[join],
                                 join)
            vid[fi] = vv
            return vid
        rest = np.flatnonzero(vid < 0)
        if not len(rest):
            return vid
        r_pid, r_addr, r_key = p_pid[rest], p_addr[rest], p_key[rest]
        fits, first, n, fo = joinable(sel0, r_pid, r_key)
        join = ended[sel0[fits]]
        fi, vv = window_join(first[fits], n[fits], fo, r_addr, start[join], end[join], join)
        vid[rest[fi]] = vv
        if not fits.all():
            more = np.sort(ended[sel0[~fits]])
            v2 = step(more, r_pid, r_addr, r_key)
            found = v2 >= 0
            vid[rest[found]] = v2[found]
        return vid
    return attribute_points


def _codes(pids: np.ndarray, pid: np.ndarray) -> np.ndarray:
    """The rank of each pid among pids; len(pids) for one not there."""
    c = np.searchsorted(pids, pid)
    ok = (c < len(pids)) & (pids[np.minimum(c, len(pids) - 1)] == pid)
    return np.where(ok, c, len(pids)).astype(np.int64)
