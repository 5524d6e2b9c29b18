"""Kernel functions (kfuncs) memtrace's BPF programs call, linked at compile time.

bcc links no kfunc calls, so the BPF side calls a kfunc through a helper
pointer whose number is a marker (MT_KFUNC_* in bpf/memtrace.h), and `link`
turns every call of a marker into a call of the kernel function of that
name: src_reg BPF_PSEUDO_KFUNC_CALL, imm the function's BTF id in vmlinux,
off 0 (vmlinux, no module), which is what libbpf does for an
`extern ... __ksym` declaration (libbpf.c, bpf_object__relocate_data).

The one kfunc used is bpf_rdonly_cast (kernel/bpf/helpers.c, a common kfunc
every program type may call since 6.2; the verifier inlines it into a move):
it types a struct pt_regs pointer, a tracepoint's argument, so that the
program reads the saved user registers in place with plain loads the
verifier turns into fault-safe ones (BPF_PROBE_MEM), where a
bpf_probe_read_kernel call of one register cost about 35 ns of a fault on
this VM and the load about 5 (docs/benchmarks.md, fourteenth session). The
verifier checks those loads against the running kernel's BTF.

Ids are looked up in /sys/kernel/btf/vmlinux with libbpf (bcc's own
dependency) when memtrace compiles, never at a cached start: the cache key
covers the kernel build (tracer/bpfcache.py). A kernel without the kfunc or
without BTF gets no MT_KFUNC flags, and the BPF side copies the registers
with bpf_probe_read_kernel instead (as it does under bcc's own loader).
"""
from __future__ import annotations

import ctypes as ct
import struct

from tracer.layout import C

BTF_KIND_STRUCT = 4
BTF_KIND_FUNC = 12
PSEUDO_KFUNC_CALL = 2     # include/uapi/linux/bpf.h
_CALL = 0x85              # BPF_JMP | BPF_CALL
_INSN = struct.Struct("<BBhi")

# marker (bpf/memtrace.h) -> the kernel function it stands for
KFUNCS = {C["MT_KFUNC_RDONLY_CAST"]: "bpf_rdonly_cast"}


def _btf_ids(names: list[tuple[str, int]]) -> list[int] | None:
    """BTF ids in vmlinux of (name, kind) pairs; None if there is no BTF or
    libbpf, or any of them is missing."""
    try:
        lib = ct.CDLL("libbpf.so.1")
        lib.btf__load_vmlinux_btf.restype = ct.c_void_p
        lib.btf__find_by_name_kind.restype = ct.c_int
        lib.btf__find_by_name_kind.argtypes = [ct.c_void_p, ct.c_char_p, ct.c_uint32]
        lib.btf__free.argtypes = [ct.c_void_p]
    except (OSError, AttributeError):
        return None
    btf = lib.btf__load_vmlinux_btf()     # NULL (None) on error, libbpf 1.x
    if not btf:
        return None
    try:
        ids = [lib.btf__find_by_name_kind(btf, n.encode(), kind) for n, kind in names]
    finally:
        lib.btf__free(btf)
    return ids if all(i > 0 for i in ids) else None


def resolve() -> tuple[list[str], dict[int, int]]:
    """(cflags, links): the compile flags that make the BPF side call the
    kfuncs, and marker -> BTF id for `link`; ([], {}) when this kernel
    cannot have them."""
    ids = _btf_ids([(name, BTF_KIND_FUNC) for name in KFUNCS.values()]
                   + [("pt_regs", BTF_KIND_STRUCT)])
    if ids is None:
        return [], {}
    *funcs, pt_regs = ids
    return [f"-DMT_PT_REGS_BTF_ID={pt_regs}"], dict(zip(KFUNCS, funcs))


def link(insns: bytes, links: dict[int, int]) -> bytes:
    """The instructions with every helper call of a marker made a call of
    its kernel function. A marker call with no link stays (the verifier
    refuses it: an unknown helper)."""
    buf = bytearray(insns)
    i = 0
    while i < len(buf) // 8:
        code, regs, off, imm = _INSN.unpack_from(buf, i * 8)
        if code == 0x18:          # a 64-bit load takes two slots
            i += 2
            continue
        if code == _CALL and regs >> 4 == 0 and imm in links:
            _INSN.pack_into(buf, i * 8, code, (PSEUDO_KFUNC_CALL << 4) | (regs & 15), 0, links[imm])
        i += 1
    return bytes(buf)
