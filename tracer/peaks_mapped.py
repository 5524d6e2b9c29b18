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

from tracer import peaks_replay, trace_schema
from tracer.layout import C
from tracer.peaks_replay import Ops, brk_ops, tops_at

_K = trace_schema.KIND_INDEX
_KINDS = ("mmap", "munmap", "mremap", "brk", "map", "fork", "exec", "exit")
_MREMAP_DONTUNMAP = 4
_NONE = np.zeros(0, np.int64)


def peaks(c, page: int) -> tuple[dict, tuple]:
    """c: tracer.peaks.Rows. pid -> (peak bytes, its ts) and the tree's."""
    m = Mapped(page)
    m.step(*mapped_rows(c))
    return m.result()


def mapped_rows(c) -> tuple:
    """The rows of _KINDS (Mapped.step's arguments: kind, pid, child, flags,
    ts, ret, addr, len, new_len, a [heap] layout row)."""
    kind_all = c.codes("kind", trace_schema.KINDS)
    rows = np.flatnonzero(np.isin(kind_all, KIND_CODES))
    return (kind_all[rows], c.raw("pid")[rows].astype(np.int64),
            c.raw("child")[rows].astype(np.int64), c.raw("flags")[rows], c.raw("ts")[rows],
            c.raw("ret")[rows], c.raw("addr")[rows], c.raw("len")[rows],
            c.raw("new_len")[rows], c.codes("path", ["[heap]"])[rows] == 0)


KIND_CODES = [_K[k] for k in _KINDS]


def frontier(kind: np.ndarray, pid: np.ndarray, flags: np.ndarray, ts: np.ndarray) -> int:
    """How many of these rows (the rows after the last step, more to come)
    a step can take without a later row changing what it replayed: not the
    rows of the last ts (a layout's rows share one ts: the rest of it may
    come next), nor from the last exec of a process that is owed a layout
    (one per exec, read at once or late with --no-exec-stop: it holds from
    its process's last exec; none comes after its exit)."""
    n = len(kind)
    if not n or ts[0] == ts[-1]:
        return 0
    cut = int(np.searchsorted(ts, ts[-1], "left"))
    m = kind == _K["map"]
    layout = m & np.r_[True, ~m[:-1] | (pid[1:] != pid[:-1]) | (ts[1:] != ts[:-1])]
    ext = (kind == _K["exit"]) & ((flags & np.uint64(C["MT_EXIT_GROUP_DEAD"])) != 0)
    rows = np.flatnonzero(layout | ext | (kind == _K["exec"]))
    events = list(zip(rows.tolist(), kind[rows].tolist(), pid[rows].tolist()))
    while True:    # the rows before the cut hold every layout their execs are owed
        owed: dict[int, int] = {}
        last_exec: dict[int, int] = {}
        for r, k, p in events:
            if r >= cut:
                break
            if k == _K["exec"]:
                owed[p] = owed.get(p, 0) + 1
                last_exec[p] = r
            elif k == _K["map"]:
                owed[p] = max(owed.get(p, 0) - 1, 0)
            else:
                owed[p] = 0
        new = min([last_exec[p] for p, o in owed.items() if o] + [cut])
        if new == cut:
            return cut
        cut = new


class Mapped:
    """The replay in steps: each step the rows (of _KINDS, in time order)
    that follow the last step's, from the ranges each address space had
    mapped at its end, its break, its mapped pages and its peak so far; the
    rows of a trace in steps give what they give in one, so the peaks can be
    computed while tracing (tracer.peaks_stream). A row that would change
    what an earlier step replayed (a layout that holds from an exec replayed
    before it, a [heap] end after the break moved, a row of a space that
    had ended) makes it `invalid`: the caller replays the trace in one step.

    The address spaces: one per process from its start (or the trace's),
    one per fork (the child's) and exec; a forked child's starts from its
    parent's mappings at the fork (its parent's replay: spaces are replayed
    by generation, `level`), an exec's with nothing but its layout."""

    def __init__(self, page: int) -> None:
        self.page = page
        self.rows = 0                            # rows replayed: the next step's first
        self.invalid: str | None = None          # why the steps cannot go on
        self._space: dict[int, int] = {}         # pid -> its space now
        self._epoch: dict[int, int] = {}         # pid -> forks to it and execs of it so far
        self._key: list[tuple[int, int]] = []    # space -> (pid, epoch): ties go to the first
        self._level: list[int] = []
        self._exec: list[int] = []               # space -> the exec row it started at, -1
        self._end: list[int] = []                # space -> the row it ended at, -1
        self._sum: list[int] = []                # space -> pages mapped now
        self._best: dict[int, tuple[int, int]] = {}      # space -> (pages, ts) at its peak
        self._top: dict[int, int] = {}           # space -> its break (pages), as _brk_ops wants
        self._top_from: dict[int, str] = {}      # "heap", "fork" or "brk"
        self._live = Ops(_NONE, _NONE, _NONE, _NONE, _NONE)   # mapped at the last step's end
        self._tree = 0
        self._tree_best: tuple[int, int] | None = None

    def carried(self) -> int:
        """Page ranges mapped at the last step's end: the next one replays them."""
        return len(self._live.seq)

    def _new(self, pid: int, epoch: int, level: int, exec_row: int) -> int:
        self._key.append((pid, epoch))
        self._level.append(level)
        self._exec.append(exec_row)
        self._end.append(-1)
        self._sum.append(0)
        return len(self._key) - 1

    def step(self, kind, pid, child, flags, ts, ret, addr, length, new_len, heap) -> None:
        if self.invalid or not len(kind):
            return
        n, first = len(kind), self.rows
        g = first + np.arange(n)                        # rows of the whole trace
        space, kids, parent, fork_row, ended = self._spaces(kind, pid, child, flags, g)
        shift = np.uint64(self.page.bit_length() - 1)

        def up(v: np.ndarray) -> np.ndarray:      # bytes -> pages, rounded up
            return ((v + np.uint64(self.page - 1)) >> shift).astype(np.int64)

        lo, at = (addr >> shift).astype(np.int64), (ret.astype(np.uint64) >> shift).astype(np.int64)
        parts = []                                   # (rows, seq, lo, hi, val)
        r = np.flatnonzero((kind == _K["mmap"]) & (ret >= 0))
        parts.append((r, 2 * g[r], at[r], at[r] + up(length[r]), 1))
        r = np.flatnonzero((kind == _K["munmap"]) & (ret == 0))
        parts.append((r, 2 * g[r], lo[r], lo[r] + up(length[r]), 0))
        r = np.flatnonzero((kind == _K["mremap"]) & (ret >= 0))
        gone = r[(flags[r] & np.uint64(_MREMAP_DONTUNMAP)) == 0]
        parts.append((gone, 2 * g[gone], lo[gone], lo[gone] + up(length[gone]), 0))
        parts.append((r, 2 * g[r] + 1, at[r], at[r] + up(new_len[r]), 1))
        # a layout read after an exec holds from the exec on (the process was
        # stopped there until it was read), as the model has it
        r = np.flatnonzero(kind == _K["map"])
        ex = np.array(self._exec, np.int64)[space[r]] if len(r) else _NONE
        seq = np.where(ex >= 0, 2 * ex + 1, 2 * g[r])
        if (seq < 2 * first).any():                   # before this step: replayed already
            self.invalid = "a layout from an exec of an earlier step"
            return
        parts.append((r, seq, lo[r], lo[r] + up(length[r]), 1))
        op_rows = np.concatenate([p[0] for p in parts])
        static = Ops(space[op_rows], *(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3)),
                     np.concatenate([np.full(len(p[0]), p[4], np.int8) for p in parts]))
        brk = np.flatnonzero(kind == _K["brk"])
        brk_space, brk_seq, brk_top = space[brk], 2 * g[brk], up(ret[brk].astype(np.uint64))
        h = np.flatnonzero((kind == _K["map"]) & heap)
        for s, top in zip(space[h].tolist(), (lo[h] + up(length[h])).tolist()):
            if self._top_from.get(s) == "brk":       # its first brk replayed without it
                self.invalid = "a [heap] end after a brk"
                return
            if self._top_from.get(s) != "fork":      # a child's break is its parent's
                self._top[s], self._top_from[s] = top, "heap"

        end = np.array(self._end, np.int64)
        level_of = np.array(self._level, np.int64)
        live = self._live
        levels = np.unique(level_of[np.r_[static.space, brk_space, live.space, kids]])
        done: list[Ops] = []                       # the replays, window by window
        new_live: list[Ops] = []
        for level in levels.tolist():
            mine = level_of == level
            k = np.flatnonzero(mine[kids]) if len(kids) else _NONE
            tops = tops_at(brk_space, brk_seq, brk_top, kids[k], parent[k], 2 * fork_row[k],
                            self._top)
            self._top.update(tops)
            self._top_from.update(dict.fromkeys(tops, "fork"))
            b = mine[brk_space]
            o = Ops.concat([live.where(mine[live.space]), static.where(mine[static.space]),
                            brk_ops(brk_space[b], brk_seq[b], brk_top[b], self._top),
                            *(d.inherit(kids[k], parent[k], fork_row[k]) for d in done)])
            windows = peaks_replay.windows(o, end)
            done.extend(windows)
            w = windows[-1]
            alive = np.unique(w.space)
            alive = alive[end[alive] < 0]
            q, lo_, hi_ = w.live(alive, np.full(len(alive), 2 * (first + n)))
            new_live.append(Ops(alive[q], np.full(len(q), -1), lo_, hi_, np.ones(len(q), np.int8)))
        # the ops of this step (not the ranges carried into it, seq -1)
        ops = Ops.concat([d.where((np.arange(len(d.seq)) >= d.carried) & (d.seq >= 0))
                          for d in done])
        e = end[ops.space]
        if ((e >= 0) & (e < first)).any():          # a space that ended in a step before
            self.invalid = "a row of an address space that had ended"
            return
        self._peaks(ops, ts, first, ended)
        self._live = Ops.concat(new_live)
        if len(brk):       # each space's break: its last call's
            o = np.lexsort((brk_seq, brk_space))
            last = np.r_[brk_space[o][1:] != brk_space[o][:-1], True]
            tops = dict(zip(brk_space[o][last].tolist(), brk_top[o][last].tolist()))
            self._top.update(tops)
            self._top_from.update(dict.fromkeys(tops, "brk"))
        self.rows = first + n

    def _spaces(self, kind, pid, child, flags, g) -> tuple:
        """Each row's space, the spaces the step's forks start (kids: their
        parents and rows) and the spaces that end in the step."""
        base = {}
        for p in np.unique(pid).tolist():          # at the step's start
            if p not in self._space:
                self._space[p] = self._new(p, self._epoch.get(p, 0), 0, -1)
            base[p] = self._space[p]
        ev = np.flatnonzero((kind == _K["fork"]) | (kind == _K["exec"]))
        is_fork = kind[ev] == _K["fork"]
        ev_pid = np.where(is_fork, child[ev], pid[ev])
        ev_space = np.zeros(len(ev), np.int64)
        kids, parent, fork_row, ended = [], [], [], []
        for j, (r, p, fork) in enumerate(zip(ev.tolist(), ev_pid.tolist(), is_fork.tolist())):
            epoch = self._epoch.get(p, 0) + 1
            self._epoch[p] = epoch
            if fork:
                par = self._space[int(pid[r])]
                s = self._new(p, epoch, self._level[par] + 1, -1)
                kids.append(s), parent.append(par), fork_row.append(int(g[r]))
            else:
                left = self._space.get(p)
                if left is not None and self._end[left] < 0:   # the space the exec leaves
                    self._end[left] = int(g[r])
                    ended.append(left)
                s = self._new(p, epoch, 0, int(g[r]))
            self._space[p] = ev_space[j] = s
        # every row's: its process's last fork or exec at or before it, else its base
        size = len(kind) + 1
        key = ev_pid * size + ev
        o = np.argsort(key, kind="stable")
        pos = np.searchsorted(key[o], pid * size + np.arange(len(kind)), "right") - 1
        hit = (pos >= 0) & (ev_pid[o][np.maximum(pos, 0)] == pid) if len(ev) else \
            np.zeros(len(kind), bool)
        u, inv = np.unique(pid, return_inverse=True)
        space = np.array([base[p] for p in u.tolist()], np.int64)[inv] if len(pid) else _NONE
        if len(ev):
            space = np.where(hit, ev_space[o][np.maximum(pos, 0)], space)
        ext = np.flatnonzero((kind == _K["exit"])
                             & ((flags & np.uint64(C["MT_EXIT_GROUP_DEAD"])) != 0))
        for s, r in zip(space[ext].tolist(), g[ext].tolist()):
            if self._end[s] < 0:
                self._end[s] = r
                ended.append(s)
        a = lambda v: np.array(v, np.int64)
        return space, a(kids), a(parent), a(fork_row), a(ended)

    def _peaks(self, ops: Ops, ts: np.ndarray, first: int, ended: np.ndarray) -> None:
        """Each space's peak and the tree's, from the step's ops (pages)."""
        delta = np.rint(ops.delta).astype(np.int64)
        sums = np.array(self._sum, np.int64)
        o = np.lexsort((ops.seq, ops.space))
        s, q, d = ops.space[o], ops.seq[o], delta[o]
        if len(s):
            cs = np.cumsum(d)
            head = np.r_[True, s[1:] != s[:-1]]
            start = np.maximum.accumulate(np.where(head, np.arange(len(s)), 0))
            value = sums[s] + cs - np.where(start > 0, cs[np.maximum(start - 1, 0)], 0)
            pick = np.lexsort((np.arange(len(s)), -value, s))
            heads = pick[np.r_[True, s[pick][1:] != s[pick][:-1]]]
            for i in heads.tolist():
                sp, v = int(s[i]), int(value[i])
                if sp not in self._best or v > self._best[sp][0]:
                    self._best[sp] = (v, int(ts[q[i] // 2 - first]))
            sums += np.bincount(s, weights=d, minlength=len(sums)).astype(np.int64)
            self._sum = sums.tolist()
        # the tree: every op's change, and each space's pages gone at its end
        seq = np.concatenate([ops.seq, 2 * np.array([self._end[x] for x in ended], np.int64)])
        o = np.argsort(seq, kind="stable")
        tree = self._tree + np.cumsum(np.concatenate([delta, -sums[ended]])[o])
        if len(tree):
            i = int(np.argmax(tree))
            if self._tree_best is None or tree[i] > self._tree_best[0]:
                self._tree_best = (int(tree[i]), int(ts[seq[o][i] // 2 - first]))
            self._tree = int(tree[-1])

    def result(self) -> tuple[dict, tuple]:
        """pid -> (peak bytes, its ts) and the tree's (bytes, ts or None)."""
        per_pid: dict[int, tuple] = {}
        for s in sorted(self._best, key=lambda s: self._key[s]):
            p, (v, ts) = self._key[s][0], self._best[s]
            if p not in per_pid or v * self.page > per_pid[p][0]:
                per_pid[p] = (v * self.page, ts)
        if self._tree_best is None:
            return per_pid, (0, None)
        return per_pid, (self._tree_best[0] * self.page, self._tree_best[1])
