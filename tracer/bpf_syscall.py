"""bpf(2) through ctypes: creating maps and loading programs, reading back
what the kernel holds (a map's definition, a program's tag, whether an
object still exists), and `Map`, a map's entries from user space.

The loader (tracer/bpf_load.py) makes maps and programs with these calls,
without bcc's Python module. User space reads and writes the maps
(tracer/probes.py, tracer/fault_summary.py, tracer/system.py) through `Map`,
whichever loader made them (bcc's too: tracer.probes wraps its maps' fds).
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
import struct
from dataclasses import dataclass
from typing import Iterator

# bpf(2) commands and constants (include/uapi/linux/bpf.h)
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_DELETE_BATCH = 27
BPF_PROG_LOAD = 5
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15

PROG_TRACEPOINT = 5
PROG_PERF_EVENT = 7
PROG_RAW_TRACEPOINT = 17

MAP_PERCPU_HASH = 5
MAP_PERCPU_ARRAY = 6
MAP_LRU_PERCPU_HASH = 10
MAP_ARRAY_OF_MAPS = 12
MAP_RINGBUF = 27
PERCPU_MAPS = (MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH)

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
_ATTR_SIZE = 128


class LoadError(OSError):
    """The kernel refused a map or a program."""


# ---- bpf(2) through ctypes ----

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long
_libc.syscall.argtypes = [ct.c_long, ct.c_int, ct.c_void_p, ct.c_uint]


def _bpf(cmd: int, attr: ct.Array) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise LoadError(errno.ENOSYS, f"bpf(2) number unknown on {os.uname().machine}")
    ret = _libc.syscall(nr, cmd, ct.addressof(attr), ct.sizeof(attr))
    if ret < 0:
        e = ct.get_errno()
        raise LoadError(e, os.strerror(e))
    return ret


def _attr() -> ct.Array:
    return ct.create_string_buffer(_ATTR_SIZE)


def _name16(name: str) -> bytes:
    ok = bytes(c for c in name.encode()[:15] if chr(c).isalnum() or c in b"_.")
    return ok.ljust(16, b"\0")


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int, name: str, inner_fd: int = 0) -> int:
    """inner_fd: a map of maps' template (the kind of map its values are)."""
    a = _attr()
    struct.pack_into("<7I16s", a, 0, map_type, key_size, value_size, max_entries,
                     flags, inner_fd, 0, _name16(name))
    try:
        return _bpf(BPF_MAP_CREATE, a)
    except LoadError as e:
        raise LoadError(e.errno, f"map {name}: {e.strerror}") from None


def prog_load(prog_type: int, insns: bytes, license: str, name: str,
              kern_version: int = 0) -> int:
    """Loads a program; on failure the verifier's last lines are in the error."""
    code = ct.create_string_buffer(bytes(insns), len(insns))
    lic = ct.create_string_buffer(license.encode())

    def attempt(log: ct.Array | None) -> int:
        a = _attr()
        struct.pack_into("<IIQQIIQII16s", a, 0, prog_type, len(insns) // 8,
                         ct.addressof(code), ct.addressof(lic),
                         1 if log is not None else 0, len(log) if log is not None else 0,
                         ct.addressof(log) if log is not None else 0,
                         kern_version, 0, _name16(name))
        return _bpf(BPF_PROG_LOAD, a)

    try:
        return attempt(None)
    except LoadError as first:
        log = ct.create_string_buffer(1 << 20)
        try:
            fd = attempt(log)      # transient? it loaded this time
            return fd
        except LoadError:
            pass
        tail = " | ".join(log.value.decode(errors="replace").strip().splitlines()[-4:])
        raise LoadError(first.errno, f"program {name}: {first.strerror}"
                        + (f": {tail}" if tail else "")) from None


def _obj_info(fd: int, size: int = 96) -> bytes:
    info = ct.create_string_buffer(size)
    a = _attr()
    struct.pack_into("<IIQ", a, 0, fd, size, ct.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    return info.raw


@dataclass(frozen=True)
class MapDef:
    name: str             # bcc's table name (the C identifier)
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    inner: str = ""       # a map of maps: the map its template is (bcc's inner map)


def map_info(fd: int, name: str = "") -> tuple[MapDef, int]:
    """The kernel's definition of map `fd`, and its id."""
    raw = _obj_info(fd)
    typ, mid, ks, vs, me, fl = struct.unpack_from("<6I", raw, 0)
    kname = raw[24:40].split(b"\0")[0].decode()
    return MapDef(name or kname, typ, ks, vs, me, fl), mid


def prog_info(fd: int) -> dict:
    """type, id, tag (hex) and name of program `fd`, as the kernel reports them."""
    raw = _obj_info(fd)
    typ, pid = struct.unpack_from("<II", raw, 0)
    return {"type": typ, "id": pid, "tag": raw[8:16].hex(),
            "name": raw[64:80].split(b"\0")[0].decode()}


def object_alive(kind: str, obj_id: int) -> bool:
    """Whether a program (`kind` 'prog') or map ('map') with this id still exists."""
    a = _attr()
    struct.pack_into("<I", a, 0, obj_id)
    try:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID if kind == "prog" else BPF_MAP_GET_FD_BY_ID, a)
    except LoadError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    os.close(fd)
    return True


def loaded_prog_names() -> list[str]:
    """The names of every BPF program loaded on the machine (root)."""
    names, next_id = [], 0
    while True:
        a = _attr()
        struct.pack_into("<I", a, 0, next_id)
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, a)
        except LoadError:
            return names
        next_id = struct.unpack_from("<I", a, 4)[0]
        a = _attr()
        struct.pack_into("<I", a, 0, next_id)
        try:
            fd = _bpf(BPF_PROG_GET_FD_BY_ID, a)
        except LoadError:
            continue        # unloaded meanwhile
        try:
            names.append(prog_info(fd)["name"])
        finally:
            os.close(fd)


# ---- maps, for user space ----

def _cpu_list(path: str) -> list[int]:
    cpus: list[int] = []
    with open(path) as f:
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def online_cpus() -> list[int]:
    return _cpu_list("/sys/devices/system/cpu/online")


def possible_cpus() -> list[int]:
    return _cpu_list("/sys/devices/system/cpu/possible")


class Map:
    """A BPF map by fd: keys and values as bytes, per-CPU values as lists."""

    def __init__(self, fd: int, d: MapDef) -> None:
        self.fd, self.d = fd, d
        self.name = d.name
        self.percpu = d.type in PERCPU_MAPS
        self.ncpus = len(possible_cpus()) if self.percpu else 1
        self.slot = (d.value_size + 7) & ~7 if self.percpu else d.value_size
        self.value_bytes = self.slot * self.ncpus

    def _elem(self, cmd: int, key: bytes, value: ct.Array | None, flags: int = 0) -> None:
        if len(key) != self.d.key_size:
            raise ValueError(f"map {self.name}: key of {len(key)} bytes, not {self.d.key_size}")
        k = ct.create_string_buffer(key, len(key))
        a = _attr()
        struct.pack_into("<IIQQQ", a, 0, self.fd, 0, ct.addressof(k),
                         ct.addressof(value) if value is not None else 0, flags)
        _bpf(cmd, a)

    def lookup(self, key: bytes) -> bytes | None:
        v = ct.create_string_buffer(self.value_bytes)
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, v)
        except LoadError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if len(value) != self.value_bytes:
            raise ValueError(f"map {self.name}: value of {len(value)} bytes, not {self.value_bytes}")
        self._elem(BPF_MAP_UPDATE_ELEM, key, ct.create_string_buffer(value, len(value)), flags)

    def delete(self, key: bytes) -> bool:
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key, None)
        except LoadError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key (a hash map's keys may change while it is walked)."""
        nxt = ct.create_string_buffer(self.d.key_size)
        prev: ct.Array | None = None
        while True:
            a = _attr()
            struct.pack_into("<IIQQ", a, 0, self.fd, 0,
                             ct.addressof(prev) if prev is not None else 0, ct.addressof(nxt))
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, a)
            except LoadError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            key = nxt.raw
            yield key
            prev = ct.create_string_buffer(key, len(key))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def lookup_batch(self, chunk: int = 8192) -> tuple[bytes, bytes, int]:
        """Every entry in a few syscalls (BPF_MAP_LOOKUP_BATCH, Linux 5.6):
        the keys and the values laid end to end (per-CPU values: a slot of
        each CPU), and how many. Entries added or deleted meanwhile may be
        missed or seen."""
        keys, values, n = [], [], 0
        kbuf = ct.create_string_buffer(chunk * self.d.key_size)
        vbuf = ct.create_string_buffer(chunk * self.value_bytes)
        token_in = ct.create_string_buffer(8)
        token_out = ct.create_string_buffer(8)
        first = True
        while True:
            a = _attr()
            struct.pack_into("<QQQQIIQQ", a, 0, 0 if first else ct.addressof(token_in),
                             ct.addressof(token_out), ct.addressof(kbuf), ct.addressof(vbuf),
                             chunk, self.fd, 0, 0)
            done = False
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, a)
            except LoadError as e:
                if e.errno != errno.ENOENT:
                    raise
                done = True
            got = struct.unpack_from("<I", a, 32)[0]
            if got:
                keys.append(kbuf.raw[:got * self.d.key_size])
                values.append(vbuf.raw[:got * self.value_bytes])
                n += got
            if done:
                return b"".join(keys), b"".join(values), n
            ct.memmove(token_in, token_out, 8)
            first = False

    def delete_batch(self, keys: bytes) -> int:
        """Deletes the entries of `keys` (laid end to end) in one syscall
        (BPF_MAP_DELETE_BATCH); how many were deleted."""
        n = len(keys) // self.d.key_size
        if not n:
            return 0
        kbuf = ct.create_string_buffer(keys, len(keys))
        a = _attr()
        struct.pack_into("<QQQQIIQQ", a, 0, 0, 0, ct.addressof(kbuf), 0, n, self.fd, 0, 0)
        try:
            _bpf(BPF_MAP_DELETE_BATCH, a)
        except LoadError as e:
            if e.errno != errno.ENOENT:
                raise
        return struct.unpack_from("<I", a, 32)[0]

    def percpu_values(self, key: bytes) -> list[bytes]:
        v = self.lookup(key)
        if v is None:
            return []
        return [v[i * self.slot:i * self.slot + self.d.value_size] for i in range(self.ncpus)]
