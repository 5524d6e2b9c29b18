"""Peak mapped bytes per process and for the tree, from the memory syscalls
of a trace and the layouts read at attach and exec, in bulk (numpy).

The layout (`map` rows) and the successful mmap, munmap, mremap and brk
calls are replayed as page ranges set mapped or unmapped; each page takes
the state of the last of them that covered it, so an mmap over a mapping
replaces it (MAP_FIXED, as the loader maps a library's segments into the
span it reserved) and a munmap of a hole frees nothing. How: the ranges of
an address space are cut at every boundary of any of them into segments;
an op changes its space's mapped pages by the segments it covers whose
state it changes, and a segment's state before an op is the state the last
op before it that covered it set. That is the address-space model's
mapped bytes (tracer.address_space) but for stack growth (a fault below
the stack grows it: no syscall, not counted here) and for what the model
settles otherwise (an exec's layout read late, with --no-exec-stop).

An address space is a process's from its start, fork or exec to its next
exec or its exit: a forked child starts with its parent's mappings at the
fork (copied from the parent's replay: spaces are replayed by generation),
an exec's with nothing but its layout.
"""
from __future__ import annotations

import numpy as np

from tracer import trace_schema
from tracer.layout import C

_K = trace_schema.KIND_INDEX
_KINDS = ("mmap", "munmap", "mremap", "brk", "map", "fork", "exec", "exit")
_MREMAP_DONTUNMAP = 4
_NONE = np.zeros(0, np.int64)
WINDOW = 1 << 14               # ops replayed at once (_windows)


def peaks(c, page: int) -> tuple[dict, tuple]:
    """c: tracer.peaks.Rows. pid -> (peak bytes, its ts) and the tree's."""
    kind_all = c.codes("kind", trace_schema.KINDS)
    rows = np.flatnonzero(np.isin(kind_all, [_K[k] for k in _KINDS]))
    if not len(rows):
        return {}, (0, None)
    kind = kind_all[rows]
    pid = c.raw("pid")[rows].astype(np.int64)
    ts = c.raw("ts")[rows]
    ret = c.raw("ret")[rows]
    addr, length, flags = c.raw("addr")[rows], c.raw("len")[rows], c.raw("flags")[rows]
    sp = _Spaces(kind, pid, c.raw("child")[rows].astype(np.int64), flags)
    shift = np.uint64(page.bit_length() - 1)

    def up(v: np.ndarray) -> np.ndarray:      # bytes -> pages, rounded up
        return ((v + np.uint64(page - 1)) >> shift).astype(np.int64)

    lo, at = (addr >> shift).astype(np.int64), (ret.astype(np.uint64) >> shift).astype(np.int64)
    parts = []                                   # (rows, seq, lo, hi, val)
    r = np.flatnonzero((kind == _K["mmap"]) & (ret >= 0))
    parts.append((r, 2 * r, at[r], at[r] + up(length[r]), 1))
    r = np.flatnonzero((kind == _K["munmap"]) & (ret == 0))
    parts.append((r, 2 * r, lo[r], lo[r] + up(length[r]), 0))
    r = np.flatnonzero((kind == _K["mremap"]) & (ret >= 0))
    gone = r[(flags[r] & np.uint64(_MREMAP_DONTUNMAP)) == 0]
    parts.append((gone, 2 * gone, lo[gone], lo[gone] + up(length[gone]), 0))
    parts.append((r, 2 * r + 1, at[r], at[r] + up(c.raw("new_len")[rows][r]), 1))
    # a layout read after an exec holds from the exec on (the process was
    # stopped there until it was read), as the model has it
    r = np.flatnonzero(kind == _K["map"])
    start = sp.start[sp.of(pid[r], r)]
    seq = np.where((start >= 0) & (kind[np.maximum(start, 0)] == _K["exec"]), 2 * start + 1, 2 * r)
    parts.append((r, seq, lo[r], lo[r] + up(length[r]), 1))
    op_rows = np.concatenate([p[0] for p in parts])
    static = Ops(sp.of(pid[op_rows], op_rows), *(np.concatenate([p[i] for p in parts])
                                                  for i in (1, 2, 3)),
                 np.concatenate([np.full(len(p[0]), p[4], np.int8) for p in parts]))
    brk = np.flatnonzero(kind == _K["brk"])
    brk_space, brk_top = sp.of(pid[brk], brk), up(ret[brk].astype(np.uint64))
    heap = np.flatnonzero((kind == _K["map"]) & (c.codes("path", ["[heap]"])[rows] == 0))
    heap_end = dict(zip(sp.of(pid[heap], heap).tolist(), (lo[heap] + up(length[heap])).tolist()))

    end = sp.ends(kind, pid, flags)
    level_of = sp.levels()
    top: dict[int, int] = dict(heap_end)      # space -> its break at its start (pages)
    done: list[Ops] = []                       # the replays, window by window
    for level in range(int(level_of.max()) + 1):
        mine = level_of == level
        kids = np.flatnonzero(mine & (sp.parent >= 0))
        top.update(_tops_at(brk_space, 2 * brk, brk_top, kids, sp.parent[kids],
                            2 * sp.start[kids], top))
        b = mine[brk_space]
        o = Ops.concat([static.where(mine[static.space]),
                        _brk_ops(brk_space[b], 2 * brk[b], brk_top[b], top),
                        *(d.inherit(kids, sp.parent[kids], sp.start[kids]) for d in done)])
        done.extend(_windows(o, end))
    ops = Ops.concat([d.where(np.arange(len(d.seq)) >= d.carried) for d in done])
    ops.delta *= page
    per_pid: dict[int, tuple] = {}
    for s, (v, seq) in ops.peaks().items():
        p = int(sp.pid[s])
        if p not in per_pid or v > per_pid[p][0]:
            per_pid[p] = (v, int(ts[seq // 2]))
    # the tree: every op's change, and each space's bytes gone at its end
    sums = np.bincount(ops.space, weights=ops.delta, minlength=len(sp.pid))
    ended = np.flatnonzero(end >= 0)
    seq = np.concatenate([ops.seq, 2 * end[ended]])
    o = np.argsort(seq, kind="stable")
    tree = np.cumsum(np.concatenate([ops.delta, -sums[ended]])[o])
    if not len(tree):
        return per_pid, (0, None)
    i = int(np.argmax(tree))
    return per_pid, (int(round(tree[i])), int(ts[seq[o][i] // 2]))


class _Spaces:
    """The address spaces: one per process from its start (or the trace's),
    and one per fork (the child's) and exec; `parent`: the space a forked
    child's started from (-1: none), `start`: the row of that fork or exec
    (-1: before the trace)."""

    def __init__(self, kind, pid, child, flags) -> None:
        fork = np.flatnonzero(kind == _K["fork"])
        ex = np.flatnonzero(kind == _K["exec"])
        bpid = np.concatenate([child[fork], pid[ex]])
        brow = np.concatenate([fork, ex])
        self._n = len(kind) + 1
        key = bpid * self._n + brow
        o = np.argsort(key, kind="stable")
        self._bkey = key[o]
        bpid, brow = bpid[o], brow[o]
        is_fork = np.r_[np.ones(len(fork), bool), np.zeros(len(ex), bool)][o]
        epoch = self._epoch(bpid, brow)
        self._keys = np.unique(np.r_[np.unique(pid) * self._n, bpid * self._n + epoch])
        self.pid = self._keys // self._n
        self.parent = np.full(len(self._keys), -1, np.int64)
        self.start = np.full(len(self._keys), -1, np.int64)
        at = np.searchsorted(self._keys, bpid * self._n + epoch)
        self.start[at] = brow
        self.parent[at[is_fork]] = self.of(pid[brow[is_fork]], brow[is_fork])

    def _epoch(self, p: np.ndarray, row: np.ndarray) -> np.ndarray:
        """How many forks to and execs of process p are at or before `row`."""
        return (np.searchsorted(self._bkey, p * self._n + row, "right")
                - np.searchsorted(self._bkey, p * self._n, "left"))

    def of(self, p: np.ndarray, row: np.ndarray) -> np.ndarray:
        """The space of process p at `row`."""
        return np.searchsorted(self._keys, p * self._n + self._epoch(p, row))

    def levels(self) -> np.ndarray:
        """Generations: 0 for a space that starts empty or from a layout, its
        parent's + 1 for a forked child's (a pass per space, in start order)."""
        level = np.zeros(len(self.pid), np.int64)
        for s in np.argsort(self.start, kind="stable").tolist():
            if self.parent[s] >= 0:
                level[s] = level[self.parent[s]] + 1
        return level

    def ends(self, kind, pid, flags) -> np.ndarray:
        """Per space, the row where it goes (the exit of its process's last
        thread, or its exec); -1: there at the trace's end."""
        big = np.iinfo(np.int64).max
        end = np.full(len(self.pid), big)
        ext = np.flatnonzero((kind == _K["exit"])
                             & ((flags & np.uint64(C["MT_EXIT_GROUP_DEAD"])) != 0))
        np.minimum.at(end, self.of(pid[ext], ext), ext)
        ex = np.flatnonzero(kind == _K["exec"])
        left = self.of(pid[ex], ex) - 1                # the space the exec leaves
        ok = (left >= 0) & (self.pid[np.maximum(left, 0)] == pid[ex])
        np.minimum.at(end, left[ok], ex[ok])
        return np.where(end == big, -1, end)


class Ops:
    """Page ranges [lo, hi) of address spaces set mapped (val 1) or not (0),
    in the order of `seq` (2 * row, + 1 for a row's second part)."""

    def __init__(self, space, seq, lo, hi, val) -> None:
        keep = hi > lo
        if not keep.all():
            space, seq, lo, hi, val = space[keep], seq[keep], lo[keep], hi[keep], val[keep]
        self.space, self.seq = space.astype(np.int64, copy=False), seq.astype(np.int64, copy=False)
        self.lo, self.hi = lo.astype(np.int64, copy=False), hi.astype(np.int64, copy=False)
        self.val = val.astype(np.int8, copy=False)
        self.delta = np.zeros(len(self.seq))        # pages (bytes once scaled)

    def where(self, m: np.ndarray) -> Ops:
        out = Ops(self.space[m], self.seq[m], self.lo[m], self.hi[m], self.val[m])
        out.delta = self.delta[m]
        return out

    @staticmethod
    def concat(parts: list[Ops]) -> Ops:
        out = Ops(*(np.concatenate([getattr(p, a) for p in parts] or [_NONE])
                    for a in ("space", "seq", "lo", "hi", "val")))
        out.delta = np.concatenate([p.delta for p in parts] or [np.zeros(0)])
        return out

    def replay(self) -> None:
        """Each op's change of its space's mapped pages (`delta`)."""
        if len(self.seq) > 1 and (self.seq[1:] < self.seq[:-1]).any():
            o = np.argsort(self.seq, kind="stable")
            for a in ("space", "seq", "lo", "hi", "val"):
                setattr(self, a, getattr(self, a)[o])
        n = len(self.seq)
        self._seg = self._pair_seq = _NONE
        if not n:
            return
        # segment boundaries: (space, page) as one sortable key
        self._pages, rank = np.unique(np.r_[self.lo, self.hi], return_inverse=True)
        self._u = max(len(self._pages), 1)
        key = np.r_[self.space, self.space] * self._u + rank
        self._bounds = b = np.unique(key)
        page = self._pages[b % self._u]
        seg_pages = np.r_[page[1:] - page[:-1], 0].astype(np.float64)   # last: unused
        sl = np.searchsorted(b, key[:n])
        count = np.searchsorted(b, key[n:]) - sl
        # (op, segment) pairs, op by op, then by segment (each in op order)
        small = np.int32 if len(b) < 2**31 and n < 2**31 else np.int64
        op = np.repeat(np.arange(n, dtype=small), count)
        seg = np.arange(len(op), dtype=np.int64) - np.repeat(np.cumsum(count) - count - sl, count)
        seg = seg.astype(small)
        o = np.argsort(seg, kind="stable")
        seg, op = seg[o], op[o]
        val = self.val[op]
        prev = np.zeros(len(op), np.int8)
        prev[1:] = np.where(seg[1:] == seg[:-1], val[:-1], 0)
        self.delta = np.bincount(op, weights=seg_pages[seg] * (val - prev), minlength=n)
        self._seg, self._val = seg.astype(np.int64), val
        self._pair_seq = self.seq[op]

    def peaks(self) -> dict:
        """space -> (its largest sum of `delta`, the seq of the op reaching it first)."""
        o = np.lexsort((self.seq, self.space))
        s, q = self.space[o], self.seq[o]
        if not len(s):
            return {}
        cs = np.cumsum(self.delta[o])
        first = np.r_[True, s[1:] != s[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(s)), 0))
        value = cs - np.where(start > 0, cs[np.maximum(start - 1, 0)], 0)
        pick = np.lexsort((np.arange(len(s)), -value, s))
        heads = pick[np.r_[True, s[pick][1:] != s[pick][:-1]]]
        return {int(s[i]): (int(round(value[i])), int(q[i])) for i in heads.tolist()}

    def live(self, spaces: np.ndarray, at: np.ndarray) -> tuple:
        """The page ranges each of `spaces` had mapped just before seq `at`
        (spaces of this replay, at within its window): (question, lo, hi)."""
        if not len(spaces) or not len(self._seg):
            return _NONE, _NONE, _NONE
        b, u = self._bounds, self._u
        gs = np.searchsorted(b, spaces * u)
        count = np.maximum(np.searchsorted(b, (spaces + 1) * u) - 1 - gs, 0)
        q = np.repeat(np.arange(len(spaces)), count)
        g = np.arange(len(q)) - np.repeat(np.cumsum(count) - count - gs, count)
        m = int(max(self._pair_seq.max(), at.max())) + 2
        pair_key = self._seg * m + self._pair_seq
        pos = np.searchsorted(pair_key, g * m + at[q]) - 1
        ok = pos >= 0
        pos = np.maximum(pos, 0)
        ok &= (self._seg[pos] == g) & (self._val[pos] == 1)
        q, g = q[ok], g[ok]
        if not len(q):
            return _NONE, _NONE, _NONE
        head = np.r_[True, (q[1:] != q[:-1]) | (g[1:] != g[:-1] + 1)]     # merge neighbours
        tail = np.r_[head[1:], True]
        return q[head], self._pages[b[g[head]] % u], self._pages[b[g[tail] + 1] % u]

    def inherit(self, kids: np.ndarray, parents: np.ndarray, fork_rows: np.ndarray) -> Ops:
        """The kids' first ops: the page ranges their parents had mapped
        just before the forks that fall in this window."""
        at = 2 * fork_rows
        w = np.flatnonzero((at >= self.first) & (at < self.until))
        q, lo, hi = self.live(parents[w], at[w])
        return Ops(kids[w][q], at[w][q] + 1, lo, hi, np.ones(len(q), np.int8))


def _windows(ops: Ops, end: np.ndarray, size: int | None = None) -> list[Ops]:
    """ops replayed in windows of `size` ops in seq order, each starting
    from the ranges mapped at the end of the one before (`carried`, at the
    head of its ops): the segments of a window are cut at its own ops'
    boundaries only, which keeps the (op, segment) pairs few on a long run
    of mmap and munmap calls at the same addresses."""
    size = size or WINDOW
    ops = ops.where(np.argsort(ops.seq, kind="stable"))
    n = len(ops.seq)
    # cut every `size` ops, never between two ops of one seq (one row)
    cuts = np.unique(np.searchsorted(ops.seq, ops.seq[np.arange(0, n, size)]))
    bounds = [*cuts.tolist(), n] if n else [0, 0]          # nothing: one empty window
    out: list[Ops] = []
    carry = Ops(_NONE, _NONE, _NONE, _NONE, _NONE)
    for i, (c, nxt) in enumerate(zip(bounds[:-1], bounds[1:])):
        w = Ops.concat([carry, ops.where(slice(c, nxt))])
        w.carried = len(carry.seq)
        w.first = -1 if i == 0 else int(ops.seq[c])
        w.until = int(ops.seq[nxt]) if nxt < n else np.iinfo(np.int64).max
        w.replay()
        out.append(w)
        if nxt < n:
            spaces = np.unique(w.space)
            spaces = spaces[(end[spaces] < 0) | (2 * end[spaces] >= w.until)]   # still there
            q, lo, hi = w.live(spaces, np.full(len(spaces), w.until))
            carry = Ops(spaces[q], np.full(len(q), w.until - 1), lo, hi, np.ones(len(q), np.int8))
    return out


def _brk_ops(space, seq, top, start_top: dict) -> Ops:
    """brk calls as ops: the heap grows to (or shrinks from) each call's new
    break from the break before it: the space's previous call's, else the
    break at its start (its parent's at the fork, a layout's [heap] end),
    else the call's own (glibc's first call is brk(0), which only asks)."""
    o = np.lexsort((seq, space))
    space, seq, top = space[o], seq[o], top[o]
    prev = np.r_[top[:1], top[:-1]]
    for i in np.flatnonzero(np.r_[True, space[1:] != space[:-1]] if len(space) else []).tolist():
        prev[i] = start_top.get(int(space[i]), top[i])
    grow = top > prev
    return Ops(space, seq, np.where(grow, prev, top), np.where(grow, top, prev),
               grow.astype(np.int8))


def _tops_at(space, seq, top, kids, parents, at, start_top: dict) -> dict:
    """Each kid's parent's break (pages) just before seq `at` (the fork)."""
    hit, found = np.zeros(len(kids), bool), np.zeros(len(kids), np.int64)
    if len(seq):
        o = np.lexsort((seq, space))
        m = int(seq.max()) + 2
        pos = np.searchsorted(space[o] * m + seq[o], parents * m + at) - 1
        hit = (pos >= 0) & (space[o][np.maximum(pos, 0)] == parents)
        found = top[o][np.maximum(pos, 0)]
    out = {}
    for k, p, h, v in zip(kids.tolist(), parents.tolist(), hit.tolist(), found.tolist()):
        t = v if h else start_top.get(p)
        if t is not None:
            out[k] = t
    return out
