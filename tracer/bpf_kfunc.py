"""Kernel functions (kfuncs) memtrace's BPF programs call, linked at compile time.

bcc links no kfunc calls, so the BPF side calls a kfunc through a helper
pointer whose number is a marker (MT_KFUNC_* in bpf/memtrace.h), and
tracer/bpf_spec.py's `link` turns every call of a marker into a call of the
kernel function of that name: src_reg BPF_PSEUDO_KFUNC_CALL, imm the function's BTF id in vmlinux,
off 0 (vmlinux, no module), which is what libbpf does for an
`extern ... __ksym` declaration (libbpf.c, bpf_object__relocate_data).

The one kfunc used is bpf_rdonly_cast (kernel/bpf/helpers.c; a raw
tracepoint program on this 6.18 kernel may call it: tests/unit/test_bpf_kfunc.py):
it types a struct pt_regs pointer, a tracepoint's argument, so that the
program reads the saved user registers in place with plain loads the
verifier turns into fault-safe ones (BPF_PROBE_MEM), where a
bpf_probe_read_kernel call of one register cost about 35 ns of a fault on
this VM and the load about 5 (docs/benchmarks.md, fourteenth session). The
verifier checks those loads against the running kernel's BTF.

Ids are looked up in /sys/kernel/btf/vmlinux with libbpf (bcc's own
dependency) when memtrace compiles, never at a cached start: the cache key
covers the kernel build (tracer/bpfcache.py). A kernel without the kfunc or
without BTF gets no MT_PT_REGS_BTF_ID flag, and the BPF side copies the registers
with bpf_probe_read_kernel instead (as it does under bcc's own loader).
"""
from __future__ import annotations

import ctypes as ct

from tracer.layout import C

BTF_KIND_STRUCT = 4       # include/uapi/linux/btf.h
BTF_KIND_FUNC = 12

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
    kfuncs, and marker -> BTF id for bpf_spec.link; ([], {}) when this
    kernel cannot have them."""
    ids = _btf_ids([(name, BTF_KIND_FUNC) for name in KFUNCS.values()]
                   + [("pt_regs", BTF_KIND_STRUCT)])
    if ids is None:
        return [], {}
    *funcs, pt_regs = ids
    return [f"-DMT_PT_REGS_BTF_ID={pt_regs}"], dict(zip(KFUNCS, funcs))
