"""The strace parser of the capture tests (tests/strace_parse.py), on real
strace output: tests/data/strace_sample.txt is

    strace -f -qq -X raw -e trace=brk,mmap,munmap,mremap,mprotect,madvise \
        -o strace_sample.txt churn 30

(strace 6.1, glibc 2.36; pid 8505 main thread, 8506 the forked child, 8507
the thread), and single lines copied from strace's symbolic output."""
from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest

from strace_parse import (
    Call, StraceParseError, by_tid, calls_from_events, compare, normalize,
    parse_ret, parse_strace, parse_value, summary,
)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "strace_sample.txt"
MAIN, CHILD, THREAD = 8505, 8506, 8507


@pytest.fixture(scope="module")
def sample() -> list[Call]:
    return parse_strace(SAMPLE.read_text(), source=SAMPLE.name)


def test_sample_counts(sample):
    assert len(sample) == 117
    assert summary(sample) == {"brk": 49, "mmap": 28, "munmap": 20, "mremap": 6,
                               "mprotect": 10, "madvise": 4}
    per = {tid: summary(calls) for tid, calls in by_tid(sample).items()}
    assert per == {
        MAIN: {"brk": 25, "mmap": 15, "mprotect": 6, "munmap": 7, "mremap": 2, "madvise": 1},
        CHILD: {"brk": 24, "mmap": 6, "munmap": 6, "mremap": 2, "mprotect": 2, "madvise": 1},
        THREAD: {"mmap": 7, "munmap": 7, "mremap": 2, "mprotect": 2, "madvise": 2},
    }


def test_every_line_is_read(sample):
    lines = [l for l in SAMPLE.read_text().splitlines() if l.strip()]
    unfinished = sum("<unfinished ...>" in l for l in lines)
    resumed = sum("resumed>" in l for l in lines)
    signals = sum(l.split(None, 1)[1].startswith("---") for l in lines)
    assert unfinished == resumed == 64
    assert len(sample) == len(lines) - resumed - signals


def test_first_calls(sample):
    main = by_tid(sample)[MAIN]
    assert main[0] == Call(MAIN, "brk", (0,), 0x55D5570B1000)
    assert main[1] == Call(MAIN, "mmap", (0, 8192, 3, 0x22, -1, 0), 0x7F60E9F78000)
    # offsets and MAP_FIXED|MAP_DENYWRITE in hex
    assert main[4] == Call(MAIN, "mmap", (0x7F60E9DB3000, 1400832, 5, 0x812, 3, 0x26000),
                           0x7F60E9DB3000)
    assert main[0].where == "strace_sample.txt:1"


def test_unfinished_resumed_are_joined(sample):
    child = by_tid(sample)[CHILD]
    remaps = [c for c in child if c.name == "mremap"]
    # lines 22 (complete) and 24 + 26 (unfinished, resumed)
    assert remaps == [
        Call(CHILD, "mremap", (0x7F60E9D49000, 266240, 528384, 1), 0x7F60E9CC8000),
        Call(CHILD, "mremap", (0x7F60E9CC8000, 528384, 1052672, 1), 0x7F60E9BC7000),
    ]
    assert remaps[1].where == "strace_sample.txt:24"
    thread = by_tid(sample)[THREAD]
    assert thread[0] == Call(THREAD, "mmap", (0, 266240, 3, 0x22, -1, 0), 0x7F60E9548000)
    assert thread[1] == Call(THREAD, "munmap", (0x7F60E9548000, 266240), 0)
    # the thread's last call: glibc frees its stack's unused part at exit
    assert thread[-1] == Call(THREAD, "madvise", (0x7F60E9589000, 8368128, 4), 0)


def test_thread_never_calls_brk(sample):
    assert all(c.name != "brk" for c in by_tid(sample)[THREAD])


def test_madvise_resumed(sample):
    dontneed = [c for c in by_tid(sample)[MAIN] if c.name == "madvise"]
    assert dontneed == [Call(MAIN, "madvise", (0x7F60E944B000, 65536, 4), 0)]


def test_symbolic_and_errors():
    text = """\
mmap(0x1000, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE, -1, 0) = 0x1000
munmap(0x1, 10)                         = -1 EINVAL (Invalid argument)
mremap(0x1000, 4096, 8192, MREMAP_MAYMOVE|MREMAP_FIXED, 0x7e0000000000) = 0x7e0000000000
madvise(0x7e57000000, 0, MADV_NORMAL)   = 0
brk(NULL)                               = 0x5578ec1e5000
[pid  8994] mmap(NULL, 8392704, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_STACK, -1, 0) = 0x7f8273cec000
[pid  8995] mremap(0x7f82744ac000, 266240, 528384, MREMAP_MAYMOVE) = 0x7f827442b000
[pid  8995] mremap(0x7f827442b000, 528384, 1052672, MREMAP_MAYMOVE <unfinished ...>
[pid  8994] madvise(0x7f82743f0000, 65536, MADV_DONTNEED) = 0
[pid  8995] <... mremap resumed>)       = 0x7f827432a000
[pid  8995] +++ exited with 0 +++
"""
    calls = parse_strace(text)
    assert calls == [
        Call(0, "mmap", (0x1000, 4096, 1, 0x100022, -1, 0), 0x1000),
        Call(0, "munmap", (1, 10), -errno.EINVAL),
        Call(0, "mremap", (0x1000, 4096, 8192, 3, 0x7E0000000000), 0x7E0000000000),
        Call(0, "madvise", (0x7E57000000, 0, 0), 0),
        Call(0, "brk", (0,), 0x5578EC1E5000),
        Call(8994, "mmap", (0, 8392704, 0, 0x20022, -1, 0), 0x7F8273CEC000),
        Call(8995, "mremap", (0x7F82744AC000, 266240, 528384, 1), 0x7F827442B000),
        Call(8994, "madvise", (0x7F82743F0000, 65536, 4), 0),
        Call(8995, "mremap", (0x7F827442B000, 528384, 1052672, 1), 0x7F827432A000),
    ]


def test_other_syscalls_are_skipped_unless_asked():
    text = "7  mlock(0x7f0000000000, 4096) = 0\n7  brk(NULL) = 0x1000\n"
    assert [c.name for c in parse_strace(text)] == ["brk"]
    assert [c.name for c in parse_strace(text, names=None)] == ["mlock", "brk"]


def test_values():
    assert parse_value("NULL") == 0
    assert parse_value("0x26000") == 0x26000
    assert parse_value("-1") == -1
    assert parse_value("PROT_READ|PROT_WRITE|PROT_EXEC") == 7
    assert parse_value("MAP_PRIVATE|0x80000000") == 0x80000002
    assert parse_ret("?") is None
    assert parse_ret("-1 ENOMEM (Cannot allocate memory)") == -errno.ENOMEM
    with pytest.raises(StraceParseError):
        parse_value("PROT_BOGUS")
    with pytest.raises(StraceParseError):
        parse_strace("1  mmap(NULL, 4096\n")
    with pytest.raises(StraceParseError):
        parse_strace("1  <... mmap resumed>) = 0x1000\n")


def test_normalize():
    # mremap's fifth argument only counts with MREMAP_FIXED / MREMAP_DONTUNMAP
    a = normalize(Call(1, "mremap", (0x1000, 4096, 8192, 1, 0xDEAD), 0x2000))
    assert a.args == (0x1000, 4096, 8192, 1)
    b = normalize(Call(1, "mremap", (0x1000, 4096, 8192, 3, 0x7E0000000000), 0x7E0000000000))
    assert b.args == (0x1000, 4096, 8192, 3, 0x7E0000000000)
    # fd: strace's -1, the register's 0xffffffff (int passed in a 64-bit register)
    m1 = normalize(Call(1, "mmap", (0, 4096, 3, 0x22, -1, 0), 0x7F0000000000))
    m2 = normalize(Call(1, "mmap", (0, 4096, 3, 0x22, 0xFFFFFFFF, 0), 0x7F0000000000))
    assert m1 == m2
    # returns: -errno either way
    assert normalize(Call(1, "munmap", (1, 10), -22)).ret == -22
    assert normalize(Call(1, "munmap", (1, 10), 2**64 - 22)).ret == -22


def _events(rows: list[dict]) -> pd.DataFrame:
    """A frame shaped like Trace.events (nullable columns)."""
    cols = {"ts": "uint64", "pid": "int32", "tid": "int32", "addr": "UInt64", "len": "UInt64",
            "new_len": "UInt64", "new_addr": "UInt64", "prot": "Int32", "flags": "UInt64",
            "fd": "Int32", "off": "UInt64", "ret": "Int64"}
    df = pd.DataFrame(rows)
    for c, dt in cols.items():
        if c not in df:
            df[c] = None
        df[c] = df[c].astype(dt)
    df["kind"] = df["kind"].astype("category")
    return df


def test_events_compare_equal_and_different():
    strace_text = """\
10  brk(NULL) = 0x5000
10  mmap(NULL, 266240, 0x3, 0x22, -1, 0) = 0x7f0000000000
11  mremap(0x7f0000000000, 266240, 528384, 0x1) = 0x7f0000100000
11  mprotect(0x7f0000104000, 65536, 0x1) = 0
10  madvise(0x7e57001000, 0, 0) = 0
11  munmap(0x1, 10) = -1 EINVAL (Invalid argument)
"""
    rows = [
        dict(ts=1, pid=10, tid=10, kind="brk", addr=0, ret=0x5000),
        dict(ts=2, pid=10, tid=10, kind="fault", addr=0x5000),
        dict(ts=3, pid=10, tid=10, kind="mmap", addr=0, len=266240, prot=3, flags=0x22,
             fd=-1, off=0, ret=0x7F0000000000),
        dict(ts=4, pid=10, tid=11, kind="mremap", addr=0x7F0000000000, len=266240,
             new_len=528384, flags=1, new_addr=0x1234, ret=0x7F0000100000),
        dict(ts=5, pid=10, tid=11, kind="mprotect", addr=0x7F0000104000, len=65536, prot=1, ret=0),
        dict(ts=6, pid=10, tid=10, kind="madvise", addr=0x7E57001000, len=0, flags=0, ret=0),
        dict(ts=7, pid=10, tid=11, kind="munmap", addr=1, len=10, ret=-22),
    ]
    expected = parse_strace(strace_text)
    got = calls_from_events(_events(rows))
    assert [c.name for c in got] == ["brk", "mmap", "mremap", "mprotect", "madvise", "munmap"]
    assert compare(expected, got) == []

    rows[2]["len"] = 270336                       # a different argument
    del rows[6]                                   # a missing call
    problems = compare(expected, calls_from_events(_events(rows)))
    assert len(problems) == 2, problems
    assert problems[0].startswith("tid 10: call #1 differs: strace mmap(0, 0x41000,")
    assert "memtrace mmap(0, 0x42000," in problems[0]
    assert problems[1].startswith("tid 11: 3 calls in strace, 2 in memtrace; first extra in strace: munmap(")
