"""The address-space model, continued: process events (fork, exit, exec),
/proc/PID/maps snapshots, and stack growth by faults. See tracer.as_model
for the versions and the memory syscalls; which mmaps were thread stacks is
found from the event order alone (tracer.as_touch.thread_stacks).
"""
from __future__ import annotations

from bisect import bisect_right

from tracer import vma_kinds as vk
from tracer.as_model import (BY, STATE_COMPLETE, STATE_PARTIAL, STATE_UNKNOWN, Core, Map,
                             Proc)


class Line:
    """One line of a maps snapshot."""
    __slots__ = ("start", "end", "prot", "shared", "path", "off", "inode", "pos")

    def __init__(self, start, end, prot, shared, path, off, inode, pos):
        self.start, self.end, self.prot, self.shared = start, end, prot, shared
        self.path, self.off, self.inode, self.pos = path, off, inode, pos


def _strip_deleted(p: str) -> str:
    return p[:-10] if p.endswith(" (deleted)") else p


def compatible(m: Map, ln: Line) -> bool:
    """Does the model's mapping m agree with the snapshot line ln over their
    common range (the snapshot knows names the events do not carry)?"""
    if m.prot != ln.prot or m.shared != ln.shared:
        return False
    lp = ln.path
    if vk.has_file(lp):
        if not m.file or m.off - m.start != ln.off - ln.start:
            return False
        return m.path is None or _strip_deleted(m.path) == _strip_deleted(lp)
    if m.file:
        return False
    if lp is None or lp == vk.HEAP or lp.startswith("[anon:"):
        return m.path in (None, vk.HEAP) or m.path == lp
    return m.path == lp


class Model(Core):
    """Core plus the process events and snapshots."""

    def fork(self, pid, child) -> None:
        """kernel/fork.c dup_mmap: the child gets a copy of every VMA."""
        P = self.procs.get(pid)
        C = self.procs.get(child)
        if C is not None:              # a reused pid whose exit we did not see
            self.clear(child, C, BY["exit"])
        C = self.procs[child] = Proc()
        self._state(child, C, P.state if P is not None else STATE_UNKNOWN)
        if P is None:
            return
        C.heap_start, C.brk = P.heap_start, P.brk
        for m in P.maps:
            n = m.clone(m.start, m.end)
            self._new(child, n, BY["fork"], m.vid)
            C.maps.append(n)
        C.starts = list(P.starts)
        if C.brk is not None:
            self.brk_log.append((child, self.pos, self.ts, C.brk - C.heap_start))

    def exit(self, pid, flags) -> None:
        """kernel/exit.c: the last thread's exit_mm drops the address space."""
        if not flags & vk.EXIT_GROUP_DEAD:
            return
        P = self.procs.pop(pid, None)
        if P is not None:
            self.clear(pid, P, BY["exit"])
            if P.brk is not None:
                self.brk_log.append((pid, self.pos, self.ts, None))
        self._state(pid, None, STATE_UNKNOWN)

    def exec(self, pid, base: list[Line] | None, heap: tuple | None) -> None:
        """fs/exec.c exec_mmap: a new mm replaces the whole address space. Its
        mappings are those of the snapshot read after the exec, less what
        the syscalls between the exec and the snapshot made (they are
        replayed); `base` is that difference, `heap` (start, break)."""
        P = self.procs.get(pid)
        if P is not None:
            self.clear(pid, P, BY["exec"])
        P = self.procs[pid] = Proc()
        self._state(pid, P, STATE_PARTIAL if base is None else STATE_COMPLETE)
        if base is None:
            self.brk_log.append((pid, self.pos, self.ts, None))
            return
        for ln in base:
            self._fresh(pid, P, ln.start, ln.end, ln.prot, ln.shared, vk.has_file(ln.path),
                        ln.path, ln.off, ln.inode, None, ln.path == vk.STACK, BY["exec"])
        if heap is not None:
            P.heap_start, P.brk = heap
        self.brk_log.append((pid, self.pos, self.ts,
                             None if P.brk is None else P.brk - P.heap_start))

    def snapshot(self, pid: int, lines: list[Line], by: int) -> None:
        """Make the model agree with a /proc/PID/maps reading. Runs of lines the
        kernel would show merged are compared with the model's mappings
        there: if these tile the run and agree line by line, they stay (and
        learn the names the snapshot shows); otherwise the run's lines
        replace them. Mappings where the snapshot has none end."""
        P = self.proc(pid)
        runs: list[list[Line]] = []
        for ln in lines:
            if runs and vk.mergeable(runs[-1][-1], ln):
                runs[-1].append(ln)
            else:
                runs.append([ln])
        drop: list[tuple[int, int]] = []
        redo: list[list[Line]] = []
        lo = 0
        for run in runs:
            ks, ke = run[0].start, run[-1].end
            if lo < ks:
                drop.append((lo, ks))
            lo = ke
            i, j = self._span(P, ks, ke)
            maps = P.maps[i:j]
            ok = bool(maps) and maps[0].start == ks and maps[-1].end == ke and all(
                maps[k].end == maps[k + 1].start for k in range(len(maps) - 1))
            fills = []
            if ok:
                li = 0
                for m in maps:
                    while run[li].end <= m.start:
                        li += 1
                    k = li
                    while k < len(run) and run[k].start < m.end:
                        if not compatible(m, run[k]):
                            ok = False
                            break
                        k += 1
                    if not ok:
                        break
                    fills.append((m, run[li]))
            if ok:
                for m, ln in fills:
                    if ln.path is not None and m.path != ln.path and not (
                            m.path == vk.HEAP and not vk.has_file(ln.path)):
                        m.path = self.vpath[m.vid] = ln.path
                    if m.inode is None and ln.inode:
                        m.inode = self.vinode[m.vid] = ln.inode
            else:
                drop.append((ks, ke))
                redo.append(run)
        drop.append((lo, 1 << 64))
        merged: list[list[int]] = []
        for a, b in drop:
            if merged and merged[-1][1] == a:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        for a, b in merged:
            self.carve(pid, P, a, b, by)
        pos = self.pos
        for run in redo:
            for ln in run:
                self.pos = ln.pos
                self._fresh(pid, P, ln.start, ln.end, ln.prot, ln.shared, vk.has_file(ln.path),
                            ln.path, ln.off, ln.inode, None, ln.path == vk.STACK, by)
        self.pos = pos
        heap = [ln for ln in lines if ln.path == vk.HEAP]
        if heap and P.heap_start is None:
            P.heap_start = heap[0].start
        if heap and P.brk is None:
            P.brk = heap[-1].end
            self.brk_log.append((pid, self.pos, self.ts, P.brk - P.heap_start))
        self._state(pid, P, STATE_COMPLETE)

    def grow_stack(self, pid: int, addr: int) -> None:
        """mm/mmap.c expand_downwards, from the fault handler
        (lock_mm_and_find_vma -> expand_stack): a fault below a VM_GROWSDOWN
        mapping extends it down to the faulting page, if the stack stays
        within RLIMIT_STACK (acct_stack_growth) and keeps stack_guard_gap
        from an accessible mapping below."""
        P = self.procs.get(pid)
        if P is None:
            return
        i = bisect_right(P.starts, addr) - 1
        if i >= 0 and P.maps[i].end > addr:
            return                     # mapped: an ordinary fault
        if i + 1 >= len(P.maps):
            return
        st = P.maps[i + 1]
        a = addr - addr % self.page
        if not st.gd or st.end - a > self.stack_limit:
            return
        if i >= 0:
            prev = P.maps[i]
            if not prev.gd and prev.prot and a - prev.end < self.guard_gap:
                return
        self._kill(st.vid, BY["stack_growth"])
        n = self._piece(pid, st, a, st.end, BY["stack_growth"])
        P.maps[i + 1] = n
        P.starts[i + 1] = a
