"""What bcc compiled, as memtrace keeps it: `Spec`, each program's
instructions, the maps' definitions, and which instructions refer to which
map (`relocations`), in a JSON form (tracer/bpfcache.py stores it).

The compiler, `compile_spec`, is bcc itself (libbcc's module, the same call
`bcc.BPF()` makes, without its automatic load and attach): the instructions
are what bcc would load (`bpf_function_start`, what `BPF.dump_func` returns)
and map definitions are read back from the kernel. bcc also passes BTF (line
and function info) with its programs; memtrace's programs need none (no
global functions, spin locks: `compile_spec` refuses anything that would).
Calls of kernel functions (kfuncs) are linked when compiling (`link`,
tracer/bpf_kfunc.py): the spec holds them resolved. A spec also records the
hash of each tracepoint's format file (bcc builds the argument structs from
them), which the loader checks.
"""
from __future__ import annotations

import base64
import ctypes as ct
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracer.bpf_syscall import (MAP_ARRAY_OF_MAPS, PROG_PERF_EVENT, PROG_RAW_TRACEPOINT,
                                PROG_TRACEPOINT, MapDef, map_info)

FORMAT = 2  # bump when the entry format or the loader changes

_LD_IMM64 = 0x18          # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_CALL = 0x85              # BPF_JMP | BPF_CALL
PSEUDO_MAP_FD = 1         # ld_imm64 src_reg: imm is a map fd
PSEUDO_KFUNC_CALL = 2     # call src_reg: imm is a kernel function's BTF id (off 0: vmlinux)
_INSN = struct.Struct("<BBhi")


class CacheError(Exception):
    """A cache entry or a spec that cannot be used (the caller compiles)."""


class NotCacheable(CacheError):
    """The compiled module uses something the loader does not reproduce."""


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
    functions), and calls of kernel functions in modules (their BTF's fd
    would have to be found and passed). Calls of vmlinux's kernel functions
    stay as they are: their BTF ids are the kernel build's, which the cache
    key covers."""
    if len(insns) % 8:
        raise NotCacheable(f"{len(insns)} bytes of instructions, not a multiple of 8")
    out: list[tuple[int, str]] = []
    n = len(insns) // 8
    i = 0
    while i < n:
        code, regs, off, imm = _INSN.unpack_from(insns, i * 8)
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
        if code == _CALL and src == PSEUDO_KFUNC_CALL and off != 0:
            raise NotCacheable(f"instruction {i}: call of a module's kernel function")
        if code == _CALL and src not in (0, 1, PSEUDO_KFUNC_CALL):  # 1: a BPF-to-BPF call
            raise NotCacheable(f"instruction {i}: call with src_reg {src}")
        i += 1
    return out


def link(insns: bytes, kfuncs: dict[int, int]) -> bytes:
    """The instructions with every helper call of a kfunc marker (its
    number a key of `kfuncs`, tracer/bpf_kfunc.py) made a call of the
    kernel function whose vmlinux BTF id is its value, as libbpf links an
    `extern ... __ksym` (libbpf.c, bpf_object__relocate_data). A marker
    call with no link stays: the verifier refuses it (an unknown helper)."""
    buf = bytearray(insns)
    i = 0
    while i < len(buf) // 8:
        code, regs, _off, imm = _INSN.unpack_from(buf, i * 8)
        if code == _LD_IMM64:      # two slots: the second is no instruction
            i += 2
            continue
        if code == _CALL and regs >> 4 == 0 and imm in kfuncs:
            _INSN.pack_into(buf, i * 8, code, (PSEUDO_KFUNC_CALL << 4) | (regs & 15), 0, kfuncs[imm])
        i += 1
    return bytes(buf)


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
                 perf_events: dict[str, list[tuple[int, int, int]]],
                 kfuncs: dict[int, int] | None = None) -> Spec:
    """Compiles `source` with bcc (as bcc.BPF(src_file=..., cflags=...) does,
    without loading anything) and returns what it compiled, its calls of
    kfunc markers linked by `kfuncs` (`link`)."""
    lib, module = bcc_module(source, cflags)
    try:
        return spec_of_module(lib, module, perf_events, source, kfuncs)
    finally:
        lib.bpf_module_destroy(module)


def _libbcc():
    from tracer.preflight import import_bcc   # only needed to compile
    lib = import_bcc().libbcc.lib
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
                   source: Path | str = "the module", kfuncs: dict[int, int] | None = None) -> Spec:
    maps: list[MapDef] = []
    fd_names: dict[int, str] = {}
    inner = inner_maps(source) if isinstance(source, Path) else {}
    for name, fd in module_tables(module):
        d, _ = map_info(fd, name)
        if d.type == MAP_ARRAY_OF_MAPS:
            if name not in inner:
                raise NotCacheable(f"map of maps {name}: its inner map is not declared"
                                   " by BPF_ARRAY_OF_MAPS in the source")
            d = replace(d, inner=inner[name])
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
        insns = link(ct.string_at(start, size), kfuncs or {})
        progs.append(ProgSpec(fname, _kernel_name(fname), plan[0], insns,
                              relocations(insns, fd_names), plan[1]))
    missing = set(perf_events) - {p.name for p in progs}
    if missing:
        raise CacheError(f"no function {sorted(missing)} in {source}")
    formats = {a.target: format_hash(a.target) for p in progs for a in p.attach
               if a.kind == "tracepoint"}
    return Spec(maps, progs, lib.bpf_module_license(module).decode(),
                int(lib.bpf_module_kern_version(module)), formats)


_ARRAY_OF_MAPS = re.compile(r'^\s*BPF_ARRAY_OF_MAPS\(\s*(\w+)\s*,\s*"(\w+)"', re.M)


def inner_maps(source: Path) -> dict[str, str]:
    """Each BPF_ARRAY_OF_MAPS(name, "inner", n) of the source: name -> inner.
    The kernel does not tell a map of maps' template once it is made, and
    the loader needs it to make the map again."""
    return dict(_ARRAY_OF_MAPS.findall(source.read_text()))


def _kernel_name(fname: str) -> str:
    """The name bcc gives the kernel (libbpf.c, bcc_prog_load_xattr)."""
    for prefix in ("kprobe__", "kretprobe__", "tracepoint__", "raw_tracepoint__"):
        if fname.startswith(prefix):
            fname = fname[len(prefix):]
            break
    return fname[:15]
