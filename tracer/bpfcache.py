"""memtrace's BPF programs without clang at every start.

bcc compiles bpf/memtrace.bpf.c in about 1.6 s, nearly all of it clang
parsing the kernel headers; loading and attaching the result takes a few
milliseconds. So memtrace compiles once with bcc and keeps what bcc would
have handed the kernel: each program's instructions, the maps' definitions,
and which instructions refer to which map. At the next start it creates the
maps, writes their file descriptors into those instructions, loads the
programs and attaches them as bcc does.

The compiler, `compile_spec`, is bcc itself (libbcc's module, the same call
`bcc.BPF()` makes, without its automatic load and attach): the instructions
are what bcc would load (`bpf_function_start`, what `BPF.dump_func` returns)
and map definitions are read back from the kernel. Every load, from a fresh
compile or from the cache, goes through the same `load`: there is one way
programs reach the kernel. bcc also passes BTF (line and function info) with
its programs; memtrace's programs need none (no global functions, spin
locks, kfuncs: `compile_spec` refuses anything that would).

A cache entry is a JSON file named by a hash of everything that can change
the compiled code (`cache_key`): the BPF sources, cflags, the kernel
(release, build, machine), the header tree bcc compiles against, bcc's
library, the attach plan and this module's format. Loading also checks the
tracepoints' format files (bcc builds the argument structs from them) and,
after each program's load, its kernel tag (a hash of the instructions with
the map references zeroed) against the tag recorded at compile time.

Entries live in /var/cache/memtrace/bpf (root), else in
/tmp/memtrace-bpf-UID; a directory or entry not owned by this user, or
writable by others, is never read (a planted entry would be bytecode loaded
by root). MEMTRACE_BPF_CACHE=DIR overrides the place, MEMTRACE_BPF_CACHE=off
disables the cache (compile at every start), MEMTRACE_BPF_CACHE=bcc loads
with bcc's own loader (tracer/probes.py: the last resort, and the reference
the tests compare with).

Detaching is the slow part of the end: the kernel releases a tracepoint's
perf event with an RCU grace period under a global mutex, about 80 ms each
here (kernel/trace/trace_event_perf.c, perf_trace_event_unreg), so 20
tracepoints take well over a second. `release` hands the attachment file
descriptors to a helper process that closes them (by exiting) after this
process has dropped its own copies; the caller goes on at once.
"""
from __future__ import annotations

import base64
import ctypes as ct
import errno
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

FORMAT = 1  # bump when the entry format or the loader changes

DEFAULT_DIR = Path("/var/cache/memtrace/bpf")
ENV = "MEMTRACE_BPF_CACHE"
KEEP_ENTRIES = 16

# bpf(2) commands and constants (include/uapi/linux/bpf.h)
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_DELETE_BATCH = 27
BPF_PROG_LOAD = 5
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15

PROG_TRACEPOINT = 5
PROG_PERF_EVENT = 7
PROG_RAW_TRACEPOINT = 17

MAP_PERCPU_HASH = 5
MAP_PERCPU_ARRAY = 6
MAP_LRU_PERCPU_HASH = 10
PERCPU_MAPS = (MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH)

_LD_IMM64 = 0x18          # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_CALL = 0x85              # BPF_JMP | BPF_CALL
PSEUDO_MAP_FD = 1         # ld_imm64 src_reg: imm is a map fd
_INSN = struct.Struct("<BBhi")

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
_ATTR_SIZE = 128


class CacheError(Exception):
    """A cache entry or a spec that cannot be used (the caller compiles)."""


class NotCacheable(CacheError):
    """The compiled module uses something the loader does not reproduce."""


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
               flags: int, name: str) -> int:
    a = _attr()
    struct.pack_into("<7I16s", a, 0, map_type, key_size, value_size, max_entries,
                     flags, 0, 0, _name16(name))
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


# ---- the spec: what bcc compiled ----

@dataclass
class Attach:
    kind: str                          # "tracepoint", "raw_tracepoint", "perf_event"
    target: str                        # "cat:name", "name", "" (perf_event)
    ev_type: int = 0                   # perf_event only
    ev_config: int = 0
    sample_period: int = 0


@dataclass
class ProgSpec:
    name: str                          # bcc's function name
    kname: str                         # the kernel's (bcc's truncation)
    type: int
    insns: bytes
    relocs: list[tuple[int, str]]      # (instruction index, map name)
    attach: list[Attach]
    tag: str = ""                      # the kernel's tag, recorded at first load


@dataclass
class Spec:
    maps: list[MapDef]
    progs: list[ProgSpec]
    license: str
    kern_version: int
    formats: dict[str, str] = field(default_factory=dict)  # "cat:name" -> sha256 of its format
    key: str = ""

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "key": self.key, "license": self.license,
            "kern_version": self.kern_version, "formats": self.formats,
            "maps": [vars(m) for m in self.maps],
            "progs": [{"name": p.name, "kname": p.kname, "type": p.type, "tag": p.tag,
                       "insns": base64.b64encode(p.insns).decode(),
                       "relocs": p.relocs, "attach": [vars(a) for a in p.attach]}
                      for p in self.progs],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise CacheError(f"entry format {d.get('format')}, not {FORMAT}")
            return cls(
                maps=[MapDef(**m) for m in d["maps"]],
                progs=[ProgSpec(name=p["name"], kname=p["kname"], type=int(p["type"]),
                                insns=base64.b64decode(p["insns"], validate=True),
                                relocs=[(int(i), str(m)) for i, m in p["relocs"]],
                                attach=[Attach(**a) for a in p["attach"]], tag=p.get("tag", ""))
                       for p in d["progs"]],
                license=d["license"], kern_version=int(d["kern_version"]),
                formats=dict(d.get("formats", {})), key=d.get("key", ""))
        except CacheError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise CacheError(f"unreadable entry: {type(e).__name__}: {e}") from None


def relocations(insns: bytes, fd_names: dict[int, str]) -> list[tuple[int, str]]:
    """(index, map name) of every instruction that loads a map's fd.

    Refuses (NotCacheable) what the loader does not reproduce: a 64-bit load
    of anything but a plain constant or a map fd (map values, BTF ids,
    functions), and calls of kernel functions."""
    if len(insns) % 8:
        raise NotCacheable(f"{len(insns)} bytes of instructions, not a multiple of 8")
    out: list[tuple[int, str]] = []
    n = len(insns) // 8
    i = 0
    while i < n:
        code, regs, _off, imm = _INSN.unpack_from(insns, i * 8)
        src = regs >> 4
        if code == _LD_IMM64:
            if src == PSEUDO_MAP_FD:
                if imm not in fd_names:
                    raise NotCacheable(f"instruction {i} loads fd {imm}, which is no map of the module")
                out.append((i, fd_names[imm]))
            elif src != 0:
                raise NotCacheable(f"instruction {i}: 64-bit load with src_reg {src}")
            i += 2
            continue
        if code == _CALL and src not in (0, 1):  # 1: a BPF-to-BPF call (relative)
            raise NotCacheable(f"instruction {i}: call with src_reg {src} (kernel function)")
        i += 1
    return out


def patch(insns: bytes, relocs: list[tuple[int, str]], fds: dict[str, int]) -> bytes:
    """The instructions with each map reference set to this process's fd."""
    buf = bytearray(insns)
    for i, name in relocs:
        code, regs, _off, _imm = _INSN.unpack_from(buf, i * 8)
        if code != _LD_IMM64 or regs >> 4 != PSEUDO_MAP_FD:
            raise CacheError(f"relocation {i} ({name}) is not a map load")
        struct.pack_into("<i", buf, i * 8 + 4, fds[name])
    return bytes(buf)


def tracefs() -> Path:
    for d in (Path("/sys/kernel/debug/tracing"), Path("/sys/kernel/tracing")):
        if (d / "events").is_dir():
            return d
    return Path("/sys/kernel/tracing")


def format_hash(tp: str) -> str:
    cat, _, name = tp.partition(":")
    try:
        return hashlib.sha256((tracefs() / "events" / cat / name / "format").read_bytes()).hexdigest()
    except OSError:
        return "missing"


def plan_of(fname: str, perf_events: dict[str, list[tuple[int, int, int]]]) -> tuple[int, list[Attach]] | None:
    """Program type and attachments of a compiled function, by bcc's naming
    rules (bcc/__init__.py, _trace_autoload) and the perf-event plan; None
    for a function bcc would not load."""
    if fname.startswith("tracepoint__"):
        return PROG_TRACEPOINT, [Attach("tracepoint", fname[len("tracepoint__"):].replace("__", ":"))]
    if fname.startswith("raw_tracepoint__"):
        return PROG_RAW_TRACEPOINT, [Attach("raw_tracepoint", fname[len("raw_tracepoint__"):])]
    if fname in perf_events:
        return PROG_PERF_EVENT, [Attach("perf_event", "", t, c, p) for t, c, p in perf_events[fname]]
    for prefix in ("kprobe__", "kretprobe__", "kfunc__", "kretfunc__", "lsm__"):
        if fname.startswith(prefix):
            raise NotCacheable(f"{fname}: {prefix} programs are not reproduced")
    return None


def compile_spec(source: Path, cflags: list[str],
                 perf_events: dict[str, list[tuple[int, int, int]]]) -> Spec:
    """Compiles `source` with bcc (as bcc.BPF(src_file=..., cflags=...) does,
    without loading anything) and returns what it compiled."""
    lib, module = bcc_module(source, cflags)
    try:
        return spec_of_module(lib, module, perf_events, source)
    finally:
        lib.bpf_module_destroy(module)


def _libbcc():
    from bcc import libbcc  # slow to import, and only needed to compile
    lib = libbcc.lib
    for fn, res, args in (("bpf_num_tables", ct.c_ulonglong, [ct.c_void_p]),
                          ("bpf_table_name", ct.c_char_p, [ct.c_void_p, ct.c_ulonglong]),
                          ("bpf_table_fd_id", ct.c_int, [ct.c_void_p, ct.c_ulonglong])):
        getattr(lib, fn).restype = res
        getattr(lib, fn).argtypes = args
    return lib


def module_tables(module) -> list[tuple[str, int]]:
    """(name, fd) of every map of a bcc module (bcc.BPF().module)."""
    lib = _libbcc()
    out = []
    for i in range(lib.bpf_num_tables(module)):
        fd = lib.bpf_table_fd_id(module, i)
        if fd >= 0:
            out.append((lib.bpf_table_name(module, i).decode(), fd))
    return out


def bcc_module(source: Path, cflags: list[str]):
    """(libbcc, module): `source` compiled by bcc, its maps created, nothing
    loaded. The caller destroys the module (lib.bpf_module_destroy)."""
    lib = _libbcc()
    # bcc.BPF's own preparation: USDT arguments (none) before the source
    text = lib.bcc_usdt_genargs((ct.c_void_p * 0)(), 0) + source.read_bytes()
    flags = (ct.c_char_p * len(cflags))(*[f.encode() for f in cflags])
    module = lib.bpf_module_create_c_from_string(text, 0, flags, len(cflags), True, None)
    if not module:
        raise CacheError(f"bcc could not compile {source}")
    return lib, module


def spec_of_module(lib, module, perf_events: dict[str, list[tuple[int, int, int]]],
                   source: Path | str = "the module") -> Spec:
    maps: list[MapDef] = []
    fd_names: dict[int, str] = {}
    for name, fd in module_tables(module):
        d, _ = map_info(fd, name)
        maps.append(d)
        fd_names[fd] = name
    progs: list[ProgSpec] = []
    for i in range(lib.bpf_num_functions(module)):
        fname = lib.bpf_function_name(module, i).decode()
        plan = plan_of(fname, perf_events)
        if plan is None:
            continue
        start = lib.bpf_function_start(module, fname.encode())
        size = lib.bpf_function_size(module, fname.encode())
        insns = ct.string_at(start, size)
        progs.append(ProgSpec(fname, _kernel_name(fname), plan[0], insns,
                              relocations(insns, fd_names), plan[1]))
    missing = set(perf_events) - {p.name for p in progs}
    if missing:
        raise CacheError(f"no function {sorted(missing)} in {source}")
    formats = {a.target: format_hash(a.target) for p in progs for a in p.attach
               if a.kind == "tracepoint"}
    return Spec(maps, progs, lib.bpf_module_license(module).decode(),
                int(lib.bpf_module_kern_version(module)), formats)


def _kernel_name(fname: str) -> str:
    """The name bcc gives the kernel (libbpf.c, bcc_prog_load_xattr)."""
    for prefix in ("kprobe__", "kretprobe__", "tracepoint__", "raw_tracepoint__"):
        if fname.startswith(prefix):
            fname = fname[len(prefix):]
            break
    return fname[:15]


# ---- loading and attaching ----

_bcc_bpf: ct.CDLL | None = None


def _attach_lib() -> ct.CDLL:
    """bcc's libbpf part (no LLVM: 2 ms to open where libbcc.so takes 30)."""
    global _bcc_bpf
    if _bcc_bpf is None:
        for name in ("libbcc_bpf.so.0", "libbcc.so.0"):
            try:
                lib = ct.CDLL(name, use_errno=True)
                break
            except OSError:
                continue
        else:
            raise LoadError(errno.ENOENT, "neither libbcc_bpf.so.0 nor libbcc.so.0 found")
        lib.bpf_attach_tracepoint.restype = ct.c_int
        lib.bpf_attach_tracepoint.argtypes = [ct.c_int, ct.c_char_p, ct.c_char_p]
        lib.bpf_attach_raw_tracepoint.restype = ct.c_int
        lib.bpf_attach_raw_tracepoint.argtypes = [ct.c_int, ct.c_char_p]
        lib.bpf_attach_perf_event.restype = ct.c_int
        lib.bpf_attach_perf_event.argtypes = [ct.c_int, ct.c_uint32, ct.c_uint32, ct.c_uint64,
                                              ct.c_uint64, ct.c_int, ct.c_int, ct.c_int]
        _bcc_bpf = lib
    return _bcc_bpf


@dataclass
class Loaded:
    """Maps, programs and attachments in the kernel, by file descriptor."""
    maps: dict[str, Map] = field(default_factory=dict)
    progs: dict[str, int] = field(default_factory=dict)
    links: list[int] = field(default_factory=list)
    prog_ids: list[int] = field(default_factory=list)
    map_ids: list[int] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def fds(self) -> list[int]:
        return self.links + list(self.progs.values()) + [m.fd for m in self.maps.values()]


def load(spec: Spec, check_tags: bool = True, attach: bool = True,
         skip: frozenset[str] = frozenset()) -> Loaded:
    """Creates the maps, loads and (with `attach`) attaches the programs of
    `spec`, but those named in `skip` (loaded, not attached). On any failure
    everything made so far is released and LoadError or CacheError raised."""
    stale = [tp for tp, h in spec.formats.items() if format_hash(tp) != h]
    if stale:
        raise CacheError(f"tracepoint format changed: {', '.join(sorted(stale))}")
    out = Loaded()
    t0 = time.monotonic()
    try:
        for d in spec.maps:
            fd = map_create(d.type, d.key_size, d.value_size, d.max_entries, d.flags, d.name)
            out.maps[d.name] = Map(fd, d)
            out.map_ids.append(map_info(fd)[1])
        fds = {name: m.fd for name, m in out.maps.items()}
        for p in spec.progs:
            fd = prog_load(p.type, patch(p.insns, p.relocs, fds), spec.license, p.kname,
                           spec.kern_version)
            out.progs[p.name] = fd
            info = prog_info(fd)
            out.prog_ids.append(info["id"])
            if check_tags and p.tag and info["tag"] != p.tag:
                raise CacheError(f"program {p.name}: kernel tag {info['tag']}, expected {p.tag}")
            p.tag = p.tag or info["tag"]
        t1 = time.monotonic()
        lib = _attach_lib()
        cpus = online_cpus()
        for p in spec.progs if attach else []:
            if p.name in skip:
                continue
            fd = out.progs[p.name]
            for a in p.attach:
                if a.kind == "tracepoint":
                    cat, _, name = a.target.partition(":")
                    links = [lib.bpf_attach_tracepoint(fd, cat.encode(), name.encode())]
                elif a.kind == "raw_tracepoint":
                    links = [lib.bpf_attach_raw_tracepoint(fd, a.target.encode())]
                elif a.kind == "perf_event":
                    links = [lib.bpf_attach_perf_event(fd, a.ev_type, a.ev_config, a.sample_period,
                                                       0, -1, cpu, -1) for cpu in cpus]
                else:
                    raise CacheError(f"program {p.name}: unknown attachment {a.kind}")
                out.links.extend(x for x in links if x >= 0)
                if any(x < 0 for x in links):
                    raise LoadError(errno.EINVAL, f"cannot attach {p.name} to {a.kind} {a.target}")
        out.timing = {"load": t1 - t0, "attach": time.monotonic() - t1}
    except BaseException:
        release(out.fds())
        raise
    return out


def release(fds: Iterable[int], background: bool = True, close_own=None) -> None:
    """Closes `fds` (this process's copies; or calls `close_own`, which
    closes them). With `background`, the expensive part, the kernel's release
    of the attachments, happens in a helper process: it inherits the fds and
    exits (closing them) when the pipe it reads is closed, which is after
    this process has closed its copies: the last reference is the helper's."""
    fds = [fd for fd in dict.fromkeys(fds) if fd >= 0]
    helper = _holder(fds) if background and fds else None
    if close_own is not None:
        close_own()
    else:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    if helper is not None:
        helper[1].close()      # EOF: the helper exits and the kernel detaches


def _holder(fds: list[int]):
    cat = shutil.which("cat") or "/bin/cat"
    cmd = [cat] if os.access(cat, os.X_OK) else [sys.executable, "-S", "-c",
                                                 "import sys; sys.stdin.buffer.read()"]
    try:
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(cmd, stdin=r, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=fds,
                                    start_new_session=True)
        finally:
            os.close(r)
    except OSError:
        return None            # closes them here, slowly
    _HELPERS.append(proc)
    return proc, os.fdopen(w, "wb")


_HELPERS: list[subprocess.Popen] = []  # reaped by subprocess's own bookkeeping


# ---- the cache ----

def cache_key(source_dir: Path, cflags: list[str], extra: str = "") -> str:
    """A hash of everything the compiled code depends on."""
    h = hashlib.sha256()

    def put(label: str, value: object) -> None:
        h.update(f"{label}={value!r}\n".encode())

    put("format", FORMAT)
    for p in sorted(source_dir.iterdir()):
        if p.suffix in (".c", ".h") and p.is_file():
            put("source", p.name)
            h.update(p.read_bytes())
    put("cflags", list(cflags))
    u = os.uname()
    put("kernel", (u.release, u.version, u.machine))
    put("headers", _headers_identity())
    put("bcc", _file_identity("libbcc.so.0"))
    put("extra", extra)
    return h.hexdigest()[:32]


def _stat_id(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def _headers_identity() -> tuple:
    """The header tree bcc compiles against (its loader's order: the
    BCC_KERNEL_SOURCE variable, /lib/modules/RELEASE/build, the kernel's own
    kheaders)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    rel = os.uname().release
    parts: tuple = ("env", env)
    if env:
        ver = os.path.join(env, "MEMTRACE_HEADERS_VERSION")
        try:
            with open(ver) as f:
                parts += (f.read().strip(),)
        except OSError:
            pass
        parts += (_stat_id(env), _stat_id(os.path.join(env, "include")))
    parts += (_stat_id(f"/lib/modules/{rel}/build"), _stat_id("/sys/kernel/kheaders.tar.xz"))
    return parts


def _file_identity(soname: str) -> tuple:
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
              "/usr/lib", "/usr/local/lib"):
        p = os.path.join(d, soname)
        if os.path.exists(p):
            return _stat_id(p)
    return (soname, None)


def _safe_dir(d: Path, create: bool) -> str | None:
    """None if `d` is a directory this user owns and no one else may write
    (made if `create`), else why not."""
    try:
        if create:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        return f"{d}: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{d}: not a directory"
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return f"{d}: owned by uid {st.st_uid} or writable by others"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"{d}: not writable"
    return None


class Cache:
    """The directory of entries. `dir` None: caching is off (`why`)."""

    def __init__(self, where: str | Path | None = None) -> None:
        self.why = ""
        self.dir: Path | None = None
        setting = str(where) if where is not None else os.environ.get(ENV)
        if setting is not None and setting.strip().lower() in ("", "0", "off", "no", "none"):
            self.why = f"off ({ENV}={setting})" if where is None else "off"
            return
        candidates = [Path(setting)] if setting else \
            [DEFAULT_DIR, Path(tempfile.gettempdir()) / f"memtrace-bpf-{os.geteuid()}"]
        reasons = []
        for d in candidates:
            bad = _safe_dir(d, create=True)
            if bad is None:
                self.dir = d
                return
            reasons.append(bad)
        self.why = "no usable directory: " + "; ".join(reasons)

    def path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{key}.json"

    def get(self, key: str) -> Spec:
        """The entry for `key`; CacheError (with the reason) if none is usable."""
        if self.dir is None:
            raise CacheError(self.why)
        why = self.uncacheable(key)
        if why is not None:
            raise CacheError(f"marked not cacheable: {why}")
        p = self.path(key)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CacheError("no entry") from None
        except OSError as e:
            raise CacheError(f"{p}: {e.strerror or e}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
                raise CacheError(f"{p}: not a regular file of uid {os.geteuid()} writable by it alone")
            spec = Spec.from_json(f.read().decode())
        if spec.key != key:
            raise CacheError(f"{p}: entry is for key {spec.key}")
        if not all(p.tag for p in spec.progs):
            raise CacheError(f"{p}: a program has no recorded tag")
        return spec

    def put(self, key: str, spec: Spec) -> str | None:
        """Stores `spec` (atomically); None, or why it was not stored."""
        if self.dir is None:
            return self.why
        spec.key = key
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{key}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(spec.to_json())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path(key))
        except OSError as e:
            return f"{self.dir}: {e.strerror or e}"
        self._prune()
        return None

    def uncacheable(self, key: str) -> str | None:
        """Why `key` was marked not cacheable (bcc's loader is used), or None."""
        if self.dir is None:
            return None
        try:
            return (self.dir / f"{key}.nocache").read_text().strip() or "marked"
        except OSError:
            return None

    def mark_uncacheable(self, key: str, why: str) -> None:
        if self.dir is None:
            return
        try:
            (self.dir / f"{key}.nocache").write_text(why + "\n")
        except OSError:
            pass

    def _prune(self) -> None:
        assert self.dir is not None
        try:
            entries = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
            for p in entries[KEEP_ENTRIES:]:
                p.unlink(missing_ok=True)
                p.with_suffix(".nocache").unlink(missing_ok=True)
        except OSError:
            pass
