"""Small stories told by the trace, step by step between the workloads'
markers (tests/workloads/common.h): seed003 (read then write faults on fresh
anonymous pages) and seed000 (what malloc and free do in syscalls)."""
from __future__ import annotations

import pytest

from memtrace_helpers import (
    between, exec_pid, faults_of, ints, kinds, map_line, marker_ts, run_memtrace,
)
from strace_parse import MEMORY_SYSCALLS

pytestmark = pytest.mark.live

PAGE = 4096
KiB = 1024


def _syscalls(rows):
    """The memory syscall rows (markers excluded: between() drops the two
    bounding markers, and a step has no other marker)."""
    return rows[kinds(rows).isin(MEMORY_SYSCALLS)]


def _describe(rows) -> str:
    cols = [c for c in ("ts", "tid", "kind", "addr", "len", "ret", "error_code", "rss_anon")
            if c in rows]
    return rows[cols].to_string()


def test_seed003_read_then_write_faults(workloads, tmp_path):
    proc, t = run_memtrace(["--", workloads["seed003"]], tmp_path)
    ev = t.events
    assert t.meta.get("lost") == 0
    pid = exec_pid(ev, "seed003")
    addr, length = map_line(proc.stderr)
    assert length == 4 * PAGE
    pages = [addr + i * PAGE for i in range(4)]

    # step 1: the mmap
    step1 = _syscalls(between(ev, pid, 1, 2))
    assert kinds(step1).tolist() == ["mmap"], _describe(step1)
    assert ints(step1["ret"]) == [addr] and ints(step1["len"]) == [length]

    # step 2: 4 read faults, one per page, in order: the zero page, no new RSS
    step2 = between(ev, pid, 2, 3)
    reads = faults_of(step2)
    assert len(_syscalls(step2)) == 0, _describe(step2)
    assert len(reads) == 4, "expected exactly 4 faults (reads):\n" + _describe(reads)
    assert [a & ~(PAGE - 1) for a in ints(reads["addr"])] == pages, _describe(reads)
    assert not reads["major"].astype(bool).any()
    assert all(ec & 2 == 0 for ec in ints(reads["error_code"])), "a read fault has the write bit"
    assert ints(reads["rss_anon"]) == [0, 0, 0, 0], _describe(reads)

    # step 3: 4 write faults, one per page, in order: a new anonymous page each
    step3 = between(ev, pid, 3, 4)
    writes = faults_of(step3)
    assert len(_syscalls(step3)) == 0, _describe(step3)
    assert len(writes) == 4, "expected exactly 4 faults (writes):\n" + _describe(writes)
    assert [a & ~(PAGE - 1) for a in ints(writes["addr"])] == pages, _describe(writes)
    assert not writes["major"].astype(bool).any()
    assert all(ec & 2 for ec in ints(writes["error_code"])), "a write fault without the write bit"
    assert ints(writes["rss_anon"]) == [1, 1, 1, 1], _describe(writes)

    # step 4: the munmap
    step4 = _syscalls(between(ev, pid, 4, 5))
    assert kinds(step4).tolist() == ["munmap"], _describe(step4)
    assert ints(step4["addr"]) == [addr] and ints(step4["len"]) == [length]

    # the same through the address-space frames: one mapping, made by that
    # mmap, holding all 8 faults (4 read, 4 write) on 4 distinct pages
    vmas = t.vmas[(t.vmas["pid"] == pid) & (t.vmas["start"] == addr)]
    assert len(vmas) == 1, vmas
    v = vmas.iloc[0]
    assert (v["end"] - v["start"], v["created_by"], v["destroyed_by"]) == (length, "mmap", "munmap")
    assert (v["faults"], v["read"], v["write"], v["minor"], v["major"]) == (8, 4, 4, 8, 0)
    assert v["pages_touched"] == 4 and v["rss_pages"] == 4
    mine = t.faults[t.faults["vma_id"] == v["vma_id"]]
    assert len(mine) == 8 and set(mine["access"].astype(str)) == {"read", "write"}


def test_seed000_malloc_story(workloads, tmp_path):
    proc, t = run_memtrace(["--", workloads["seed000"]], tmp_path)
    ev = t.events
    assert t.meta.get("lost") == 0
    pid = exec_pid(ev, "seed000")
    step = {n: between(ev, pid, n, n + 1) for n in range(1, 9)}
    sc = {n: _syscalls(rows) for n, rows in step.items()}

    def only(n: int, kind: str):
        rows = sc[n]
        assert kinds(rows).tolist() == [kind], (
            f"step {n}: expected one {kind}, got:\n{_describe(rows)}")
        return rows.iloc[0]

    # the break before step 1 (malloc's set-up in step 0 queried and moved it)
    brks = ev[(ev["pid"] == pid) & (kinds(ev) == "brk")]
    before = brks[brks["ts"] < marker_ts(ev, pid, 1)]
    assert len(before) >= 1, "no brk before step 1 (malloc's set-up in step 0)"
    b0 = int(before["ret"].iloc[-1])

    a = only(1, "brk")          # A = malloc(30 KiB): the heap grows
    b = only(2, "brk")          # B = malloc(40 KiB): grows again
    c = only(3, "mmap")         # C = malloc(200 KiB): its own mapping
    d = only(4, "brk")          # D = malloc(100 KiB): grows again
    assert b0 < int(a["ret"]) < int(b["ret"]) < int(d["ret"]), (b0, a["ret"], b["ret"], d["ret"])
    for r in (a, b, d):
        assert int(r["ret"]) == int(r["addr"]), "a successful brk returns the break asked for"
    # each grows by the request less what was left at the top (< a page)
    assert int(a["ret"]) - b0 > 30 * KiB - PAGE
    assert int(b["ret"]) - int(a["ret"]) > 40 * KiB - PAGE
    assert int(d["ret"]) - int(b["ret"]) > 100 * KiB - PAGE
    assert int(c["len"]) >= 200 * KiB and int(c["ret"]) > 0

    # step 5: touching them: faults, no syscall
    assert len(sc[5]) == 0, _describe(sc[5])
    assert len(faults_of(step[5])) > 0

    # step 6: free(C) unmaps exactly C's mapping
    u = only(6, "munmap")
    assert (int(u["addr"]), int(u["len"])) == (int(c["ret"]), int(c["len"]))
    assert int(u["ret"]) == 0

    # step 7: free(B): nothing (B is not at the top of the heap)
    assert len(sc[7]) == 0, _describe(sc[7])

    # step 8: free(D): B, D and the top merge; the heap is trimmed back to A's end
    s = only(8, "brk")
    assert int(s["ret"]) < int(d["ret"])
    assert int(s["ret"]) == int(a["ret"]), "the heap shrinks back to just after A"
