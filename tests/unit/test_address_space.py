"""The address-space model on hand-built event tables: one test per rule."""
import numpy as np
import pandas as pd

from tracer import address_space as asp
from tracer import as_faults

from eventframes import (ANON, DONTUNMAP, FIXED, FIXED_NOREPLACE, MAP_STACK, MAYMOVE,
                         MREMAP_FIXED, PAGE, PRIVATE, R, RW, SHARED, W, X, Events)

A = 0x7f0000000000          # where the tests' mappings go
P = 100


def build(e: Events, **kw):
    return asp.build(e.frame(), **kw)


def alive(m, pid=P, ts=None):
    """(start, end, perms) of pid's mappings alive at ts (default: the end)."""
    ts = m.vmas["created"].max() if ts is None else ts
    df = m.maps_at(pid, ts)
    return [(int(s), int(e), p) for s, e, p in zip(df["start"], df["end"], df["perms"])]


def attach(e: Events, lines=(), pid=None):
    """An attach snapshot with a stack, vdso and the given lines."""
    base = [(0x400000, 0x401000, "r-xp", 0, "/usr/bin/prog"),
            (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]"),
            (0x7ffff7fc1000, 0x7ffff7fc3000, "r-xp", 0, "[vdso]")]
    return e.snapshot(sorted(list(lines) + base), cause="attach", pid=pid)


def versions(m, start=None):
    v = m.vmas
    return v if start is None else v[v["start"] == start]


# ---- mmap ----

def test_mmap_without_hint_rounds_length_up():
    e = Events()
    attach(e)
    i = e.mmap(A, 5000)
    m = build(e)
    v = versions(m, A).iloc[0]
    assert v["end"] - v["start"] == 2 * PAGE and v["created_by"] == "mmap"
    assert v["cause_event"] == i and pd.isna(v["parent_vma"]) and v["kind"] == "anon"
    assert v["perms"] == "rw-p" and pd.isna(v["destroyed"])


def test_mmap_hint_not_taken_follows_ret():
    e = Events()
    attach(e)
    e.mmap(A + 0x100000, PAGE, addr=A)          # the hint was busy: the kernel chose
    m = build(e)
    assert (A + 0x100000, A + 0x100000 + PAGE, "rw-p") in alive(m)
    assert not any(s == A for s, _, _ in alive(m))


def test_map_fixed_replaces_overlapped_parts():
    e = Events()
    attach(e)
    e.mmap(A, 10 * PAGE, prot=R, flags=PRIVATE, fd=3, off=0)
    e.mmap(A + 2 * PAGE, 3 * PAGE, addr=A + 2 * PAGE, flags=PRIVATE | ANON | FIXED)
    m = build(e)
    got = [x for x in alive(m) if A <= x[0] < A + 10 * PAGE]
    assert got == [(A, A + 2 * PAGE, "r--p"), (A + 2 * PAGE, A + 5 * PAGE, "rw-p"),
                   (A + 5 * PAGE, A + 10 * PAGE, "r--p")]
    v = m.vmas
    first = v[(v["start"] == A) & (v["created_by"] == "mmap") & (v["size"] == 10 * PAGE)]
    assert first["destroyed_by"].iloc[0] == "mmap"
    right = v[v["start"] == A + 5 * PAGE].iloc[0]
    assert right["offset"] == 5 * PAGE and right["parent_vma"] == first["vma_id"].iloc[0]
    assert right["created_by"] == "mmap" and right["kind"] == "file"


def test_map_fixed_noreplace_failure_changes_nothing():
    e = Events()
    attach(e)
    e.mmap(A, 4 * PAGE)
    e.mmap(-17, PAGE, addr=A + PAGE, flags=PRIVATE | ANON | FIXED_NOREPLACE)   # EEXIST
    e.mmap(A + 8 * PAGE, PAGE, addr=A + 8 * PAGE, flags=PRIVATE | ANON | FIXED_NOREPLACE)
    m = build(e)
    assert (A, A + 4 * PAGE, "rw-p") in alive(m)
    assert (A + 8 * PAGE, A + 9 * PAGE, "rw-p") in alive(m)
    assert len(versions(m, A)) == 1


def test_failed_calls_change_nothing():
    e = Events()
    attach(e)
    e.mmap(A, 4 * PAGE)
    e.mmap(-12, 1 << 40)                          # ENOMEM
    e.munmap(A, PAGE, ret=-22)                    # EINVAL
    e.mprotect(A, PAGE, R, ret=-13)               # EACCES
    e.mremap(A, 4 * PAGE, 8 * PAGE, ret=-12)
    m = build(e)
    assert [x for x in alive(m) if x[0] >= A and x[0] < 0x7ff000000000] == [(A, A + 4 * PAGE, "rw-p")]
    assert len(m.vmas) == 4


# ---- munmap ----

def test_munmap_hole_splits_mapping():
    e = Events()
    attach(e)
    e.mmap(A, 8 * PAGE, prot=R, flags=PRIVATE, fd=5, off=0x10000)
    e.munmap(A + 3 * PAGE, 2 * PAGE)
    m = build(e)
    got = [x for x in alive(m) if A <= x[0] < A + 8 * PAGE]
    assert got == [(A, A + 3 * PAGE, "r--p"), (A + 5 * PAGE, A + 8 * PAGE, "r--p")]
    v = m.vmas.set_index("start")
    assert v.loc[A + 5 * PAGE, "offset"] == 0x10000 + 5 * PAGE
    assert (m.vmas["created_by"] == "munmap").sum() == 2
    orig = m.vmas[m.vmas["created_by"] == "mmap"].iloc[0]
    assert orig["destroyed_by"] == "munmap"


def test_munmap_unmapped_range_and_across_mappings():
    e = Events()
    attach(e)
    e.munmap(A + 0x100000, 4 * PAGE)              # nothing there: fine
    e.mmap(A, 2 * PAGE)
    e.mmap(A + 2 * PAGE, 2 * PAGE, prot=R)
    e.munmap(A + PAGE, 2 * PAGE)                  # last page of one, first of the other
    m = build(e)
    got = [x for x in alive(m) if A <= x[0] < A + 8 * PAGE]
    assert got == [(A, A + PAGE, "rw-p"), (A + 3 * PAGE, A + 4 * PAGE, "r--p")]


# ---- mremap ----

def test_mremap_grow_in_place():
    e = Events()
    attach(e)
    e.mmap(A, 4 * PAGE)
    e.mremap(A, 4 * PAGE, 6 * PAGE, ret=A)
    m = build(e)
    assert (A, A + 6 * PAGE, "rw-p") in alive(m)
    v = versions(m, A)
    assert list(v["created_by"]) == ["mmap", "mremap"]
    assert v["parent_vma"].iloc[1] == v["vma_id"].iloc[0]


def test_mremap_shrink():
    e = Events()
    attach(e)
    e.mmap(A, 4 * PAGE)
    e.mremap(A, 4 * PAGE, PAGE, ret=A)
    m = build(e)
    assert (A, A + PAGE, "rw-p") in alive(m)


def test_mremap_move_keeps_mapping_and_offset():
    e = Events()
    attach(e)
    e.mmap(A, 8 * PAGE, prot=R, flags=PRIVATE, fd=4, off=0)
    B = A + 0x1000000
    e.mremap(A + 2 * PAGE, 2 * PAGE, 4 * PAGE, ret=B, flags=MAYMOVE)
    m = build(e)
    got = alive(m)
    assert (A, A + 2 * PAGE, "r--p") in got and (A + 4 * PAGE, A + 8 * PAGE, "r--p") in got
    assert (B, B + 4 * PAGE, "r--p") in got
    moved = versions(m, B).iloc[0]
    assert moved["offset"] == 2 * PAGE and moved["created_by"] == "mremap"
    assert moved["kind"] == "file" and moved["fd"] == 4


def test_mremap_fixed_replaces_target_and_dontunmap_keeps_source():
    e = Events()
    attach(e)
    e.mmap(A, 4 * PAGE)
    B = A + 0x100000
    e.mmap(B, 8 * PAGE, prot=R)
    e.mremap(A, 4 * PAGE, 4 * PAGE, ret=B + 2 * PAGE, flags=MAYMOVE | MREMAP_FIXED,
             new_addr=B + 2 * PAGE)
    C = A + 0x200000
    e.mmap(C, 2 * PAGE)
    e.mremap(C, 2 * PAGE, 2 * PAGE, ret=C + 0x10000, flags=MAYMOVE | DONTUNMAP)
    m = build(e)
    got = alive(m)
    assert not any(s == A for s, _, _ in got)
    assert [x for x in got if B <= x[0] < B + 8 * PAGE] == [
        (B, B + 2 * PAGE, "r--p"), (B + 2 * PAGE, B + 6 * PAGE, "rw-p"), (B + 6 * PAGE, B + 8 * PAGE, "r--p")]
    assert (C, C + 2 * PAGE, "rw-p") in got and (C + 0x10000, C + 0x10000 + 2 * PAGE, "rw-p") in got


# ---- mprotect ----

def test_mprotect_splits_in_three():
    e = Events()
    attach(e)
    e.mmap(A, 6 * PAGE)
    i = e.mprotect(A + 2 * PAGE, 2 * PAGE, R)
    m = build(e)
    assert [x for x in alive(m) if A <= x[0] < A + 6 * PAGE] == [
        (A, A + 2 * PAGE, "rw-p"), (A + 2 * PAGE, A + 4 * PAGE, "r--p"), (A + 4 * PAGE, A + 6 * PAGE, "rw-p")]
    new = m.vmas[m.vmas["created_by"] == "mprotect"]
    assert len(new) == 3 and (new["cause_event"] == i).all()


def test_mprotect_same_prot_makes_no_version_and_enomem_applies_prefix():
    e = Events()
    attach(e)
    e.mmap(A, 2 * PAGE)
    e.mmap(A + 4 * PAGE, 2 * PAGE)
    e.mprotect(A, 2 * PAGE, RW)                   # no change
    e.mprotect(A + PAGE, 4 * PAGE, R, ret=-12)    # hole at A+2P: [A+P, A+2P) changed
    e.mprotect(A + 3 * PAGE, 2 * PAGE, R, ret=-12)  # starts in the hole: nothing
    m = build(e)
    assert [x for x in alive(m) if A <= x[0] < A + 8 * PAGE] == [
        (A, A + PAGE, "rw-p"), (A + PAGE, A + 2 * PAGE, "r--p"), (A + 4 * PAGE, A + 6 * PAGE, "rw-p")]


# ---- brk ----

def test_brk_grow_shrink_and_failure():
    e = Events()
    e.exec()
    e.snapshot([(0x400000, 0x401000, "r-xp", 0, "/usr/bin/prog"),
                (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")])
    H = 0x555555559000
    e.brk(0, H)                                   # first brk(0): heap start
    e.brk(H + 0x21000, H + 0x21000)               # grow
    e.brk(H + 0x40800, H + 0x40800)               # grow again (break not page aligned)
    e.brk(H + 0x10000, H + 0x10000)               # trim
    e.brk(H + (1 << 40), H + 0x10000)             # fails: returns the old break
    m = build(e)
    heap = m.vmas[m.vmas["kind"] == "heap"]
    assert list(zip(heap["start"], heap["end"])) == [
        (H, H + 0x21000), (H, H + 0x41000), (H, H + 0x10000)]
    assert list(heap["created_by"]) == ["brk"] * 3
    assert heap["parent_vma"].iloc[1] == heap["vma_id"].iloc[0]
    assert heap["path"].iloc[0] == "[heap]"
    tl = m.timeline(P)
    assert list(tl["heap"].dropna().astype(int))[-4:] == [0x21000, 0x40800, 0x10000, 0x10000]


def test_brk_on_attached_process_uses_snapshot_heap():
    e = Events()
    H = 0x555555559000
    attach(e, [(H, H + 0x21000, "rw-p", 0, "[heap]")])
    e.brk(0, H + 0x21000)
    e.brk(H + 0x42000, H + 0x42000)
    m = build(e)
    assert (H, H + 0x42000, "rw-p") in alive(m)
    assert m.timeline(P)["heap"].iloc[-1] == 0x42000


# ---- exec, snapshot, replay ----

def exec_with_window(e: Events):
    x = e.exec()
    lib = 0x7ffff7dd0000
    e.brk(0, 0x555555559000)
    mm = e.mmap(lib, 0x3000, prot=R, flags=PRIVATE, fd=3, off=0)       # ld.so maps a library
    e.mmap(lib + 0x1000, 0x1000, prot=R | X, flags=PRIVATE | FIXED, fd=3, off=0x1000, addr=lib + 0x1000)
    f = e.fault(0x400010, exec_=True)                                  # in the binary
    g = e.fault(lib + 0x1008, exec_=True)                              # in the library
    e.brk(0x55555557a000, 0x55555557a000)
    snap = e.snapshot([
        (0x400000, 0x401000, "r-xp", 0, "/usr/bin/prog", 11),
        (0x555555559000, 0x55555557a000, "rw-p", 0, "[heap]"),
        (lib, lib + 0x1000, "r--p", 0, "/usr/lib/libc.so.6", 22),
        (lib + 0x1000, lib + 0x2000, "r-xp", 0x1000, "/usr/lib/libc.so.6", 22),
        (lib + 0x2000, lib + 0x3000, "r--p", 0x2000, "/usr/lib/libc.so.6", 22),
        (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]"),
        (0x7ffff7fc1000, 0x7ffff7fc3000, "r-xp", 0, "[vdso]")])
    return x, mm, f, g, snap, lib


def test_exec_snapshot_with_replay():
    e = Events()
    attach(e, [(A, A + PAGE, "rw-p", 0, "")])     # the old image
    x, mm, f, g, snap, lib = exec_with_window(e)
    m = build(e)
    v = m.vmas
    old = v[v["created_by"] == "attach"]
    assert (old["destroyed_by"] == "exec").all()
    xts = e.rows[x]["ts"]
    prog = v[(v["start"] == 0x400000) & (v["created"] == xts)].iloc[0]
    assert prog["created_by"] == "exec" and prog["cause_event"] == x and prog["inode"] == 11
    libs = v[(v["start"] >= lib) & (v["start"] < lib + 0x3000) & v["destroyed"].isna()]
    assert list(libs["created_by"]) == ["mmap", "mmap", "mmap"]
    assert list(libs["path"]) == ["/usr/lib/libc.so.6"] * 3 and (libs["inode"] == 22).all()
    # the dead first version learnt its name too (same lineage)
    assert (v[v["cause_event"] == mm]["path"] == "/usr/lib/libc.so.6").all()
    heap = v[v["kind"] == "heap"]
    assert len(heap) == 1 and heap["created_by"].iloc[0] == "brk"
    fa = m.faults
    assert fa.loc[f, "vma_id"] == prog["vma_id"] and fa.loc[f, "access"] == "exec"
    assert fa.loc[g, "path"] == "/usr/lib/libc.so.6" and fa.loc[g, "file_offset"] == 0x1000
    # nothing was re-created by the snapshot: it agreed
    assert not (v["created"] == e.rows[snap[0]]["ts"]).any()
    assert m.coverage.fraction == 1.0


def test_snapshot_disagreement_is_settled_by_the_snapshot():
    e = Events()
    attach(e)
    e.mmap(A, 4 * PAGE)
    e.mmap(A + 0x100000, PAGE)
    s = e.snapshot([(0x400000, 0x401000, "r-xp", 0, "/usr/bin/prog"),
                    (A, A + 2 * PAGE, "rw-p", 0, ""), (A + 2 * PAGE, A + 4 * PAGE, "r--p", 0, ""),
                    (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]"),
                    (0x7ffff7fc1000, 0x7ffff7fc3000, "r-xp", 0, "[vdso]")], cause="attach")
    m = build(e)
    got = alive(m)
    assert (A, A + 2 * PAGE, "rw-p") in got and (A + 2 * PAGE, A + 4 * PAGE, "r--p") in got
    assert not any(x[0] == A + 0x100000 for x in got)
    new = m.vmas[m.vmas["created"] == e.rows[s[0]]["ts"]]
    assert set(new["created_by"]) == {"attach"} and len(new) == 2
    assert set(new["cause_event"]) == {s[1], s[2]}


def test_exec_without_snapshot_marks_faults():
    e = Events()
    e.exec()
    f = e.fault(0x400010)
    e.mmap(A, PAGE)
    g = e.fault(A)
    m = build(e)
    assert m.faults.loc[f, "reason"] == as_faults.REASONS[2]
    assert m.faults.loc[g, "vma_kind"] == "anon"


# ---- fork, exit ----

def test_fork_copies_and_exit_destroys():
    e = Events()
    attach(e, [(A, A + 4 * PAGE, "rw-p", 0, "")])
    e.fork(200)
    e.munmap(A, PAGE, pid=200)
    f = e.fault(A + 10, pid=200)                   # gone in the child
    g = e.fault(A + 10)                            # still there in the parent
    e.exit(group=False, pid=200, tid=201)          # a thread: nothing
    h = e.fault(A + PAGE, pid=200)
    e.exit(pid=200)
    k = e.fault(A + PAGE, pid=200)
    m = build(e)
    v = m.vmas
    child = v[v["pid"] == 200]
    assert (child["created_by"].iloc[:4] == "fork").all()
    par = v.set_index("vma_id")
    assert all(par.loc[p, "pid"] == P for p in child["parent_vma"].iloc[:4])
    assert child["destroyed"].notna().all()
    assert (child["destroyed_by"][child["created_by"] != "fork"] == "exit").all()
    fa = m.faults
    assert pd.isna(fa.loc[f, "vma_id"]) and fa.loc[f, "reason"] == "no mapping at address"
    assert v.loc[fa.loc[g, "vma_id"], "pid"] == P
    assert v.loc[fa.loc[h, "vma_id"], "pid"] == 200
    assert fa.loc[k, "reason"] == as_faults.REASONS[1]


# ---- stack growth ----

def test_stack_growth_by_faults():
    e = Events()
    attach(e)
    top = 0x7ffffffde000
    f = e.fault(top - 10, write=True)                  # just below: grows one page
    g = e.fault(top - 0x20000 + 8, write=True)         # 128 KiB below: grows
    h = e.fault(top - 0x10000, write=True)             # now inside
    k = e.fault(0x7ffffffff000 - (9 << 20), write=True)  # beyond RLIMIT_STACK
    m = build(e)
    st = m.vmas[m.vmas["kind"] == "stack"]
    assert list(st["start"]) == [top, top - PAGE, top - 0x20000]
    assert list(st["created_by"]) == ["attach", "stack_growth", "stack_growth"]
    assert st["cause_event"].iloc[1] == f
    fa = m.faults
    assert [fa.loc[i, "vma_id"] for i in (f, g, h)] == list(st["vma_id"].iloc[[1, 2, 2]])
    assert pd.isna(fa.loc[k, "vma_id"])


def test_stack_growth_respects_guard_gap():
    e = Events()
    attach(e)
    top = 0x7ffffffde000
    e.mmap(top - 0x80000, 0x10000)                 # an accessible mapping 448 KiB below
    f = e.fault(top - 0x6f000)                     # within 1 MiB of it: SIGSEGV
    m = build(e)
    assert pd.isna(m.faults.loc[f, "vma_id"])
    assert (m.vmas["kind"] == "stack").sum() == 1


# ---- faults ----

def test_fault_attribution_columns_and_aggregates():
    e = Events()
    attach(e)
    e.mmap(A, 4 * PAGE, prot=R | W, flags=SHARED, fd=7, off=0x3000)
    f1 = e.fault(A + 0x1234, rss_file=1)
    f2 = e.fault(A + 0x1238, write=True, major=True)
    f3 = e.fault(A + 0x3000, exec_=True)
    e.madvise(A, 4 * PAGE, 4)                      # MADV_DONTNEED: the mapping stays
    f4 = e.fault(A + 0x1000)
    k = e.fault(0xffffffff81000000)
    u = e.fault(A, pid=999)
    m = build(e)
    fa = m.faults
    assert fa.loc[f1, "file_offset"] == 0x3000 + 0x1000
    assert fa.loc[f3, "file_offset"] == 0x3000 + 0x3000
    assert list(fa.loc[[f1, f2, f3], "access"]) == ["read", "write", "exec"]
    assert fa.loc[f1, "vma_kind"] == "file"
    v = m.vmas.set_index("vma_id").loc[fa.loc[f1, "vma_id"]]
    assert (v["faults"], v["minor"], v["major"], v["read"], v["write"], v["exec"]) == (4, 3, 1, 2, 1, 1)
    assert v["pages_touched"] == 2 and v["rss_pages"] == 1
    assert v["perms"] == "rw-s"
    assert fa.loc[k, "reason"] == "kernel address"
    assert fa.loc[u, "reason"] == "process not known (no snapshot/exec seen)"
    assert m.coverage.faults == 6 and m.coverage.attributed == 4
    assert m.coverage.unattributed == {"kernel address": 1,
                                       "process not known (no snapshot/exec seen)": 1}
    assert fa.loc[f4, "vma_id"] == fa.loc[f1, "vma_id"]
    assert list(fa.columns[-7:]) == ["vma_id", "vma_kind", "path", "file_offset", "access",
                                     "reason", "ip_vma"]


def test_fault_in_unmapped_and_remapped_range():
    e = Events()
    attach(e)
    e.mmap(A, PAGE)
    f = e.fault(A)
    e.munmap(A, PAGE)
    g = e.fault(A)
    e.mmap(A, PAGE, prot=R)
    h = e.fault(A)
    m = build(e)
    fa = m.faults
    assert fa.loc[f, "vma_id"] != fa.loc[h, "vma_id"]
    assert pd.isna(fa.loc[g, "vma_id"])
    assert m.timeline(P)["pages_touched"].iloc[-1] == 2


def test_kinds_thread_stacks_guards_shm_vdso():
    e = Events()
    attach(e, [(0x7ffff7fbd000, 0x7ffff7fc1000, "r--p", 0, "[vvar]")])
    # glibc allocate_stack: mmap PROT_NONE (MAP_STACK), mprotect above the guard, clone
    e.mmap(A, 64 * PAGE, prot=0, flags=PRIVATE | ANON | MAP_STACK, tid=P)
    e.mprotect(A + PAGE, 63 * PAGE, RW, tid=P)
    e.thread(101, tid=P)
    # the same without MAP_STACK, by another thread
    B = A + 0x100000
    e.mmap(B, 16 * PAGE, prot=0, tid=101)
    e.mprotect(B + PAGE, 15 * PAGE, RW, tid=101)
    e.thread(102, tid=101)
    # an anonymous mmap followed by another mmap before the clone: not a stack
    C = A + 0x200000
    e.mmap(C, 16 * PAGE, tid=102)
    e.mmap(C + 0x100000, PAGE, tid=102)
    e.thread(103, tid=102)
    e.mmap(A + 0x400000, PAGE, flags=SHARED | ANON)
    e.mmap(A + 0x500000, PAGE, flags=SHARED, fd=9)
    m = build(e)
    k = m.maps_at(P, m.vmas["created"].max()).set_index("start")["kind"]
    assert k[A] == "guard" and k[A + PAGE] == "thread_stack"
    assert k[B] == "guard" and k[B + PAGE] == "thread_stack"
    assert k[C] == "anon"
    assert k[A + 0x400000] == "shm" and k[A + 0x500000] == "file"
    assert k[0x7ffff7fbd000] == "vdso" and k[0x7ffff7fc1000] == "vdso"
    assert k[0x7ffffffde000] == "stack" and k[0x400000] == "file"


# ---- maps_at, merge, compare ----

def test_maps_at_merge_and_compare():
    e = Events()
    attach(e)
    e.mmap(A, 2 * PAGE)
    e.mmap(A + 2 * PAGE, 3 * PAGE)                 # the kernel merges these two
    e.mmap(A + 5 * PAGE, 2 * PAGE, prot=R, flags=PRIVATE, fd=3, off=0)
    e.mmap(A + 7 * PAGE, 2 * PAGE, prot=R, flags=PRIVATE, fd=3, off=2 * PAGE)
    t_end = e.t
    e.munmap(A, 9 * PAGE)
    m = build(e)
    raw = m.maps_at(P, t_end)
    merged = m.maps_at(P, t_end, merge=True)
    assert len(raw) == 7 and len(merged) == 5
    row = merged[merged["start"] == A].iloc[0]
    assert row["end"] == A + 5 * PAGE and row["perms"] == "rw-p"
    assert merged[merged["start"] == A + 5 * PAGE].iloc[0]["end"] == A + 9 * PAGE
    kernel = [
        "00400000-00401000 r-xp 00000000 08:01 123                          /usr/bin/prog",
        f"{A:x}-{A + 5 * PAGE:x} rw-p 00000000 00:00 0 ",
        f"{A + 5 * PAGE:x}-{A + 9 * PAGE:x} r--p 00000000 08:01 777        /usr/lib/x.so",
        "7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0                  [vdso]",
        "7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                  [stack]",
    ]
    assert asp.compare_maps(raw, kernel) == []
    assert asp.compare_maps(merged, kernel) == []
    bad = kernel[:1] + [f"{A:x}-{A + 4 * PAGE:x} rw-p 00000000 00:00 0 "] + kernel[2:]
    diffs = asp.compare_maps(raw, bad)
    assert len(diffs) == 1 and "ours" in diffs[0]
    assert asp.compare_maps(raw, kernel[:-1]) == [
        "only in ours:   " + m.maps_text(P, t_end)[-1]]
    lines = m.maps_text(P, t_end)
    assert lines[0].startswith("00400000-00401000 r-xp 00000000 00:00 123 ")
    assert lines[0].endswith(" /usr/bin/prog") and len(lines) == 5
    assert m.maps_at(P, e.t).shape[0] == 3


def test_timeline_mapped_bytes_and_fault_counts():
    e = Events()
    attach(e)
    base = 0x1000 + 0x21000 + 0x2000      # prog + stack + vdso
    e.mmap(A, 4 * PAGE)
    e.fault(A)
    e.fault(A, major=True)
    e.mmap(A + 0x10000, 2 * PAGE, prot=R, flags=PRIVATE, fd=3)
    e.munmap(A, 4 * PAGE)
    m = build(e)
    tl = m.timeline(P)
    assert tl.index.name == "ts" and tl.index.is_monotonic_increasing
    assert list(tl["mapped"]) == [base, base + 4 * PAGE, base + 4 * PAGE, base + 4 * PAGE,
                                  base + 6 * PAGE, base + 2 * PAGE]
    assert list(tl["mapped_file"])[-1] == 0x1000 + 2 * PAGE
    assert list(tl["minor_faults"]) == [0, 0, 1, 1, 1, 1]
    assert list(tl["major_faults"]) == [0, 0, 0, 1, 1, 1]
    assert list(tl["pages_touched"]) == [0, 0, 1, 1, 1, 1]


def test_vmas_schema():
    e = Events()
    attach(e)
    e.mmap(A, PAGE)
    m = build(e)
    v = m.vmas
    for col in ["vma_id", "pid", "start", "end", "size", "prot", "perms", "shared", "kind",
                "path", "offset", "inode", "created", "destroyed", "created_by", "cause_event",
                "parent_vma", "destroyed_by", "faults", "minor", "major", "read", "write",
                "exec", "pages_touched", "rss_pages"]:
        assert col in v.columns, col
    assert v["vma_id"].dtype == np.int64 and v["start"].dtype == np.uint64
    assert isinstance(v["kind"].dtype, pd.CategoricalDtype)
    assert "stack_growth" in v["created_by"].cat.categories
    assert "exit" in v["destroyed_by"].cat.categories
    assert str(v["cause_event"].dtype) == "Int64" and str(v["parent_vma"].dtype) == "Int64"
    assert "coverage" in repr(m).lower() or "Coverage" in repr(m)


def test_empty_and_unsorted_input():
    e = Events()
    m = build(e)
    assert len(m.vmas) == 0 and len(m.faults) == 0 and m.coverage.fraction == 1.0
    e = Events()
    attach(e)
    e.mmap(A, PAGE)
    f = e.fault(A)
    df = e.frame().iloc[::-1]
    m = asp.build(df.sort_values("ts", kind="stable").iloc[::-1])
    assert m.faults.loc[f, "vma_kind"] == "anon"


def test_attribution_with_rank_keys():
    # addresses near 2**64 and many processes: keys made of ranks, not packed
    n = 5000
    pid = np.arange(n, dtype=np.int32)
    start = np.full(n, 0xffffffffff600000, np.uint64)
    end = start + np.uint64(PAGE)
    bnd = np.arange(n, dtype=np.int64) * 2 + 1
    dbnd = np.full(n, as_faults.ALIVE, np.int64)
    f_pid = np.array([3, 4999, 7], np.int32)
    f_addr = np.array([0xffffffffff600010, 0xffffffffff600010, 0xffffffffff601000], np.uint64)
    f_key = np.array([2 * n + 1, 2 * n + 3, 2 * n + 5], np.int64)
    got = as_faults.attribute(pid, start, end, bnd, dbnd, f_pid, f_addr, f_key, PAGE)
    assert list(got) == [3, 4999, -1]


def test_real_proc_maps_round_trip():
    """This process's own /proc/self/maps as an attach snapshot: the model's
    maps at that time, rendered, compare equal with the kernel's lines."""
    import os
    from tracer import _procfs
    with open(f"/proc/{os.getpid()}/maps", "rb") as f:
        raw = f.read()
    entries = _procfs.parse_maps(raw)
    e = Events()
    e.snapshot([(x.start, x.end, x.perms, x.offset, x.path, x.inode) for x in entries],
               cause="attach")
    m = build(e)
    ts = e.t
    kernel = raw.decode("utf-8", "backslashreplace").splitlines()
    assert asp.compare_maps(m.maps_at(P, ts), kernel) == []
    assert asp.compare_maps(m.maps_text(P, ts, merge=False), kernel) == []
    assert len(m.maps_at(P, ts)) == len(entries)
    kinds = set(m.maps_at(P, ts)["kind"])
    assert {"file", "stack", "vdso"} <= kinds


def test_exec_twice_before_the_snapshot_and_fork_inherits_stack_window():
    e = Events()
    e.exec(path="/bin/sh")
    e.exec(path="/usr/bin/prog")                   # the shell exec'd at once
    lines = [(0x400000, 0x401000, "r-xp", 0, "/usr/bin/prog"),
             (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")]
    e.snapshot(lines)                              # both readings come after both execs
    e.snapshot(lines)
    e.fork(300)
    f = e.fault(0x7ffffffde000 - 0x3000, pid=300)  # the child's stack grows
    m = build(e)
    v = m.vmas
    assert (v[v["pid"] == P]["created_by"] == "exec").all() and len(v[v["pid"] == P]) == 2
    grown = v[(v["pid"] == 300) & (v["created_by"] == "stack_growth")]
    assert len(grown) == 1 and grown["start"].iloc[0] == 0x7ffffffde000 - 0x3000
    assert m.faults.loc[f, "vma_id"] == grown["vma_id"].iloc[0]
    assert m.coverage.fraction == 1.0


def test_exec_window_mremap_and_munmap_replayed():
    e = Events()
    e.exec()
    e.mmap(A, 8 * PAGE)
    e.mremap(A, 8 * PAGE, 16 * PAGE, ret=A + 0x100000)
    e.mmap(A + 0x200000, 4 * PAGE)
    e.munmap(A + 0x200000, 2 * PAGE)
    e.snapshot([(0x400000, 0x401000, "r-xp", 0, "/usr/bin/prog"),
                (A + 0x100000, A + 0x110000, "rw-p", 0, ""),
                (A + 0x202000, A + 0x204000, "rw-p", 0, ""),
                (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")])
    m = build(e)
    v = m.vmas
    live = v[v["destroyed"].isna()].set_index("start")
    assert live.loc[A + 0x100000, "created_by"] == "mremap"
    assert live.loc[A + 0x202000, "created_by"] == "munmap"
    assert live.loc[0x400000, "created_by"] == "exec"
    assert set(v["created_by"]) == {"exec", "mmap", "mremap", "munmap"}


def test_exit_ends_heap_in_timeline_and_maps():
    e = Events()
    attach(e)
    e.brk(0, 0x600000)
    e.brk(0x610000, 0x610000)
    e.exit()
    m = build(e)
    tl = m.timeline(P)
    assert tl["heap"].iloc[-2] == 0x10000 and np.isnan(tl["heap"].iloc[-1])
    assert tl["mapped"].iloc[-1] == 0
    assert len(m.maps_at(P, e.t)) == 0 and len(m.maps_at(P, e.t, merge=True)) == 0
    assert len(m.maps_at(12345, e.t)) == 0


def test_faults_inside_execve_belong_to_the_new_image():
    """The ELF loader's own writes (padzero) fault in the new mm before the
    exec row (sent at the end of execve): kernel-mode faults of the exec'ing
    thread after its last user-mode fault are attributed to the new image."""
    e = Events()
    attach(e, [(A, A + PAGE, "rw-p", 0, "")])
    u = e.fault(A)                                           # user mode, old image
    k = e.add("fault", addr=0x555555558010, ip=0xffffffff81753000, major=False,
              error_code=2, latency=100, rss_anon=1, rss_file=0, rss_shmem=0, rss_swap=0)
    e.exec()
    e.snapshot([(0x555555554000, 0x555555559000, "rw-p", 0, "/usr/bin/prog"),
                (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")])
    m = build(e)
    fa, v = m.faults, m.vmas.set_index("vma_id")
    assert v.loc[fa.loc[u, "vma_id"], "created_by"] == "attach"
    assert v.loc[fa.loc[k, "vma_id"], "created_by"] == "exec"
    assert v.loc[fa.loc[k, "vma_id"], "path"] == "/usr/bin/prog"


def test_mmap_of_a_descriptor_is_named_by_its_latest_open():
    """ld.so's pattern: open A (fd 3), mmap, close, open B (fd 3 again), mmap:
    each mapping takes the file its descriptor named at the time."""
    ev = Events()
    ev.snapshot([(0x7FFF0000, 0x7FFF1000, "rw-p", 0, "[stack]")], cause="attach")
    ev.add("open", path="/lib/a.so", ret=3, flags=0)
    ev.mmap(ret=0x10000, length=0x2000, prot=R, flags=PRIVATE, fd=3)
    ev.add("open", path="/lib/b.so", ret=3, flags=0)
    ev.mmap(ret=0x20000, length=0x1000, prot=R, flags=PRIVATE, fd=3)
    ev.mmap(ret=0x30000, length=0x1000, prot=R, flags=PRIVATE, fd=7)   # never opened
    m = asp.build(ev.frame())
    alive = m.maps_at(ev.pid, ev.t).set_index("start")
    assert alive.loc[0x10000, "path"] == "/lib/a.so"
    assert alive.loc[0x20000, "path"] == "/lib/b.so"
    assert not isinstance(alive.loc[0x30000, "path"], str)
