"""The replay under tracer.peaks_mapped: page ranges of address spaces set
mapped or unmapped (`Ops`), each op's change of its space's mapped pages,
replayed in windows (`windows`), and brk calls as ops (`brk_ops`,
`tops_at`). An op takes the state of the last op before it that covered
a page: the ranges of a space are cut at every boundary of any of them into
segments; an op changes its space's mapped pages by the segments it covers
whose state it changes.
"""
from __future__ import annotations

import numpy as np

_NONE = np.zeros(0, np.int64)
WINDOW = 1 << 14               # ops replayed at once (windows)


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


def windows(ops: Ops, end: np.ndarray, size: int | None = None) -> list[Ops]:
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


def brk_ops(space, seq, top, start_top: dict) -> Ops:
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


def tops_at(space, seq, top, kids, parents, at, start_top: dict) -> dict:
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
