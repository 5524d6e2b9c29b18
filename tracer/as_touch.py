"""What each change of the replay reads or writes: its *touch* ranges.

The model's fast paths (tracer.as_chains, Core.brk_run) replay some changes
in bulk, outside the loop of tracer.as_model. That gives the loop's result
only where no other change looks at the same addresses meanwhile. A change's
touch ranges hold every address its handler in tracer.as_model /
tracer.as_process reads or writes (the neighbour a brk extends, the page a
mremap grows from), computed from the event alone and never smaller: the
handlers that read the whole address space (fork, exec, exit, snapshot)
touch all of it, and so does a brk whose previous break is not the result
of the previous brk call.

Also here: which mmaps were thread stacks (glibc allocate_stack), from the
event order alone (as_process.Model.thread's rule, in bulk).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tracer import as_model as am
from tracer import vma_kinds as vk

ALL = np.uint64(np.iinfo(np.uint64).max)   # a touch of [0, ALL): the whole address space
_BIG = np.uint64(1 << 60)                  # larger operands: taken as touching everything


class Touches:
    """Touch records (entry, pid, lo, hi), sorted by (pid, entry). Processes
    are numbered by code(): their rank among `pids`."""

    def __init__(self, ent, pid, lo, hi, typ, pids: np.ndarray) -> None:
        self.pids = pids
        code = self.code(pid)
        order = np.lexsort((ent, code))
        self.ent, self.lo, self.hi, self.typ = ent[order], lo[order], hi[order], typ[order]
        self.key = (code[order] << np.int64(32)) | self.ent

    def code(self, pid) -> np.ndarray:
        return np.searchsorted(self.pids, np.asarray(pid, np.int64)).astype(np.int64)

    def window(self, code: np.ndarray, after, before):
        """Index ranges [i0, i1) of the records of process `code` whose entry
        is in (after, before)."""
        c = np.asarray(code, np.int64) << np.int64(32)
        return (np.searchsorted(self.key, c | (np.asarray(after, np.int64) + 1)),
                np.searchsorted(self.key, c | np.asarray(before, np.int64)))


def _align(n: np.ndarray, page: int) -> np.ndarray:
    p = np.uint64(page - 1)
    return (n + p) & ~p


def entry_touches(etype: np.ndarray, eref: np.ndarray, epid: np.ndarray, c: dict,
                  f_addr: np.ndarray, stack_hi: dict, page: int, gap: int) -> Touches:
    """The touch records of the loop's entries (etype/eref/epid as in
    address_space.build; c the change rows as numpy arrays; f_addr the
    faults' addresses, for GROW entries; stack_hi pid -> top of its
    stack-growth windows)."""
    chg = np.flatnonzero(etype < am.SNAP)
    r = eref[chg]
    t = etype[chg]
    ret = c["ret"][r]
    addr, ln, nl = c["addr"][r], c["len"][r], c["new_len"][r]
    big = (addr >= _BIG) | (ln >= _BIG) | (nl >= _BIG) | (ret >= np.int64(_BIG))
    uret = np.maximum(ret, 0).astype(np.uint64)
    la, na = _align(np.minimum(ln, _BIG), page), _align(np.minimum(nl, _BIG), page)
    z = np.zeros(len(chg), np.uint64)
    lo1, hi1, lo2, hi2 = z.copy(), z.copy(), z.copy(), z.copy()
    every = np.zeros(len(chg), bool)

    m = (t == am.MMAP) & (ret >= 0)
    lo1[m], hi1[m] = uret[m], uret[m] + la[m]
    m = (t == am.MUNMAP) & (ret == 0) & (addr % np.uint64(page) == 0)
    lo1[m], hi1[m] = addr[m], addr[m] + la[m]
    m = (t == am.MPROTECT) & ((ret == 0) | (ret == -vk.ENOMEM))
    lo1[m], hi1[m] = addr[m], addr[m] + la[m]
    rem = (t == am.MREMAP) & (ret >= 0) & (na > 0)
    m = rem & (la == 0)                                  # duplicate: reads addr, maps at ret
    lo1[m], hi1[m], lo2[m], hi2[m] = addr[m], addr[m] + np.uint64(1), uret[m], uret[m] + na[m]
    inplace = rem & (la > 0) & (uret == addr)
    m = inplace & (na < la)
    lo1[m], hi1[m] = addr[m] + na[m], addr[m] + la[m]
    m = inplace & (na > la)
    lo1[m], hi1[m] = addr[m] + la[m] - np.uint64(1), addr[m] + na[m]
    m = rem & (la > 0) & (uret != addr)
    lo1[m], hi1[m], lo2[m], hi2[m] = addr[m], addr[m] + la[m], uret[m], uret[m] + na[m]

    # brk: [PAGE_ALIGN(old), PAGE_ALIGN(new)) and the page below (the heap it
    # extends); old is the previous brk's result if nothing reset it since
    brk = (t == am.BRK) & (ret > 0)
    old = _previous_break(etype, eref, epid, c, chg[brk])
    known = old > 0
    oe = _align(np.maximum(old, 0).astype(np.uint64), page)
    ne = _align(uret[brk], page)
    lo_b = np.minimum(oe, ne) - np.uint64(1)
    hi_b = np.where(oe == ne, lo_b, np.maximum(oe, ne))
    bi = np.flatnonzero(brk)
    lo1[bi[known]], hi1[bi[known]] = lo_b[known], hi_b[known]
    every[bi[~known]] = True

    every |= big & (hi1 > lo1)
    every |= (t == am.EXEC) | (t == am.FORK)
    every |= (t == am.EXIT) & ((c["flags"][r] & np.uint64(vk.EXIT_GROUP_DEAD)) != 0)
    lo1[every], hi1[every], hi2[every] = 0, ALL, 0

    parts_e, parts_p, parts_lo, parts_hi = [], [], [], []

    def add(e, p, lo, hi):
        keep = hi > lo
        parts_e.append(e[keep])
        parts_p.append(p[keep])
        parts_lo.append(lo[keep])
        parts_hi.append(hi[keep])
    add(chg, epid[chg], lo1, hi1)
    add(chg, epid[chg], lo2, hi2)
    fk = chg[t == am.FORK]                               # the child's new address space
    add(fk, c["child"][eref[fk]], np.zeros(len(fk), np.uint64), np.full(len(fk), ALL))
    sn = np.flatnonzero(etype == am.SNAP)
    add(sn, epid[sn], np.zeros(len(sn), np.uint64), np.full(len(sn), ALL))
    gr = np.flatnonzero(etype == am.GROW)
    if len(gr):
        # grow_stack reads the mapping at the fault, the next one above (the
        # stack) and the one below if within the guard gap
        fa = f_addr[eref[gr]]
        reach = np.uint64(gap + page)
        glo = np.where(fa > reach, fa - reach, 0).astype(np.uint64)
        ghi = np.array([stack_hi.get(p, 0) for p in epid[gr].tolist()], np.uint64)
        add(gr, epid[gr], glo, np.maximum(ghi, fa + np.uint64(1)))
    e = np.concatenate(parts_e)
    p = np.concatenate(parts_p).astype(np.int64)
    pids = np.unique(np.concatenate([pd.unique(epid), pd.unique(c["child"])]).astype(np.int64))
    return Touches(e, p, np.concatenate(parts_lo), np.concatenate(parts_hi), etype[e], pids)


def _previous_break(etype, eref, epid, c, brk_entries: np.ndarray) -> np.ndarray:
    """For each brk entry, the result of the same process's previous
    successful brk if nothing since may have set the break otherwise
    (exec, fork into that pid, exit, snapshot), else -1."""
    if not len(brk_entries):
        return np.zeros(0, np.int64)
    ret = c["ret"][eref[brk_entries]]
    pid = epid[brk_entries].astype(np.int64)
    # the previous brk of the same process (brk_entries are in entry order)
    codes, uniq = pd.factorize(pid)
    o = np.argsort(codes.astype(np.int32), kind="stable")
    prev = np.full(len(o), -1, np.int64)
    same = codes[o][1:] == codes[o][:-1]
    prev[o[1:][same]] = ret[o[:-1][same]]
    prev_ent = np.full(len(o), -1, np.int64)
    prev_ent[o[1:][same]] = brk_entries[o[:-1][same]]
    # ... unless something that may set the break came in between
    own = np.flatnonzero((etype == am.EXEC) | (etype == am.SNAP) | (etype == am.EXIT))
    fork = np.flatnonzero(etype == am.FORK)
    r_ent = np.concatenate([own, fork])
    r_pid = np.concatenate([epid[own], c["child"][eref[fork]]]).astype(np.int64)
    if len(r_ent):
        rk = np.sort((r_pid << np.int64(32)) | r_ent)
        between = np.searchsorted(rk, (pid << np.int64(32)) | brk_entries) - np.searchsorted(
            rk, (pid << np.int64(32)) | (prev_ent + 1))
        prev[between > 0] = -1
    return prev


def thread_stacks(etype: np.ndarray, eref: np.ndarray, epid: np.ndarray, c: dict,
                  mmap_lin: np.ndarray, page: int) -> np.ndarray:
    """Lineages that were thread stacks: MAP_STACK anonymous private mmaps,
    and the last anonymous private mmap of a thread that then creates a
    thread (`thread` row) without another mmap, munmap, mremap or brk of its
    own in between, its address space not replaced meanwhile (Model.thread).
    mmap_lin: lineage per change row (-1 if the row made no mapping)."""
    ch = np.flatnonzero(etype < am.SNAP)
    r, t = eref[ch], etype[ch]
    ret, flags = c["ret"][r], c["flags"][r]
    mtype = flags & np.uint64(vk.MAP_TYPE)
    made = (t == am.MMAP) & (mmap_lin[r] >= 0)
    anon_priv = made & ((flags & np.uint64(vk.MAP_ANONYMOUS)) != 0) & (
        mtype != vk.MAP_SHARED) & (mtype != vk.MAP_SHARED_VALIDATE)
    stacks = set(mmap_lin[r[anon_priv & ((flags & np.uint64(vk.MAP_STACK)) != 0)]].tolist())
    thr = t == am.THREAD
    if not thr.any():
        return np.array(sorted(stacks), np.int64)
    # the rows of the threads that create threads which set (1), drop (0)
    # or take (2) the candidate
    tkey_all = (epid[ch].astype(np.int64) << np.int64(32)) | (c["tid"][r] & 0xffffffff)
    drop = (made & ~anon_priv) | ((t == am.MUNMAP) & (ret == 0) & (
        c["addr"][r] % np.uint64(page) == 0)) | ((t == am.MREMAP) & (ret >= 0)) | (
        (t == am.BRK) & (ret > 0))
    sel = np.flatnonzero((drop | anon_priv | thr) & np.isin(tkey_all, np.unique(tkey_all[thr])))
    kind = np.where(thr[sel], 2, np.where(anon_priv[sel], 1, 0))
    tkey = tkey_all[sel]
    o = np.lexsort((ch[sel], tkey))
    sel, kind, tkey = sel[o], kind[o], tkey[o]
    k = np.flatnonzero(kind == 2)
    k = k[k > 0]
    k = k[(tkey[k - 1] == tkey[k]) & (kind[k - 1] == 1)]
    if not len(k):
        return np.array(sorted(stacks), np.int64)
    e_set, e_thr = ch[sel[k - 1]], ch[sel[k]]
    pid = epid[e_thr].astype(np.int64)
    # the address space replaced in between (exec, exit of the last thread,
    # fork into that pid) drops the candidate
    ex = np.flatnonzero(etype == am.EXIT)
    ex = ex[(c["flags"][eref[ex]] & np.uint64(vk.EXIT_GROUP_DEAD)) != 0]
    fk = np.flatnonzero(etype == am.FORK)
    rent = np.concatenate([np.flatnonzero(etype == am.EXEC), ex, fk])
    rpid = np.concatenate([epid[np.flatnonzero(etype == am.EXEC)], epid[ex],
                           c["child"][eref[fk]]]).astype(np.int64)
    rkey = np.sort((rpid << np.int64(32)) | rent)
    n = np.searchsorted(rkey, (pid << np.int64(32)) | e_thr) - np.searchsorted(
        rkey, (pid << np.int64(32)) | (e_set + 1))
    stacks.update(mmap_lin[r[sel[k - 1]][n == 0]].tolist())
    return np.array(sorted(stacks), np.int64)


class BrkRuns:
    """The successful brk calls by process, to find how many of them, from
    one on, only move the end of the heap (Core.brk_run)."""

    def __init__(self, T: Touches, ent: np.ndarray, pid: np.ndarray, ret: np.ndarray,
                 page: int) -> None:
        code = T.code(pid)
        o = np.lexsort((ent, code))
        self.key = (code[o] << np.int64(32)) | ent[o]
        self.ent, self.ret = ent[o], ret[o]
        self.e = _align(ret[o].astype(np.uint64), page)
        self.T = T

    def extent(self, pid: int, k0: int, ms: int, oe: int, nxt: int | None) -> tuple[int, int]:
        """[j0, j1): the brk calls (indices here) from entry k0 on that may go
        in bulk: none ends the heap at or below its start ms, the highest end
        M stays at or below nxt (the next mapping), and no other change of
        the process in between touches [ms, M)."""
        T = self.T
        code = int(T.code(pid))
        j0 = int(np.searchsorted(self.key, (code << 32) | k0))
        jend = int(np.searchsorted(self.key, (code + 1) << 32))
        top = ALL if nxt is None else np.uint64(nxt)
        M, L, after, j, step = np.uint64(oe), ALL, k0, j0, 64
        ums = np.uint64(ms)
        while j < jend:
            jj = min(j + step, jend)
            B, e = self.ent[j:jj], self.e[j:jj]
            i0, i1 = T.window(code, after, int(B[-1]))
            rec = T.ent[i0:i1]
            lo = np.where((T.hi[i0:i1] > ums) & (T.typ[i0:i1] != am.BRK), T.lo[i0:i1], ALL)
            low = np.minimum(np.minimum.accumulate(lo), L) if len(lo) else lo
            k = np.searchsorted(rec, B) - 1
            Lb = np.where(k >= 0, low[np.maximum(k, 0)] if len(low) else L, L)
            Mb = np.maximum(np.maximum.accumulate(e), M)
            bad = np.flatnonzero((e <= ums) | (Mb > top) | (Mb > Lb))
            if len(bad):
                return j0, j + int(bad[0])
            M, after, j, step = Mb[-1], int(B[-1]), jj, step * 4
            if len(low):
                L = low[-1]
        return j0, jend
