"""The address-space model's replay loop: the events that change mappings,
applied in trace order to per-process sorted lists of mappings, the way the
kernel's mm code changes its VMA tree, recording one *version* per maximal
period during which a mapping stayed the same.

Only address-space-changing events pass through this loop (syscalls, exec,
fork, exit, maps snapshots, and faults that may grow the stack): faults are
attributed afterwards, in bulk (tracer.as_faults).

Positions: every change has a *boundary* `bnd`; a fault at row position q
(key 2q+1) sees every version born at bnd <= 2q+1 and not dead at bnd <=
2q+1. A change at row p has bnd 2p+1 (faults after it see it); a stack
growth caused by the fault at row q has bnd 2q (that fault sees the grown
stack, as the kernel's expand_stack runs inside the fault).

Versions get provisional ids here (Map.vid); the final vma_id orders them by
bnd (tracer.as_versions), which is the order of this loop except where a
fast path made versions ahead of time: a run of brk calls that only move
the heap's end (Core.brk_run) and the mmap chains of tracer.as_chains.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

from tracer import vma_kinds as vk

BY = vk.BY
# change types of the loop (CHECK: a range a fast path needs free, tracer.as_chains)
MMAP, MUNMAP, MREMAP, MPROTECT, BRK, FORK, THREAD, EXEC, EXIT, SNAP, GROW, CHECK = range(12)
STATE_UNKNOWN, STATE_PARTIAL, STATE_COMPLETE = 0, 1, 2
ROW_COLS = ("vid", "pid", "start", "end", "prot", "shared", "file", "off", "fd", "lin", "ts", "bnd",
            "by", "cause", "parent")


class Map:
    """A current mapping of the model (a VMA)."""
    __slots__ = ("start", "end", "prot", "shared", "file", "path", "off", "inode",
                 "fd", "gd", "lin", "vid")

    def clone(self, start: int, end: int, prot: int | None = None) -> "Map":
        n = Map()
        n.start, n.end = start, end
        n.prot = self.prot if prot is None else prot
        n.shared, n.file, n.path, n.inode, n.fd = self.shared, self.file, self.path, self.inode, self.fd
        # vm_pgoff moves with the start for file (and shmem) mappings; /proc
        # shows 0 for private anonymous ones (show_map_vma)
        n.off = self.off + (start - self.start) if self.file else 0
        n.gd, n.lin = self.gd, self.lin
        return n


class Proc:
    __slots__ = ("starts", "maps", "state", "heap_start", "brk")

    def __init__(self, state: int = STATE_UNKNOWN):
        self.starts: list[int] = []
        self.maps: list[Map] = []
        self.state = state
        self.heap_start: int | None = None
        self.brk: int | None = None


class Core:
    """Versions and the per-process sorted lists, and the memory syscalls."""

    def __init__(self, page: int, stack_limit: int, guard_gap: int) -> None:
        self.page = page
        self.stack_limit = stack_limit
        self.guard_gap = guard_gap
        self.procs: dict[int, Proc] = {}
        self.rows: list[tuple] = []        # one per version made here: ROW_COLS
        self.nv = 0                        # provisional version ids given so far
        self.vpath: list = []              # by provisional id: names a snapshot may fill in
        self.vinode: list = []
        self.dead: dict[int, tuple] = {}   # vid -> (ts, bnd, by) of its end
        self.lin_bnd: list[int] = []       # by lineage: bnd of its first version
        self.mmap_lin: dict[int, int] = {}  # row position of an mmap -> its lineage
        self.blocks: list[dict] = []       # versions made in bulk (brk_run), as arrays
        self.brk_log: list[tuple] = []     # (pid, pos, ts, heap bytes)
        self.brk_blocks: list[tuple] = []  # the same from brk_run, as arrays
        self.state_log: list[tuple] = []   # (pid, bnd, state)
        self.ts = self.bnd = self.pos = 0

    # ---- versions ----
    def _new(self, pid: int, m: Map, by: int, parent: int | None) -> None:
        m.vid = self.nv
        self.nv += 1
        self.rows.append((m.vid, pid, m.start, m.end, m.prot, m.shared, m.file, m.off, m.fd, m.lin,
                          self.ts, self.bnd, by, self.pos, parent))
        self.vpath.append(m.path)
        self.vinode.append(m.inode)

    def _kill(self, vid: int, by: int) -> None:
        self.dead[vid] = (self.ts, self.bnd, by)

    def _piece(self, pid: int, m: Map, s: int, e: int, by: int, prot: int | None = None) -> Map:
        n = m.clone(s, e, prot)
        self._new(pid, n, by, m.vid)
        return n

    def _lineage(self) -> int:
        self.lin_bnd.append(self.bnd)
        return len(self.lin_bnd) - 1

    def _state(self, pid: int, P: Proc | None, state: int) -> None:
        if P is not None:
            P.state = state
        self.state_log.append((pid, self.bnd, state))

    # ---- the sorted list of a process ----
    @staticmethod
    def _span(P: Proc, a: int, b: int) -> tuple[int, int]:
        """Index range of the mappings overlapping [a, b)."""
        i = bisect_right(P.starts, a) - 1
        if i < 0 or P.maps[i].end <= a:
            i += 1
        return i, bisect_left(P.starts, b, i)

    @staticmethod
    def _insert(P: Proc, m: Map) -> None:
        i = bisect_left(P.starts, m.start)
        P.starts.insert(i, m.start)
        P.maps.insert(i, m)

    @staticmethod
    def _at(P: Proc, addr: int) -> Map | None:
        i = bisect_right(P.starts, addr) - 1
        if i >= 0 and P.maps[i].end > addr:
            return P.maps[i]
        return None

    def carve(self, pid: int, P: Proc, a: int, b: int, by: int) -> list[Map]:
        """Unmap [a, b): the overlapped mappings end; the parts outside stay
        as new versions (mm/vma.c do_vmi_align_munmap splits the VMAs at the
        edges, then removes the middle). Returns the mappings that ended."""
        i, j = self._span(P, a, b)
        if i == j:
            return []
        gone = P.maps[i:j]
        keep = []
        for m in gone:
            self._kill(m.vid, by)
            if m.start < a:
                keep.append(self._piece(pid, m, m.start, a, by))
            if m.end > b:
                keep.append(self._piece(pid, m, b, m.end, by))
        P.maps[i:j] = keep
        P.starts[i:j] = [m.start for m in keep]
        return gone

    def clear(self, pid: int, P: Proc, by: int) -> None:
        for m in P.maps:
            self._kill(m.vid, by)
        P.maps, P.starts = [], []

    def _fresh(self, pid: int, P: Proc, a: int, b: int, prot: int, shared: bool, file: bool,
               path: str | None, off: int, inode: int | None, fd: int | None, gd: bool,
               by: int, lin: int | None = None) -> Map:
        m = Map()
        m.start, m.end, m.prot, m.shared, m.file, m.path = a, b, prot, shared, file, path
        m.off, m.inode, m.fd, m.gd = off, inode, fd, gd
        m.lin = self._lineage() if lin is None else lin
        self._new(pid, m, by, None)
        self._insert(P, m)
        return m

    def proc(self, pid: int) -> Proc:
        P = self.procs.get(pid)
        if P is None:   # syscalls of a process not known yet (before its attach snapshot)
            P = self.procs[pid] = Proc()
        return P

    # ---- syscalls ----
    def mmap(self, pid, length, prot, flags, fd, off, ret, path=None) -> None:
        """mm/mmap.c do_mmap -> mmap_region: the result `ret` is where the
        mapping went (hint taken or not, MAP_FIXED or not); whatever was
        there is unmapped first (only MAP_FIXED can overlap anything, and
        MAP_FIXED_NOREPLACE fails with EEXIST instead)."""
        if ret < 0:
            return
        P = self.proc(pid)
        a, b = ret, ret + vk.page_align(length, self.page)
        if b <= a:
            return
        self.carve(pid, P, a, b, BY["mmap"])
        anon = bool(flags & vk.MAP_ANONYMOUS)
        shared = (flags & vk.MAP_TYPE) in (vk.MAP_SHARED, vk.MAP_SHARED_VALIDATE)
        m = self._fresh(pid, P, a, b, prot & vk.PROT_MASK, shared, (not anon) or shared,
                        vk.SHARED_ANON if anon and shared else (None if anon else path),
                        0 if anon else off, None,
                        None if anon else fd, bool(flags & vk.MAP_GROWSDOWN), BY["mmap"])
        self.mmap_lin[self.pos] = m.lin

    def munmap(self, pid, addr, length, ret) -> None:
        """mm/mmap.c __vm_munmap -> do_vmi_munmap: holes split mappings; an
        unmapped range is not an error."""
        if ret != 0 or addr % self.page:
            return
        P = self.proc(pid)
        self.carve(pid, P, addr, addr + vk.page_align(length, self.page), BY["munmap"])

    def mprotect(self, pid, addr, length, prot, ret) -> None:
        """mm/mprotect.c do_mprotect_pkey -> mprotect_fixup: each VMA of the
        range whose protection changes is split at the range's edges (up to
        three pieces). A range with a hole fails with ENOMEM *after* changing
        the contiguous part from its start, so that part is applied."""
        if ret != 0 and ret != -vk.ENOMEM:
            return
        P = self.proc(pid)
        a, b = addr, addr + vk.page_align(length, self.page)
        i, j = self._span(P, a, b)
        if i == j:
            return
        maps = P.maps
        if prot & vk.PROT_GROWSDOWN and maps[i].gd and maps[i].start <= a:
            a = maps[i].start          # PROT_GROWSDOWN: down to the VMA's start
        if ret != 0:
            if maps[i].start > a:
                return                 # the start itself is unmapped: nothing changed
            k, e = i, maps[i].end
            while k + 1 < j and maps[k + 1].start == e:
                k += 1
                e = maps[k].end
            j, b = k + 1, min(b, e)
        prot &= vk.PROT_MASK
        out, changed, by = [], False, BY["mprotect"]
        for m in maps[i:j]:
            if m.prot == prot:
                out.append(m)
                continue
            changed = True
            self._kill(m.vid, by)
            s, e = max(a, m.start), min(b, m.end)
            if m.start < s:
                out.append(self._piece(pid, m, m.start, s, by))
            out.append(self._piece(pid, m, s, e, by, prot))
            if e < m.end:
                out.append(self._piece(pid, m, e, m.end, by))
        if changed:
            maps[i:j] = out
            P.starts[i:j] = [m.start for m in out]

    def mremap(self, pid, addr, length, new_len, flags, ret) -> None:
        """mm/mremap.c: shrink in place (unmap the tail), grow in place
        (vma_expand of the VMA ending at the old end), or move (move_vma /
        mremap_to: the old range goes, unless MREMAP_DONTUNMAP; the new range
        gets the same mapping with the offset it had at the old address).
        old_len 0 duplicates a shared mapping."""
        if ret < 0:
            return
        P = self.proc(pid)
        pg, by = self.page, BY["mremap"]
        old, new, a, r = vk.page_align(length, pg), vk.page_align(new_len, pg), addr, ret
        if new == 0:
            return
        if old == 0:
            src = self._at(P, a)
            self.carve(pid, P, r, r + new, by)
            if src is not None:
                n = src.clone(a, a + new)
                n.start, n.end = r, r + new
                self._new(pid, n, by, src.vid)
                self._insert(P, n)
            return
        if r == a:
            if new < old:
                self.carve(pid, P, a + new, a + old, by)
            elif new > old:
                last = self._at(P, a + old - 1)
                self.carve(pid, P, a + old, a + new, by)
                if last is not None and last.end == a + old:
                    i = bisect_left(P.starts, last.start)
                    self._kill(last.vid, by)
                    n = self._piece(pid, last, last.start, a + new, by)
                    P.maps[i] = n
                else:   # the source is not known: an anonymous read-write mapping
                    self._fresh(pid, P, a + old, a + new, 3, False, False, None, 0,
                                None, None, False, by)
            return
        i, j = self._span(P, a, a + old)
        src = [(m, max(m.start, a), min(m.end, a + old)) for m in P.maps[i:j]]
        if not flags & vk.MREMAP_DONTUNMAP:
            self.carve(pid, P, a, a + old, by)
        self.carve(pid, P, r, r + new, by)
        if not src:
            self._fresh(pid, P, r, r + new, 3, False, False, None, 0, None, None, False, by)
            return
        delta = r - a
        for k, (m, s, e) in enumerate(src):
            ns, ne = s + delta, min(e + delta, r + new)
            if k == len(src) - 1:
                ne = r + new           # growing while moving extends the last piece
            if ns >= ne:
                break
            n = m.clone(s, s + (ne - ns))
            n.start, n.end = ns, ne
            self._new(pid, n, by, m.vid)
            self._insert(P, n)

    def brk(self, pid, ret) -> None:
        """mm/mmap.c brk: the result is the new break (the old one if the
        call failed). Growing maps [PAGE_ALIGN(old), PAGE_ALIGN(new)) with
        do_brk_flags, which expands the heap VMA ending there; shrinking
        unmaps [PAGE_ALIGN(new), PAGE_ALIGN(old))."""
        if ret <= 0:
            return
        P = self.proc(pid)
        pg, by = self.page, BY["brk"]
        if P.heap_start is None:       # right after exec brk == start_brk
            P.heap_start = ret
        old = P.brk
        if old is None:                # break unknown (attach): the heap mapping's end
            h = self._at(P, P.heap_start)
            old = h.end if h is not None and h.path == vk.HEAP else ret
        oe, ne = vk.page_align(old, pg), vk.page_align(ret, pg)
        if ne > oe:
            self.carve(pid, P, oe, ne, by)
            i = bisect_left(P.starts, oe) - 1
            prev = P.maps[i] if i >= 0 else None
            if (prev is not None and prev.end == oe and prev.path == vk.HEAP and not prev.shared
                    and prev.prot == vk.PROT_READ | vk.PROT_WRITE):
                self._kill(prev.vid, by)
                P.maps[i] = self._piece(pid, prev, prev.start, ne, by)
            else:
                self._fresh(pid, P, oe, ne, vk.PROT_READ | vk.PROT_WRITE, False, False,
                            vk.HEAP, 0, None, None, False, by)
        elif ne < oe:
            self.carve(pid, P, ne, oe, by)
        P.brk = ret
        self.brk_log.append((pid, self.pos, self.ts, ret - P.heap_start))

    # ---- a run of brk calls in bulk ----
    def heap_top(self, pid: int) -> tuple | None:
        """(P, i, m, next start) if pid's break is known and the mapping
        ending at it is the heap a brk would extend (P.maps[i] = m), else None."""
        P = self.procs.get(pid)
        if P is None or P.brk is None or P.heap_start is None:
            return None
        oe = vk.page_align(P.brk, self.page)
        i = bisect_left(P.starts, oe) - 1
        if i < 0:
            return None
        m = P.maps[i]
        if (m.end != oe or m.path != vk.HEAP or m.shared
                or m.prot != vk.PROT_READ | vk.PROT_WRITE):
            return None
        return P, i, m, P.starts[i + 1] if i + 1 < len(P.starts) else None

    def brk_run(self, pid: int, P: Proc, i: int, m: Map, pos: np.ndarray, ts: np.ndarray,
                bnd: np.ndarray, ret: np.ndarray) -> None:
        """Successful brk calls of pid (arrays, in order) that, as the caller
        checked (tracer.as_touch.BrkRuns), only move the end of the heap
        mapping m = P.maps[i] and never to or below its start: what brk()
        would do call by call, each new end a new version of m. All but the
        last version are dead by the end of the run: they go to a block of
        arrays; the last is an ordinary version."""
        by, pg = BY["brk"], np.uint64(self.page - 1)
        e = (ret.astype(np.uint64) + pg) & ~pg
        prev = np.concatenate([[np.uint64(m.end)], e[:-1]])
        ch = np.flatnonzero(e != prev)
        self.brk_blocks.append((np.full(len(pos), pid, np.int64), pos.astype(np.int64),
                                ts.astype(np.uint64), ret.astype(np.float64) - P.heap_start))
        P.brk = int(ret[-1])
        if not len(ch):
            return
        self.dead[m.vid] = (int(ts[ch[0]]), int(bnd[ch[0]]), by)
        nb = len(ch) - 1
        base = self.nv
        ids = np.arange(base, base + nb, dtype=np.int64)
        if nb:
            b = ch[:-1]
            self.blocks.append({
                "vid": ids, "pid": np.full(nb, pid, np.int64),
                "start": np.full(nb, m.start, np.uint64), "end": e[b],
                "prot": np.full(nb, m.prot, np.int64), "shared": np.full(nb, m.shared, bool),
                "file": np.full(nb, m.file, bool),
                "off": np.full(nb, m.off if m.file else 0, np.uint64),
                "fd": np.full(nb, -1 if m.fd is None else m.fd, np.int64),
                "fd_ok": np.full(nb, m.fd is not None, bool),
                "lin": np.full(nb, m.lin, np.int64), "ts": ts[b].astype(np.uint64),
                "bnd": bnd[b].astype(np.int64), "by": np.full(nb, by, np.int64),
                "cause": pos[b].astype(np.int64),
                "parent": np.concatenate([[m.vid], ids[:-1]]).astype(np.int64),
                "d_ts": ts[ch[1:]].astype(np.uint64), "d_bnd": bnd[ch[1:]].astype(np.int64),
                "d_by": np.full(nb, by, np.int64)})
            self.nv += nb
            self.vpath.extend([m.path] * nb)
            self.vinode.extend([m.inode] * nb)
        last = int(ch[-1])
        self.ts, self.bnd, self.pos = int(ts[last]), int(bnd[last]), int(pos[last])
        n = m.clone(m.start, int(e[last]))
        self._new(pid, n, by, int(ids[-1]) if nb else m.vid)
        P.maps[i] = n
