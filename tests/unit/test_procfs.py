"""tracer._procfs: maps/stat/status parsing, on fixtures and on this process."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys

import pytest

from tracer import _procfs
from tracer.errors import NoSuchProcess

MAPS = (
    b"55df75866000-55df75868000 r--p 00000000 fe:00 260131"
    b"                     /usr/bin/cat\n"
    b"7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n"
    b"7f1000000000-7f1000001000 rw-s 00001000 00:05 4242"
    b"                       /dev/shm/my file  with spaces\n"
    b"7f2000000000-7f2000002000 r-xp 00002000 fe:00 99"
    b"                         /tmp/lib gone.so (deleted)\n"
    b"7ffd0000000-7ffd0021000 rw-p 00000000 00:00 0"
    b"                          [stack]\n"
    b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0"
    b"                  [vsyscall]\n"
    b"7f3000000000-7f3000001000 r--p 00000000 fe:00 7 /tmp/bad\xff\\012name\n"
)


def test_parse_maps_fixture() -> None:
    e = _procfs.parse_maps(MAPS)
    assert len(e) == 7
    assert e[0] == _procfs.MapsEntry(0x55df75866000, 0x55df75868000, "r--p", 0,
                                     "fe:00", 260131, "/usr/bin/cat")
    assert e[1].path == "" and e[1].inode == 0 and e[1].perms == "rw-p"
    assert e[2].path == "/dev/shm/my file  with spaces"
    assert e[2].offset == 0x1000 and _procfs.shared_of(e[2].perms)
    assert e[3].path == "/tmp/lib gone.so (deleted)"
    assert e[4].path == "[stack]"
    assert e[5].path == "[vsyscall]" and e[5].start == 0xffffffffff600000
    assert _procfs.prot_of(e[5].perms) == _procfs.PROT_EXEC
    # Not UTF-8: readable, and encodable (Parquet needs valid UTF-8).
    assert e[6].path == "/tmp/bad\\xff\\012name"
    e[6].path.encode("utf-8")


@pytest.mark.parametrize("perms,prot,shared", [
    ("---p", 0, False), ("r--p", 1, False), ("rw-p", 3, False),
    ("r-xp", 5, False), ("rwxs", 7, True), ("-w-s", 2, True),
])
def test_prot_shared(perms: str, prot: int, shared: bool) -> None:
    assert _procfs.prot_of(perms) == prot
    assert _procfs.shared_of(perms) is shared


def test_parse_stat_odd_comm() -> None:
    # comm with spaces and ')' : only the last ')' ends it.
    line = (b"1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 11 22 33 44 5 6 0 0 "
            b"20 0 3 0 777 123456789 42 18446744073709551615 0 0 0 0 0 0 0 0 "
            b"0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
    s = _procfs.parse_stat(line)
    assert (s.pid, s.comm, s.state, s.ppid) == (1234, "a) b (c)", "S", 1)
    assert (s.minflt, s.cminflt, s.majflt, s.cmajflt) == (11, 22, 33, 44)
    assert (s.utime, s.stime, s.num_threads) == (5, 6, 3)
    assert (s.starttime, s.vsize, s.rss_pages) == (777, 123456789, 42)
    assert s.flags == 4194560


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_ANONYMOUS = 0x20            # x86 and arm64 value (asm-generic/mman-common.h)


@pytest.mark.parametrize("flags,prot,perms", [
    (mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE, "rw-p"),
    (mmap.MAP_PRIVATE, mmap.PROT_READ, "r--p"),
    (mmap.MAP_PRIVATE, 0, "---p"),
    # Shared anonymous memory is a shmem file: the kernel shows it as
    # '/dev/zero (deleted)' (mm/shmem.c, shmem_zero_setup).
    (mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, "rw-s"),
])
def test_own_mmap_appears_with_perms(flags: int, prot: int, perms: str) -> None:
    size = 4 * mmap.PAGESIZE
    # libc's mmap, not Python's: that one cannot map read-only or PROT_NONE
    # anonymous memory and hides the address.
    addr = _libc.mmap(None, size, prot, flags | MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        hits = [m for m in _procfs.read_maps(os.getpid())
                if m.start <= addr < m.end]
        assert len(hits) == 1
        m = hits[0]
        assert m.perms == perms
        assert _procfs.prot_of(m.perms) == prot
        assert _procfs.shared_of(m.perms) == (flags == mmap.MAP_SHARED)
        if flags == mmap.MAP_PRIVATE:
            assert m.path == "" and m.inode == 0
        else:
            assert (m.start, m.end) == (addr, addr + size)
            assert m.path == "/dev/zero (deleted)" and m.inode != 0
    finally:
        _libc.munmap(addr, size)


def test_own_maps_have_special_entries() -> None:
    paths = {m.path for m in _procfs.read_maps(os.getpid())}
    assert "[stack]" in paths and "[vdso]" in paths
    assert any(p.endswith(os.path.basename(os.path.realpath(sys.executable)))
               or "libpython" in p for p in paths)


def test_minflt_grows_after_touching_pages() -> None:
    pid = os.getpid()
    n = 64
    buf = mmap.mmap(-1, n * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
    before = _procfs.read_stat(pid).minflt
    for i in range(n):
        buf[i * mmap.PAGESIZE] = 1
    after = _procfs.read_stat(pid).minflt
    buf.close()
    assert after - before >= n


def test_own_stat_and_status_agree() -> None:
    pid = os.getpid()
    st = _procfs.read_stat(pid)
    status = _procfs.read_status(pid)
    assert st.pid == pid == status["Tgid"]
    assert st.ppid == os.getppid()
    assert st.comm == status["Name"] == _procfs.read_comm(pid)
    assert st.state in "RS"
    assert status["Uid"] == os.getuid()
    for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSize"):
        assert isinstance(status[key], int) and status[key] % 1024 == 0
    assert status["VmSize"] == st.vsize
    # RSS moves while we read; the two views stay close.
    assert abs(status["VmRSS"] - st.rss_pages * mmap.PAGESIZE) < 16 << 20
    assert status["RssAnon"] + status["RssFile"] + status["RssShmem"] == \
        status["VmRSS"]


def test_threads() -> None:
    import threading
    pid = os.getpid()
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def body() -> None:
        tids.append(threading.get_native_id())
        # Python 3.11 does not name OS threads: prctl(PR_SET_NAME = 15).
        _libc.prctl(15, b"procfs-test", 0, 0, 0)
        ready.set()
        done.wait()

    t = threading.Thread(target=body)
    t.start()
    try:
        ready.wait()
        all_tids = _procfs.list_tids(pid)
        assert pid in all_tids and tids[0] in all_tids
        assert _procfs.read_stat(pid).num_threads == len(all_tids)
        assert _procfs.read_comm(pid, tids[0]) == "procfs-test"
        assert _procfs.read_stat(pid, tids[0]).pid == tids[0]
        # A thread id is not a process.
        assert _procfs.exists(pid) and not _procfs.exists(tids[0])
    finally:
        done.set()
        t.join()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a child that exited and was reaped (nothing reuses it this
    soon: pids are allocated upwards)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("fn", [
    _procfs.read_maps, _procfs.read_stat, _procfs.read_status,
    _procfs.list_tids, _procfs.read_comm, _procfs.is_kernel_thread,
])
def test_gone_process(fn, dead_pid: int) -> None:
    with pytest.raises(NoSuchProcess) as ei:
        fn(dead_pid)
    assert ei.value.pid == dead_pid
    assert str(ei.value) == f"no such process: {dead_pid}"
    assert ei.value.exit_code == 4


def test_gone_thread(dead_pid: int) -> None:
    with pytest.raises(NoSuchProcess, match="no such thread"):
        _procfs.read_comm(os.getpid(), dead_pid)


def test_exists(dead_pid: int) -> None:
    assert _procfs.exists(os.getpid()) and _procfs.exists(1)
    assert not _procfs.exists(dead_pid)
    assert not _procfs.exists(0) and not _procfs.exists(-1)


def test_kernel_thread() -> None:
    assert _procfs.is_kernel_thread(2)        # kthreadd
    assert not _procfs.is_kernel_thread(os.getpid())
    assert not _procfs.is_kernel_thread(1)


def test_boot_time() -> None:
    import time
    assert 0 < _procfs.boot_time() <= time.time()
