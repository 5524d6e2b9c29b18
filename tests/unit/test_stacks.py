"""Stacks named offline (tracer.stacks) on hand-built traces whose frames are
addresses in real ELF files: tests/workloads/callsites.c compiled here, a
copy of it named libc.so.6 (the C library, by its name), and faults.c as
the image of a later exec."""
import shutil
import subprocess

import numpy as np
import pytest

from tracer import report, stacks
from tracer.symbols import symbols_of
from tracer.trace import Trace

from eventframes import ANON, PRIVATE, RW, Events
from memtrace_helpers import CFLAGS, WORKLOAD_SRC

BASE = 0x555555554000       # the program's load address
LIBC = 0x7ffff7c00000       # the "C library"'s
HEAP = 0x555555600000
STACK_LINE = (0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")
P = 100


@pytest.fixture(scope="module")
def elves(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("elves")
    out = {}
    for name in ("callsites", "faults"):
        subprocess.run([gcc, *CFLAGS, "-o", str(d / name), str(WORKLOAD_SRC / f"{name}.c")],
                       check=True)
        out[name] = str(d / name)
    out["libc"] = str(d / "libc.so.6")
    shutil.copy(out["callsites"], out["libc"])
    return out


def lines_of(path: str, base: int) -> list[tuple]:
    """The maps lines of an ELF file loaded at base (one per PT_LOAD)."""
    from elftools.elf.elffile import ELFFile
    out = []
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] != "PT_LOAD":
                continue
            lo = seg["p_vaddr"] & ~0xfff
            hi = (seg["p_vaddr"] + seg["p_memsz"] + 0xfff) & ~0xfff
            fl = seg["p_flags"]
            perms = ("r" if fl & 4 else "-") + ("w" if fl & 2 else "-") + ("x" if fl & 1 else "-")
            out.append((base + lo, base + hi, perms + "p", seg["p_offset"] & ~0xfff, path))
    return out


def func(path: str, name: str) -> int:
    s = symbols_of(path)
    return int(s.addrs[s.names.index(name)])


def ret_after_call(path: str, caller: str, callee: str) -> int:
    """The vaddr just after caller's direct call (E8 rel32) of callee."""
    s = symbols_of(path)
    i = s.names.index(caller)
    start, size = int(s.addrs[i]), int(s.sizes[i])
    off = next(o + start - va for o, va, n in s.segments if va <= start < va + n)
    with open(path, "rb") as f:
        f.seek(off)
        code = f.read(size)
    for k in range(size - 4):
        if code[k] == 0xE8:
            target = start + k + 5 + int.from_bytes(code[k + 1:k + 5], "little", signed=True)
            if target == func(path, callee):
                return start + k + 5
    raise AssertionError(f"{caller} has no direct call of {callee}")


def trace_of(events, stacks_table: dict, sample: int = 1) -> Trace:
    t = Trace.__new__(Trace)
    t.path, t.complete = "synthetic", True
    t.meta = {"stacks": {str(k): v for k, v in stacks_table.items()}, "stack_sample": sample,
              "page_size": 4096}
    t.__dict__["events"] = events
    return t


def started(e: Events, elves, program="callsites") -> None:
    e.exec(path=elves[program])
    e.snapshot(lines_of(elves[program], BASE) + lines_of(elves["libc"], LIBC) + [STACK_LINE])


def test_gap_after_a_frameless_wrapper_is_filled_by_the_direct_call(elves):
    prog, libc = elves["callsites"], elves["libc"]
    wrapper = LIBC + func(libc, "grow_heap") + 4            # the syscall's ip, in "libc"
    in_run = BASE + ret_after_call(prog, "run", "map_arena")
    in_main = BASE + ret_after_call(prog, "main", "run")
    e = Events(pid=P)
    started(e, elves)
    # the walk skipped map_arena; then it left the frame records (a stack
    # address, and whatever follows) and is cut there
    e.mmap(0x7f0000000000, 3 << 20, RW, PRIVATE | ANON, stack_id=7)
    t = trace_of(e.frame(), {7: [wrapper, in_run, in_main, 0x7ffffffdf000, in_run]})
    f = t.stacks.frames_of(t.events.index[-1])
    assert f["site"].astype(str).tolist() == [
        "grow_heap+0x4", "map_arena",
        f"run+0x{in_run - BASE - func(prog, 'run'):x}",
        f"main+0x{in_main - BASE - func(prog, 'main'):x}"]
    assert f["inferred"].tolist() == [False, True, False, False]
    assert f["runtime"].tolist() == [True, False, False, False]
    assert f["module"].astype(str).tolist() == [libc, prog, prog, prog]
    row = t.stacks.rows.iloc[0]
    assert (row["call_site"], row["call_module"]) == ("map_arena", prog)
    assert row["caller"] == f"run+0x{in_run - BASE - func(prog, 'run'):x} (callsites)"


def test_no_gap_when_the_call_is_of_the_frame_s_own_function(elves):
    prog = elves["callsites"]
    ip = BASE + func(prog, "touch_arena") + 0xe
    own = BASE + ret_after_call(prog, "run", "touch_arena")      # touch_arena had a frame
    skipped = BASE + ret_after_call(prog, "main", "run")          # it had none
    e = Events(pid=P)
    started(e, elves)
    e.fault(0x7f0000000000, write=True, ip=ip, stack_id=1)
    e.fault(0x7f0000001000, write=True, ip=ip, stack_id=2)
    t = trace_of(e.frame(), {1: [ip, own], 2: [ip, skipped]})
    a, b = (t.stacks.frames_of(i) for i in t.events.index[-2:])
    assert a["site"].astype(str).str.split("+").str[0].tolist() == ["touch_arena", "run"]
    assert not a["inferred"].any()
    assert b["site"].astype(str).str.split("+").str[0].tolist() == ["touch_arena", "run", "main"]
    assert b["inferred"].tolist() == [False, True, False]
    assert set(t.stacks.rows["call_site"]) == {"touch_arena+0xe"}


def test_frames_are_named_against_the_image_of_their_time(elves):
    prog, other = elves["callsites"], elves["faults"]
    va = func(other, "main") + 4
    e = Events(pid=P)
    started(e, elves)
    first = e.mmap(0x7f0000000000, 4096, stack_id=3)
    started(e, elves, "faults")                   # exec: another program, same base
    second = e.mmap(0x7f0000000000, 4096, stack_id=3)   # the same ips, the same id
    t = trace_of(e.frame(), {3: [BASE + va]})
    before, after = t.stacks.frames_of(first), t.stacks.frames_of(second)
    assert after[["site", "module"]].values.tolist() == [["main+0x4", other]]
    s = symbols_of(prog)
    i = s.index(va)
    assert before[["site", "module"]].values.tolist() == [
        [f"{s.names[i]}+0x{va - int(s.addrs[i]):x}", prog]]
    assert s.names[i] != "main"


def test_a_stack_inside_the_runtime_is_its_innermost_frame(elves):
    libc = elves["libc"]
    e = Events(pid=P)
    started(e, elves)
    a, b = LIBC + func(libc, "grow_heap") + 4, LIBC + func(libc, "main") + 8
    e.mmap(0x7f0000000000, 1 << 20, stack_id=5)
    t = trace_of(e.frame(), {5: [a, b]})
    row = t.stacks.rows.iloc[0]
    assert (row["call_site"], row["call_module"]) == ("grow_heap+0x4", libc)
    assert row["caller"] == "main+0x8 (libc.so.6)"


def test_unknown_addresses_and_missing_stacks(elves):
    prog = elves["callsites"]
    in_main = BASE + ret_after_call(prog, "main", "run")
    e = Events(pid=P)
    started(e, elves)
    a = e.mmap(0x7f0000000000, 4096, stack_id=9)    # its ip is in no mapping
    b = e.mmap(0x7f0000100000, 4096, stack_id=8)
    e.mmap(0x7f0000200000, 4096, stack_id=4)        # not in the metadata's stacks
    e.mmap(0x7f0000300000, 4096)                    # no stack
    t = trace_of(e.frame(), {9: [0x1000], 8: [0x1000, in_main]})
    rows = t.stacks.rows
    assert rows.index.tolist() == [a, b]
    assert rows["call_site"].astype(str).tolist() == [
        stacks.UNKNOWN, f"main+0x{in_main - BASE - func(prog, 'main'):x}"]
    # nothing is inferred next to a frame that is not located
    assert t.stacks.frames_of(b)["inferred"].tolist() == [False, False]
    assert len(t.stacks.per_row()) == 3


def test_bytes_mapped_and_top_call_sites(elves):
    prog, libc = elves["callsites"], elves["libc"]
    wrapper = LIBC + func(libc, "grow_heap") + 4
    arena = [wrapper, BASE + ret_after_call(prog, "run", "map_arena")]
    region = [wrapper, BASE + ret_after_call(prog, "run", "grow_region")]
    heap = [wrapper]                               # malloc's: the callers lost
    e = Events(pid=P)
    started(e, elves)
    e.brk(0, HEAP, stack_id=3)                                     # the query: 0
    e.brk(HEAP + 0x10000, HEAP + 0x10000, stack_id=3)              # +64 KiB
    e.brk(HEAP + 0x10800, HEAP + 0x10800, stack_id=3)              # +2 KiB: a page
    e.brk(HEAP + 0x8000, HEAP + 0x8000, stack_id=3)                # shrinks: 0
    e.mmap(0x7f0000000000, 3 << 20, stack_id=1)
    e.mmap(-12, 3 << 20, stack_id=1)                               # failed: 0
    e.mmap(0x7f1000000000, 5000, stack_id=2)                       # 2 pages
    e.mremap(0x7f1000000000, 8192, 40960, 0x7f2000000000, stack_id=2)   # +32 KiB
    e.mmap(0x7f3000000000, 4096)                                   # no stack
    t = trace_of(e.frame(), {1: arena, 2: region, 3: heap})
    b = stacks.bytes_mapped(t)
    assert sorted(b.tolist()) == [4096, 4096, 8192, 32768, 0x10000, 3 << 20]
    top = stacks.top_call_sites(t, "bytes_mapped")
    assert top[["call_site", "bytes_mapped", "calls"]].values.tolist() == [
        ["map_arena", 3 << 20, 1], ["grow_heap+0x4", 0x10000 + 4096, 2],
        ["grow_region", 8192 + 32768, 2]]
    assert top.attrs == {"total": (3 << 20) + 0x11000 + 40960 + 4096,
                         "with_stack": (3 << 20) + 0x11000 + 40960, "sample": 1}
    assert top["caller"].str.startswith("run+0x").tolist() == [True, False, True]


def test_faults_are_scaled_by_the_sample_period(elves):
    prog = elves["callsites"]
    ip = BASE + func(prog, "touch_arena") + 0xe
    e = Events(pid=P)
    started(e, elves)
    for k in range(3):
        e.fault(0x7f0000000000 + k * 4096, write=True, ip=ip, stack_id=1, major=k == 0)
    for k in range(5):                      # not sampled
        e.fault(0x7f0000100000 + k * 4096, write=True, ip=ip)
    e.fault(0x7f0000200000, ip=0xffffffff81000000)          # kernel mode: never a stack
    t = trace_of(e.frame(), {1: [ip]}, sample=4)
    top = stacks.top_call_sites(t, "faults")
    assert top[["call_site", "faults", "calls", "major"]].values.tolist() == [
        ["touch_arena+0xe", 12, 3, 4]]
    assert top.attrs == {"total": 8, "with_stack": 12, "sample": 4}


def test_sample_period_from_meta_or_command_line():
    assert stacks.sample_period({"stack_sample": 8}) == 8
    assert stacks.sample_period({"argv": ["memtrace", "--stacks", "-o", "x", "--", "a"]}) == 64
    assert stacks.sample_period({"argv": ["memtrace", "--stacks", "3", "--", "a"]}) == 3
    assert stacks.sample_period({"argv": ["memtrace", "--stacks=2", "--", "a"]}) == 2
    assert stacks.sample_period({"argv": ["memtrace", "--", "a", "--stacks", "5"]}) == 1


def test_report_tables_with_and_without_stacks(elves):
    prog, libc = elves["callsites"], elves["libc"]
    wrapper = LIBC + func(libc, "grow_heap") + 4
    e = Events(pid=P)
    started(e, elves)
    e.mmap(0x7f0000000000, 3 << 20, stack_id=1)
    ip = BASE + func(prog, "touch_arena") + 0xe
    for k in range(3):
        e.fault(0x7f0000000000 + k * 4096, write=True, ip=ip, stack_id=2)
    table = {1: [wrapper, BASE + ret_after_call(prog, "run", "map_arena")], 2: [ip]}
    text = report.render(trace_of(e.frame(), table))
    assert "top 1 call sites by bytes mapped" in text
    assert "3.0M      1  map_arena (callsites) <- run+0x" in text
    assert "       3      0  touch_arena+0xe (callsites)" in text
    assert "every user-mode fault has a stack (--stacks 1)" in text
    assert max(len(line) for line in text.splitlines()
               if "call site" in line or "callsites" in line) <= 80
    sampled = report.render(trace_of(e.frame(), table, sample=4))
    assert "one user-mode fault in 4 per CPU has a stack: counts x 4, estimates" in sampled
    assert "  12 (3 sampled x 4) of 3 user-mode faults with a stack" in sampled
    assert "      12      0  touch_arena+0xe (callsites)" in sampled
    plain = report.render(trace_of(e.frame(), {}))
    assert "call sites: no stacks recorded (--stacks)" in plain
    assert "call sites by" not in plain
    assert np.all(stacks.top_call_sites(trace_of(e.frame(), {}), "faults")["faults"] >= 0)
