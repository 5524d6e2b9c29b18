"""The replay loop of the address-space model: the entries (changes,
snapshots, stack-growth candidates, in boundary order) applied one by one to
tracer.as_process.Model, except what the fast paths replay in bulk: the
mmap chains of tracer.as_chains (out of the loop; a CHECK entry where a
chain takes a range) and runs of brk calls (Core.brk_run, found here when
the loop reaches their first call).
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np

from tracer import as_chains, as_touch
from tracer import as_model as am
from tracer import as_process as ap
from tracer import vma_kinds as vk

_BRK_COLS = ("pos", "ts", "pid", "ret")      # what the loop reads of a brk row


class Replay:
    """The loop over the entries (address_space.build's arrays), with the
    fast paths when asked."""

    def __init__(self, c, snaps, bases, ebnd, etype, eref, epid, fidx, f_pid, f_addr, f_key,
                 f_ts, page, stack_limit, gap) -> None:
        self.c, self.snaps, self.bases = c, snaps, bases
        self.ebnd, self.etype, self.eref, self.epid = ebnd, etype, eref, epid
        self.fidx, self.f_pid, self.f_addr, self.f_key = fidx, f_pid, f_addr, f_key
        self.f_ts = f_ts
        self.page, self.stack_limit, self.gap = page, stack_limit, gap
        self.T = self.runs = None

    def prepare(self, stack_hi: dict) -> None:
        """The touch records and the brk index of the fast paths."""
        c, etype, eref, epid = self.c, self.etype, self.eref, self.epid
        self.T = as_touch.entry_touches(etype, eref, epid, c, self.f_addr, stack_hi,
                                        self.page, self.gap)
        b = np.flatnonzero(etype == am.BRK)
        b = b[c["ret"][eref[b]] > 0]
        self.runs = as_touch.BrkRuns(self.T, b, epid[b], c["ret"][eref[b]], self.page)

    def run(self, fast: bool, exclude: set):
        """(model, chains, mmap entries whose chain found its range taken)."""
        etype, eref, epid, ebnd = self.etype, self.eref, self.epid, self.ebnd
        chains = as_chains.Chains()
        if fast:
            chains = as_chains.find(etype, eref, epid, ebnd, self.c, self.T, self.page, exclude)
        # the loop's entries: all but the chains', plus a CHECK per range a chain takes
        keep = np.ones(len(etype), bool)
        keep[chains.entries] = False
        ent = np.concatenate([np.flatnonzero(keep), chains.acq_ent])
        typ = np.concatenate([etype[keep], np.full(len(chains.acq_ent), am.CHECK)])
        ref = np.concatenate([eref[keep], np.arange(len(chains.acq_ent))])
        o = np.argsort(ent, kind="stable")
        ent, typ, ref = ent[o], typ[o], ref[o]
        # the loop reads scalars: Python lists of its own rows only are much
        # faster to index than numpy arrays; brk rows (last) need few columns
        ch = np.flatnonzero(typ < am.SNAP)
        ch = np.concatenate([ch[typ[ch] != am.BRK], ch[typ[ch] == am.BRK]])
        rows = ref[ch]
        other = rows[:int((typ[ch] != am.BRK).sum())]
        c = {k: ([v[x] for x in other.tolist()] if k == "path" else
                 v[rows if k in _BRK_COLS else other].tolist()) for k, v in self.c.items()}
        ref[ch] = np.arange(len(ch))
        return self._loop(ent.tolist(), typ.tolist(), ref.tolist(), c, chains, fast)

    def _loop(self, ent, typ, ref, c, chains, fast):
        snaps, bases = self.snaps, self.bases
        ebnd = self.ebnd.tolist()
        fidx, f_pid, f_addr, f_ts = self.fidx, self.f_pid, self.f_addr, self.f_ts
        M = ap.Model(self.page, self.stack_limit, self.gap)
        skip = bytearray(len(ebnd))
        failed: set = set()
        # per CHECK: (pid, lo, hi, the chain's mmap entry)
        checks = list(zip(self.epid[chains.acq_ent].tolist(), chains.acq_lo.tolist(),
                          chains.acq_hi.tolist(), chains.start[chains.acq_chain].tolist()))
        runs = self.runs if fast else None
        procs = M.procs
        CHECK = am.CHECK
        for k, t, r in zip(ent, typ, ref):
            if t == CHECK:
                # is [lo, hi) free? (Core._span, inline: one per chain call)
                pid, lo, hi, first = checks[r]
                P = procs.get(pid) or M.proc(pid)
                starts = P.starts
                i = bisect_right(starts, lo) - 1
                if (i >= 0 and P.maps[i].end > lo) or (i + 1 < len(starts)
                                                       and starts[i + 1] < hi):
                    failed.add(first)
                continue
            if skip[k]:
                continue
            M.bnd = ebnd[k]
            if t == am.GROW:
                M.pos, M.ts = int(fidx[r]), int(f_ts[r])
                M.grow_stack(int(f_pid[r]), int(f_addr[r]))
                continue
            if t == am.SNAP:
                pid, ts, cause, lines = snaps[r]
                M.pos, M.ts = r, ts
                M.snapshot(pid, lines, vk.BY.get(cause, vk.BY["attach"]))
                continue
            M.pos, M.ts, pid = c["pos"][r], c["ts"][r], c["pid"][r]
            if t == am.MMAP:
                M.mmap(pid, c["len"][r], c["prot"][r], c["flags"][r], c["fd"][r],
                       c["off"][r], c["ret"][r], c["path"][r])
            elif t == am.MUNMAP:
                M.munmap(pid, c["addr"][r], c["len"][r], c["ret"][r])
            elif t == am.MPROTECT:
                M.mprotect(pid, c["addr"][r], c["len"][r], c["prot"][r], c["ret"][r])
            elif t == am.BRK:
                if runs is not None and c["ret"][r] > 0 and self._brk_run(M, runs, k, pid, skip):
                    continue
                M.brk(pid, c["ret"][r])
            elif t == am.MREMAP:
                M.mremap(pid, c["addr"][r], c["len"][r], c["new_len"][r],
                         c["flags"][r], c["ret"][r])
            elif t == am.FORK:
                M.fork(pid, c["child"][r])
            elif t == am.EXEC:
                base = bases.get(k)
                M.exec(pid, *(base if base is not None else (None, None)))
            elif t == am.EXIT:
                M.exit(pid, c["flags"][r])
        return M, chains, failed

    def _brk_run(self, M, runs, k, pid, skip) -> bool:
        """Replays the run of brk calls of pid starting at entry k in bulk if
        it has at least two calls (Core.brk_run); marks the rest to skip."""
        top = M.heap_top(pid)
        if top is None:
            return False
        P, i, m, nxt = top
        j0, j1 = runs.extent(pid, k, m.start, m.end, nxt)
        if j1 - j0 < 2 or runs.ent[j0] != k:
            return False
        e = runs.ent[j0:j1]
        r = self.eref[e]
        M.brk_run(pid, P, i, m, self.c["pos"][r], self.c["ts"][r], self.ebnd[e], runs.ret[j0:j1])
        for x in e[1:].tolist():
            skip[x] = 1
        return True
