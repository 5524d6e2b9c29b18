"""Constants and classification rules of the address-space model.

What a mapping *is* (heap, stack, file, ...) is decided here from the
attributes /proc/PID/maps would show, so the model (tracer.as_model), the
fault attribution (tracer.as_faults) and the maps text helpers
(tracer.maps_text) agree on one rule.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# include/uapi/asm-generic/mman-common.h, mman.h (x86 values)
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
PROT_MASK = 7                    # PROT_SEM (8) changes nothing on x86
PROT_GROWSDOWN = 0x01000000
MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE = 1, 2, 3
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_STACK = 0x20000
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
MADV_DONTNEED = 4
EXIT_GROUP_DEAD = 1              # exit row flags (bpf/memtrace.h MT_EXIT_GROUP_DEAD)
ENOMEM = 12
MAX_ERRNO = 4095                 # include/linux/err.h: IS_ERR_VALUE

# x86 page fault error code (arch/x86/include/asm/trap_pf.h)
PF_WRITE, PF_INSTR = 2, 16

# The kernel's defaults for stack growth (mm/mmap.c): RLIMIT_STACK 8 MiB
# (acct_stack_growth) and stack_guard_gap 256 pages (expand_downwards).
STACK_LIMIT = 8 << 20
STACK_GUARD_GAP_PAGES = 256

KINDS = ["heap", "anon", "file", "stack", "thread_stack", "vdso", "shm", "guard"]
CREATED_BY = ["exec", "attach", "mmap", "brk", "mremap", "mprotect", "munmap",
              "fork", "stack_growth"]
DESTROYED_BY = CREATED_BY + ["exit"]
ACCESS = ["read", "write", "exec"]
BY = {name: i for i, name in enumerate(DESTROYED_BY)}

KIND_DTYPE = pd.CategoricalDtype(KINDS)
CREATED_DTYPE = pd.CategoricalDtype(CREATED_BY)
DESTROYED_DTYPE = pd.CategoricalDtype(DESTROYED_BY)
ACCESS_DTYPE = pd.CategoricalDtype(ACCESS)

# Names the kernel gives special mappings (arch/x86/entry/vdso/vma.c,
# arch/x86/entry/vsyscall/vsyscall_64.c); all of them are "vdso" here.
VDSO_NAMES = frozenset({"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"})
HEAP = "[heap]"
STACK = "[stack]"
# mm/shmem.c shmem_zero_setup(): a MAP_SHARED|MAP_ANONYMOUS mapping is a
# shmem file named "dev/zero", unlinked: /proc/PID/maps shows this.
SHARED_ANON = "/dev/zero (deleted)"
_SHM_PREFIXES = ("/dev/shm/", "/SYSV", "/memfd:", "/dev/zero")


def is_error(ret: int) -> bool:
    """A syscall's negative errno (IS_ERR_VALUE): the call changed nothing."""
    return ret < 0


def page_align(n: int, page: int) -> int:
    return (n + page - 1) & ~(page - 1)


def perms(prot: int, shared: bool) -> str:
    """The 'r-xp' column of /proc/PID/maps (fs/proc/task_mmu.c show_map_vma)."""
    return ("r" if prot & PROT_READ else "-") + ("w" if prot & PROT_WRITE else "-") \
        + ("x" if prot & PROT_EXEC else "-") + ("s" if shared else "p")


_PERMS = [perms(p, s) for s in (False, True) for p in range(8)]


def perms_array(prot: np.ndarray, shared: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """The perms of many mappings, as a pandas string array."""
    return pd.array(_PERMS, dtype="str").take((prot.astype(np.int64) & 7)
                                              + 8 * shared.astype(np.int64))


def has_file(path: str | None) -> bool:
    """A mapping with a vm_file: the path column starts with '/'."""
    return bool(path) and path[0] == "/"


def mergeable(a, b) -> bool:
    """Would the kernel show a and b (adjacent, a below b) as one VMA?
    (mm/vma.c is_mergeable_vma: same flags, same file, contiguous pgoff.)
    Anonymous private neighbours with equal perms merge ([heap] included: the
    kernel names any VMA over the brk area [heap]); a file's pieces merge if
    their offsets are contiguous; named anonymous ones if the names match."""
    if a.end != b.start or a.prot != b.prot or a.shared != b.shared:
        return False
    pa, pb = a.path, b.path
    fa, fb = getattr(a, "file", has_file(pa)), getattr(b, "file", has_file(pb))
    if not fa and not fb:
        if a.shared:
            return False
        if pa in (None, HEAP) and pb in (None, HEAP):
            return True
        return pa == pb and pa is not None and pa.startswith("[anon:")
    if fa and fb:
        if pa != pb or a.off + (a.end - a.start) != b.off:
            return False
        return pa is not None or getattr(a, "fd", None) == getattr(b, "fd", None)
    return False



def kind_of(path: str | None, prot: int, shared: bool, file: bool, tstack: bool) -> str:
    """The kind of one mapping (see classify for the rule)."""
    if path in VDSO_NAMES:
        return "vdso"
    if path == HEAP:
        return "heap"
    if path == STACK:
        return "stack"
    if path is not None and path.startswith(_SHM_PREFIXES):
        # memfd is shmem too, but a private mapping of it is copy-on-write
        return "file" if path.startswith("/memfd:") and not shared else "shm"
    if shared and not file:
        return "shm"
    if file:
        return "file"
    if (prot & PROT_MASK) == 0:
        return "guard"
    if tstack:
        return "thread_stack"
    return "anon"


def classify(path: list, prot: np.ndarray, shared: np.ndarray, file: np.ndarray,
             tstack: np.ndarray, factorized: tuple | None = None) -> pd.Categorical:
    """Kinds of many mappings, in this order of precedence:

    vdso ([vdso], [vvar], [vvar_vclock], [vsyscall]); heap ([heap]); stack
    ([stack], the VM_GROWSDOWN main stack); shm (shared anonymous, /dev/shm,
    SysV, memfd); file (any other file); guard (anonymous PROT_NONE); thread
    stack (anonymous, from an mmap that the model took for a thread stack);
    anon (the rest, named anonymous mappings '[anon:...]' included).
    factorized: pd.factorize(path) if the caller has it.
    """
    n = len(path)
    if n == 0:
        return pd.Categorical.from_codes(np.zeros(0, np.int8), dtype=KIND_DTYPE)
    pcode, names = factorized if factorized is not None else pd.factorize(
        pd.Series(path, dtype=object), use_na_sentinel=True)
    key = ((pcode.astype(np.int64) + 1) << 6) | ((np.asarray(prot, np.int64) & 7) << 3) \
        | (np.asarray(shared, bool).astype(np.int64) << 2) \
        | (np.asarray(file, bool).astype(np.int64) << 1) | np.asarray(tstack, bool)
    inv, uniq = pd.factorize(key)
    index = {k: i for i, k in enumerate(KINDS)}
    names = list(names)
    table = np.array([index[kind_of(names[(k >> 6) - 1] if k >> 6 else None, (k >> 3) & 7,
                                    bool(k & 4), bool(k & 2), bool(k & 1))]
                      for k in uniq.tolist()], np.int8)
    return pd.Categorical.from_codes(table[inv], dtype=KIND_DTYPE)


def access_codes(error_code: np.ndarray) -> np.ndarray:
    """read 0 / write 1 / exec 2 from the x86 error code: an instruction
    fetch (16) is exec, else a write (2) is write, else read."""
    ec = error_code.astype(np.int64)
    return np.where(ec & PF_INSTR, 2, np.where(ec & PF_WRITE, 1, 0)).astype(np.int8)
