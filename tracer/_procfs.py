"""Private /proc parsing (psutil style): bytes in, small typed records out.

Files are read as bytes in one read() each and decoded only where text is
needed, as psutil's _pslinux does. A process that vanishes while we read
(FileNotFoundError, ProcessLookupError: ESRCH from a dying task) becomes
tracer.errors.NoSuchProcess. Text taken from the kernel (comm, paths) is not
guaranteed UTF-8; it is decoded with "backslashreplace" so it stays readable
and can still be written to Parquet (lone surrogates cannot).

Field layouts: proc(5), https://man7.org/linux/man-pages/man5/proc.5.html
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from tracer.errors import NoSuchProcess

PROC = "/proc"

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
# include/linux/sched.h: "#define PF_KTHREAD 0x00200000 /* I am a kernel thread */"
PF_KTHREAD = 0x00200000

# /proc/PID/status fields given in kB that we turn into bytes.
_KB = 1024


class MapsEntry(NamedTuple):
    start: int
    end: int
    perms: str          # e.g. 'r-xp'; 4th char 'p' private, 's' shared
    offset: int
    dev: str            # 'major:minor' in hex, as the kernel prints it
    inode: int
    path: str           # '' if anonymous; '[heap]', '... (deleted)' kept as is


class ProcStat(NamedTuple):
    pid: int
    comm: str
    state: str
    ppid: int
    minflt: int
    cminflt: int
    majflt: int
    cmajflt: int
    utime: int          # clock ticks (os.sysconf('SC_CLK_TCK'))
    stime: int
    num_threads: int
    starttime: int      # clock ticks after boot
    vsize: int          # bytes
    rss_pages: int
    flags: int          # PF_* bits of the task


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _read(pid: int, name: str) -> bytes:
    """Read /proc/PID/NAME in one go, mapping 'gone' to NoSuchProcess."""
    try:
        with open(f"{PROC}/{pid}/{name}", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise NoSuchProcess(pid) from None


def parse_maps_line(line: bytes) -> MapsEntry:
    """One line of /proc/PID/maps (no trailing newline needed)."""
    # Like psutil's memory_maps: split(None, 5) keeps spaces inside the path;
    # the kernel pads before the path, so its leading spaces are padding.
    # Newlines in file names arrive escaped as '\012' (seq_file_path).
    fields = line.rstrip(b"\n").split(None, 5)
    addrs, perms, offset, dev, inode = fields[:5]
    start, _, end = addrs.partition(b"-")
    path = _text(fields[5]) if len(fields) > 5 else ""
    return MapsEntry(int(start, 16), int(end, 16), perms.decode("ascii"),
                     int(offset, 16), dev.decode("ascii"), int(inode), path)


def parse_maps(data: bytes) -> list[MapsEntry]:
    return [parse_maps_line(line) for line in data.splitlines() if line]


def read_maps(pid: int) -> list[MapsEntry]:
    # A zombie's maps is empty, not an error.
    return parse_maps(_read(pid, "maps"))


def prot_of(perms: str) -> int:
    """PROT_* bits of a maps perms string such as 'r-xp'."""
    return ((PROT_READ if perms[0] == "r" else 0)
            | (PROT_WRITE if perms[1] == "w" else 0)
            | (PROT_EXEC if perms[2] == "x" else 0))


def shared_of(perms: str) -> bool:
    return perms[3] == "s"


def parse_stat(data: bytes) -> ProcStat:
    # comm may hold spaces and ')': take the last ')' as psutil does
    # (psutil/_pslinux.py, Process._parse_stat_file: "data.rfind(b')')").
    lpar, rpar = data.find(b"("), data.rfind(b")")
    pid = int(data[:lpar])
    comm = _text(data[lpar + 1:rpar])
    f = data[rpar + 2:].split()
    # f[0] is field 3 (state) of proc(5); field n is f[n - 3].
    return ProcStat(
        pid=pid, comm=comm, state=f[0].decode("ascii"), ppid=int(f[1]),
        minflt=int(f[7]), cminflt=int(f[8]), majflt=int(f[9]),
        cmajflt=int(f[10]), utime=int(f[11]), stime=int(f[12]),
        num_threads=int(f[17]), starttime=int(f[19]), vsize=int(f[20]),
        rss_pages=int(f[21]), flags=int(f[6]))


def read_stat(pid: int, tid: int | None = None) -> ProcStat:
    """/proc/PID/stat, or a thread's /proc/PID/task/TID/stat."""
    return parse_stat(_read(pid, "stat" if tid is None else f"task/{tid}/stat"))


def parse_status(data: bytes) -> dict[str, int | str]:
    """'Key:\\tvalue' lines; 'N kB' values become bytes, integers ints, Uid/Gid
    the real id; anything else stays a string."""
    out: dict[str, int | str] = {}
    for line in data.splitlines():
        key, sep, value = line.partition(b":")
        if not sep:
            continue
        k, v = _text(key), value.strip()
        if k in ("Uid", "Gid"):          # real, effective, saved, fs: keep real
            out[k] = int(v.split()[0])
        elif v.endswith(b" kB") and v[:-3].strip().isdigit():
            out[k] = int(v[:-3]) * _KB
        elif v.isdigit():
            out[k] = int(v)
        else:
            out[k] = _text(v)
    return out


def read_status(pid: int) -> dict[str, int | str]:
    # Kernel threads have no VmRSS/RssAnon/... lines at all.
    return parse_status(_read(pid, "status"))


# The resident counters of /proc/PID/status (fs/proc/task_mmu.c task_mem),
# in kmem:rss_stat's member order (0 file, 1 anon, 2 swap entries, 3 shmem).
# Read at an interval for every traced process (tracer.rss_sample): a regex
# over the bytes, not parse_status's dict of ~55 lines (this VM: 9.9 us a
# parse against 33 us, the file's read 9.2 us).
RSS_STATUS_KEYS = (b"RssFile", b"RssAnon", b"VmSwap", b"RssShmem")
_RSS_LINE = re.compile(rb"^(Name|VmHWM|RssAnon|RssFile|RssShmem|VmSwap):\s*(.*?)(?: kB)?$",
                       re.M)


class RssStatus(NamedTuple):
    name: str                        # the main thread's comm, as status prints it
    counters: tuple[int, int, int, int]   # bytes, RSS_STATUS_KEYS' order
    # VmHWM, bytes: the largest resident size (anon + file + shmem) of this
    # address space so far. The kernel raises mm->hiwater_rss lazily, before
    # the resident size falls (munmap, MADV_DONTNEED, exit), and status shows
    # the larger of it and the current size (task_mem() in fs/proc/task_mmu.c):
    # a peak between two reads is in the next one, reclaim's aside. A new
    # image starts it again (exec makes a new mm).
    hwm: int = 0


def parse_rss_status(data: bytes) -> RssStatus | None:
    """None for a process without an address space (a zombie, a kernel
    thread: no Rss lines)."""
    found = dict(_RSS_LINE.findall(data))
    if b"RssAnon" not in found:
        return None
    return RssStatus(_text(found.get(b"Name", b"")),
                     tuple(int(found.get(k, 0)) * _KB for k in RSS_STATUS_KEYS),
                     int(found.get(b"VmHWM", 0)) * _KB)


def read_rss_status(pid: int) -> RssStatus | None:
    return parse_rss_status(_read(pid, "status"))


def list_tids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"{PROC}/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError):
        raise NoSuchProcess(pid) from None


def read_comm(pid: int, tid: int | None = None) -> str:
    name = "comm" if tid is None else f"task/{tid}/comm"
    try:
        return _text(_read(pid, name).rstrip(b"\n"))
    except NoSuchProcess:
        if tid is None:
            raise
        raise NoSuchProcess(pid, f"no such thread: {tid} of process {pid}") from None


def exists(pid: int) -> bool:
    """True if PID is a live (or zombie) process, not merely a thread id:
    /proc/TID is reachable for any thread although listdir hides it, so
    compare Tgid as psutil's pid_exists does."""
    if pid <= 0:
        return False
    try:
        status = _read(pid, "status")
    except NoSuchProcess:
        return False
    except PermissionError:             # there, but hidden from us
        return True
    for line in status.splitlines():
        if line.startswith(b"Tgid:"):
            return int(line.split()[1]) == pid
    return False


def is_kernel_thread(pid: int) -> bool:
    # The PF_KTHREAD flag, not an empty cmdline: a user process can also have
    # an empty cmdline (e.g. after clearing its argv, or as a zombie).
    return bool(read_stat(pid).flags & PF_KTHREAD)


def boot_time() -> int:
    """Boot time in seconds since the epoch ('btime' of /proc/stat)."""
    with open(f"{PROC}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                return int(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def resolve_path(pid: int, path: str, exe: str | None = None) -> str:
    """The file an open() by `pid` named, as the kernel names it in
    /proc/PID/maps: /proc/self made /proc/PID, relative paths joined to the
    process's cwd, symbolic links resolved (memtrace's own view of the
    mounts: a process in another mount namespace may see other files).
    `exe`: the process's executable, if known. Falls back to `path` as given
    when the process is gone."""
    if path.startswith("/proc/self/"):
        path = f"/proc/{pid}/" + path[len("/proc/self/"):]
    elif path == "/proc/self":
        path = f"/proc/{pid}"
    if exe is not None and path == f"/proc/{pid}/exe":
        return exe    # read while the process was held at exec: it may be gone now
    if not path.startswith("/"):
        try:
            path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
        except OSError:
            return path
    try:
        return os.path.realpath(path)
    except OSError:
        return path


def list_pids() -> list[int]:
    """Every process (thread group) in /proc, in pid order."""
    return sorted(int(d) for d in os.listdir(PROC) if d.isdigit())


def parse_cgroup_v2(data: bytes) -> str | None:
    """The cgroup v2 path of a /proc/PID/cgroup ('0::/a/b' -> '/a/b'), None
    without one (a v1-only system)."""
    for line in data.splitlines():
        if line.startswith(b"0::"):
            return _text(line[3:])
    return None


def read_cgroup_v2(pid: int) -> str | None:
    return parse_cgroup_v2(_read(pid, "cgroup"))


def parse_cgroup2_mounts(data: bytes) -> list[tuple[str, str]]:
    """(root, mount point) of each cgroup2 mount in a mountinfo file
    (proc(5): fields 4 and 5 are the mount's root and mount point; the file
    system type follows the ' - ' separator). Octal escapes (\\040 for a
    space) are decoded."""
    out = []
    for line in data.splitlines():
        head, sep, tail = line.partition(b" - ")
        if not sep or not tail.startswith(b"cgroup2 "):
            continue
        f = head.split()
        out.append((_unescape(f[3]), _unescape(f[4])))
    return out


def _unescape(field: bytes) -> str:
    return _text(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def cgroup2_mounts() -> list[tuple[str, str]]:
    with open(f"{PROC}/self/mountinfo", "rb") as f:
        return parse_cgroup2_mounts(f.read())
