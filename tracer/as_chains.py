"""mmap chains: the whole life of a mapping replayed in bulk.

Most mappings of an allocator's large blocks live alone: an mmap, perhaps
mremaps (grown in place or moved) and mprotects of the whole mapping, then a
munmap of all of it, with nothing else of the process touching those
addresses meanwhile. Such a chain is replayed here with numpy, outside the
loop of tracer.as_model, with the versions the loop would make: one per
mmap, mremap and prot-changing mprotect, each the parent of the next.

A chain is taken only if that is provably the loop's result:
- it starts with a successful mmap without MAP_FIXED, and every later call
  acts on exactly the whole mapping at its start address (a munmap of it;
  a mremap of it, not MREMAP_FIXED/DONTUNMAP; an mprotect of it that
  succeeded), the last one a munmap, within MAX_STEPS calls;
- no other change of the process touches the mapping's range between two
  of its calls (tracer.as_touch: conservative ranges, and the changes that
  read the whole address space -- fork, exec, exit, snapshots -- touch
  all of it);
- the ranges it takes (the mmap's, a mremap's new or added pages) hold no
  mapping of the loop at that moment: checked by the loop itself (CHECK
  entries), since only the loop knows its state; if one does, the model is
  built again without that chain (address_space.build).
A cap (MAX_WINDOW) keeps the isolation check small; a chain beyond it is
replayed by the loop as any other.
"""
from __future__ import annotations

import numpy as np

from tracer import as_model as am
from tracer import vma_kinds as vk
from tracer.as_touch import Touches, _align

MAX_STEPS = 16           # calls after the mmap
MAX_WINDOW = 4096        # touch records of the process between two calls of a chain
_BIG = np.uint64(1 << 60)


class Chains:
    """The chains taken: their entries (out of the loop), the ranges the
    loop must find free (acq_*), and their versions (v: arrays, by chain
    then time; parent is an index into v or -1)."""

    def __init__(self) -> None:
        self.entries = np.zeros(0, np.int64)       # unordered
        self.start = np.zeros(0, np.int64)        # per chain: the mmap's entry
        self.acq_ent = self.acq_chain = np.zeros(0, np.int64)
        self.acq_lo = self.acq_hi = np.zeros(0, np.uint64)
        self.mmap_rows = np.zeros(0, np.int64)    # per chain: the mmap's change row
        self.v: dict = {}

    def __len__(self) -> int:
        return len(self.start)


def find(etype: np.ndarray, eref: np.ndarray, epid: np.ndarray, ebnd: np.ndarray, c: dict,
         T: Touches, page: int, exclude: set) -> Chains:
    """The chains among the entries (address_space.build's arrays; c the
    change rows as numpy arrays plus "path", a list). exclude: mmap entries
    not to start a chain at."""
    out = Chains()
    ch = np.flatnonzero(etype < am.SNAP)
    r = eref[ch]
    t = etype[ch]
    ret, addr, ln = c["ret"][r], c["addr"][r], c["len"][r]
    flags = c["flags"][r]
    ok_size = (addr < _BIG) & (ln < _BIG) & (c["new_len"][r] < _BIG) & (ret < np.int64(_BIG))
    la = _align(np.minimum(ln, _BIG), page)
    uret = np.maximum(ret, 0).astype(np.uint64)
    m = np.flatnonzero((t == am.MMAP) & (ret >= 0) & ok_size & (la > 0)
                       & ((flags & np.uint64(vk.MAP_FIXED)) == 0))
    if exclude:
        m = m[~np.isin(ch[m], np.fromiter(exclude, np.int64, len(exclude)))]
    if not len(m):
        return out
    # the calls a chain may continue with, by (pid, start address)
    na = _align(np.minimum(c["new_len"][r], _BIG), page)
    is_op = ok_size & (
        ((t == am.MUNMAP) & (ret == 0) & (addr % np.uint64(page) == 0) & (la > 0))
        | ((t == am.MPROTECT) & (ret == 0) & (la > 0))
        | ((t == am.MREMAP) & (ret >= 0) & (na > 0) & (la > 0) & ~((uret == addr) & (na == la))))
    op = np.flatnonzero(is_op & (addr % np.uint64(page) == 0))
    if not len(op) or len(T.pids) >= (1 << 15):
        return out              # (so many processes: the loop replays them all)
    ops = _Ops(T.code(epid[ch[op]]), addr[op], ch[op], page.bit_length() - 1)

    n = len(m)
    code = T.code(epid[ch[m]])
    cur_s, cur_e = uret[m].copy(), uret[m] + la[m]
    cur_prot = (c["prot"][r[m]] & vk.PROT_MASK).astype(np.int64)
    cur_t = ch[m].copy()
    alive = np.ones(n, bool)
    ok = np.ones(n, bool)
    seg = ([], [], [], [], [])              # chain, lo, hi, from, to
    ver = ([np.arange(n)], [ch[m]], [cur_s.copy()], [cur_e.copy()], [cur_prot.copy()],
           [np.full(n, vk.BY["mmap"])])     # chain, entry, start, end, prot, by
    kills = ([], [], [])                    # chain, entry, by
    acq = ([np.arange(n)], [ch[m]], [cur_s.copy()], [cur_e.copy()])
    claims = ([], [])
    for _ in range(MAX_STEPS + 1):
        k = np.flatnonzero(alive)
        if not len(k):
            break
        nxt = ops.next(code[k], cur_s[k], cur_t[k])
        found = nxt >= 0
        ok[k[~found]] = False
        alive[k[~found]] = False
        k, q = k[found], op[nxt[found]]
        e_op = ch[q]
        claims[0].append(k)
        claims[1].append(e_op)
        seg[0].append(k), seg[1].append(cur_s[k]), seg[2].append(cur_e[k])
        seg[3].append(cur_t[k]), seg[4].append(e_op)
        tq, size = t[q], cur_e[k] - cur_s[k]
        exact = la[q] == size
        rq = r[q]
        # munmap of all of it: the end
        unm = (tq == am.MUNMAP) & exact
        # mprotect of all of it: a new version if the protection changes
        pr = (tq == am.MPROTECT) & exact & ((c["prot"][rq] & vk.PROT_GROWSDOWN) == 0)
        newp = (c["prot"][rq] & vk.PROT_MASK).astype(np.int64)
        prc = pr & (newp != cur_prot[k])
        # mremap of all of it: in place (grown or shrunk) or moved
        rm = (tq == am.MREMAP) & exact & (
            (flags[q] & np.uint64(vk.MREMAP_FIXED | vk.MREMAP_DONTUNMAP)) == 0)
        bad = ~(unm | pr | rm)
        ok[k[bad]] = False
        alive[k[bad]] = False
        ends = unm
        alive[k[ends]] = False
        kill = ends | prc | rm
        by = np.where(ends, vk.BY["munmap"], np.where(prc, vk.BY["mprotect"], vk.BY["mremap"]))
        kills[0].append(k[kill]), kills[1].append(e_op[kill]), kills[2].append(by[kill])
        # new versions
        ns = np.where(rm & (uret[q] != cur_s[k]), uret[q], cur_s[k])
        ne = np.where(rm, ns + na[q], cur_e[k])
        grow_lo = np.where(uret[q] == cur_s[k], cur_e[k], ns)   # pages a mremap takes
        take = rm & (ne > grow_lo)
        nv = prc | rm
        ver[0].append(k[nv]), ver[1].append(e_op[nv]), ver[2].append(ns[nv]), ver[3].append(ne[nv])
        ver[4].append(np.where(prc, newp, cur_prot[k])[nv])
        ver[5].append(np.where(prc, vk.BY["mprotect"], vk.BY["mremap"])[nv])
        acq[0].append(k[take]), acq[1].append(e_op[take]), acq[2].append(grow_lo[take])
        acq[3].append(ne[take])
        cur_s[k[nv]], cur_e[k[nv]] = ns[nv], ne[nv]
        cur_prot[k[prc]] = newp[prc]
        cur_t[k] = e_op
    ok &= ~alive                            # not ended within MAX_STEPS calls
    cat = [np.concatenate(x) if x else np.zeros(0, np.int64) for x in claims]
    # a call two chains continue with belongs to neither
    if len(cat[1]):
        e_u, cnt = np.unique(cat[1], return_counts=True)
        shared = np.isin(cat[1], e_u[cnt > 1])
        ok[cat[0][shared]] = False
    sg = [np.concatenate(x) for x in seg] if seg[0] else None
    if sg is not None:
        ok &= _isolated(T, code, *sg, n)
    V = [np.concatenate(x) for x in ver]
    K = [np.concatenate(x) if x else np.zeros(0, np.int64) for x in kills]
    o = np.lexsort((V[1], V[0]))
    V = [x[o] for x in V]
    o = np.lexsort((K[1], K[0]))
    K = [x[o] for x in K]
    # each version dies at the next call of its chain that kills (one each)
    has = ok[V[0]]
    V = [x[has] for x in V]
    K = [x[ok[K[0]]] for x in K]
    ent, dent, dby = V[1], K[1], K[2]
    # number the chains taken in order of their mmap; write the versions
    cid = np.cumsum(ok) - 1
    vm = m[ok]
    out.start, out.mmap_rows = ch[vm], r[vm]
    chain = cid[V[0]]
    rr = r[m][V[0]]                        # each version's mmap row
    f = c["flags"][rr]
    anon = (f & np.uint64(vk.MAP_ANONYMOUS)) != 0
    shared_ = ((f & np.uint64(vk.MAP_TYPE)) == vk.MAP_SHARED) | (
        (f & np.uint64(vk.MAP_TYPE)) == vk.MAP_SHARED_VALIDATE)
    first = np.ones(len(chain), bool)
    first[1:] = chain[1:] != chain[:-1]
    path = np.full(len(chain), None, object)
    path[anon & shared_] = vk.SHARED_ANON
    named = np.flatnonzero(~anon)
    path[named] = [c["path"][x] for x in rr[named].tolist()]
    out.v = {"chain": chain, "pid": epid[ent].astype(np.int64), "start": V[2], "end": V[3],
             "prot": V[4].astype(np.int64), "shared": shared_, "file": ~anon | shared_,
             "off": np.where(anon, 0, c["off"][rr]).astype(np.uint64),
             "fd": np.where(anon, -1, c["fd"][rr]).astype(np.int64), "fd_ok": ~anon,
             "ts": c["ts"][eref[ent]].astype(np.uint64), "bnd": ebnd[ent].astype(np.int64),
             "by": V[5].astype(np.int64), "cause": c["pos"][eref[ent]].astype(np.int64),
             "parent": np.where(first, -1, np.arange(len(chain)) - 1).astype(np.int64),
             "path": path, "d_ts": c["ts"][eref[dent]].astype(np.uint64),
             "d_bnd": ebnd[dent].astype(np.int64), "d_by": dby.astype(np.int64)}
    A = [np.concatenate(x) for x in acq]
    a_ok = ok[A[0]]
    out.acq_chain, out.acq_ent = cid[A[0][a_ok]], A[1][a_ok]
    out.acq_lo, out.acq_hi = A[2][a_ok], A[3][a_ok]
    mine = ok[cat[0]] if len(cat[0]) else np.zeros(0, bool)
    out.entries = np.concatenate([ch[vm], cat[1][mine]])
    return out


class _Ops:
    """The calls a chain may continue with, sorted by (process, page, entry):
    next() finds, for (process, start address, entry), the first one after
    that entry at that address. Packed keys: code << 48 | page."""

    def __init__(self, code: np.ndarray, addr: np.ndarray, ent: np.ndarray, shift: int) -> None:
        self.shift = np.uint64(shift)
        pk = self._pack(code, addr)
        o = np.lexsort((ent, pk))
        self.rows, self.pk, self.ent = o, pk[o], ent[o]
        # each call's key: the first position of its (process, page) group, then its entry
        self.key = (np.searchsorted(self.pk, self.pk).astype(np.int64) << np.int64(32)) | self.ent

    def _pack(self, code, addr) -> np.ndarray:
        return (code.astype(np.int64) << np.int64(48)) | (addr >> self.shift).astype(np.int64)

    def next(self, code: np.ndarray, addr: np.ndarray, after: np.ndarray) -> np.ndarray:
        """Row (into the arrays given) of each next call, -1 if none."""
        if not len(self.pk):
            return np.full(len(code), -1, np.int64)
        pk = self._pack(code, addr)
        g = np.searchsorted(self.pk, pk)
        ok = self.pk[np.minimum(g, len(self.pk) - 1)] == pk
        j = np.searchsorted(self.key, (g.astype(np.int64) << np.int64(32)) | (after + 1))
        jj = np.minimum(j, len(self.key) - 1)
        ok &= (j < len(self.key)) & (self.pk[jj] == pk)
        return np.where(ok, self.rows[jj], -1)


def _isolated(T: Touches, code, chain, lo, hi, after, before, n) -> np.ndarray:
    """False for the chains a change of their process touches between two of
    their calls (or with too many changes between two of them)."""
    ok = np.ones(n, bool)
    i0, i1 = T.window(code[chain], after, before)
    cnt = i1 - i0
    ok[chain[cnt > MAX_WINDOW]] = False
    small = np.flatnonzero(cnt <= MAX_WINDOW)
    cnt = cnt[small]
    tot = int(cnt.sum())
    if tot:
        seg = np.repeat(small, cnt)
        idx = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(i0[small], cnt)
        hit = (T.lo[idx] < hi[seg]) & (T.hi[idx] > lo[seg])
        ok[chain[seg[hit]]] = False
    return ok
