"""Fault call sites named: module + symbol + offset, offline.

The model says which code mapping each fault's instruction pointer was in
(`ip_vma`), so the ip's file offset is known; the ELF file's program headers
turn that into a virtual address and its symbol table (.symtab, else
.dynsym) into a name. Read with pyelftools, once per file.

Limits: the files are read when the trace is analysed; a binary rebuilt
since the run names wrong symbols (the trace records the inode where a maps
snapshot showed it). Stripped code without .dynsym entries is named by
module + offset only. Kernel-mode instruction pointers (a fault taken by
copy_to_user inside a syscall) are `[kernel]`.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

KERNEL_SPACE = 1 << 63


class ElfSymbols:
    """Function symbols of one ELF file, searchable by file offset."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.segments: list[tuple[int, int, int]] = []     # (offset, vaddr, size)
        addrs, sizes, names = [], [], []
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.x86_64 = elf["e_machine"] == "EM_X86_64"
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD":
                    self.segments.append((seg["p_offset"], seg["p_vaddr"], seg["p_filesz"]))
            for section in (".symtab", ".dynsym"):
                table = elf.get_section_by_name(section)
                if table is None:
                    continue
                for sym in table.iter_symbols():
                    if sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC") and sym["st_value"]:
                        addrs.append(sym["st_value"])
                        sizes.append(sym["st_size"])
                        names.append(sym.name)
                if addrs:
                    break                     # .symtab has everything .dynsym has
        order = np.argsort(np.array(addrs, np.uint64), kind="stable")
        self.addrs = np.array(addrs, np.uint64)[order]
        self.sizes = np.array(sizes, np.uint64)[order]
        self.names = [names[i] for i in order]

    def vaddr(self, offset: int) -> int | None:
        for off, va, size in self.segments:
            if off <= offset < off + max(size, 1):
                return va + offset - off
        return None

    def index(self, va: int) -> int:
        """The function symbol holding virtual address va, or -1."""
        if not len(self.addrs) or va < 0:
            return -1
        i = int(np.searchsorted(self.addrs, np.uint64(va), "right")) - 1
        if i < 0:
            return -1
        start, size = int(self.addrs[i]), int(self.sizes[i])
        if size and va >= start + size:
            return -1
        return i

    def starting_at(self, va: int) -> int:
        """The function symbol that starts exactly at va, or -1."""
        i = int(np.searchsorted(self.addrs, np.uint64(va), "left")) if va >= 0 else 0
        return i if i < len(self.addrs) and int(self.addrs[i]) == va else -1

    def name(self, offset: int) -> str | None:
        va = self.vaddr(offset)
        i = -1 if va is None else self.index(va)
        if i < 0:
            return None
        return f"{self.names[i]}+0x{va - int(self.addrs[i]):x}"

    def direct_callee(self, offset: int) -> int:
        """For a return address at file offset `offset`: the function symbol
        that the call just before it targets, if that call is a direct one
        (x86-64 E8 rel32, the 5 bytes before the return address), else -1
        (an indirect call, a call through the PLT, other architectures, or
        bytes that only look like a call: the target must be the exact start
        of a function)."""
        va = self.vaddr(offset)
        if not self.x86_64 or va is None or offset < 5 or self.vaddr(offset - 5) != va - 5:
            return -1
        try:
            with open(self.path, "rb") as f:
                f.seek(offset - 5)
                code = f.read(5)
        except OSError:
            return -1
        if len(code) != 5 or code[0] != 0xE8:
            return -1
        return self.starting_at(va + int.from_bytes(code[1:], "little", signed=True))


@lru_cache(maxsize=256)
def symbols_of(path: str) -> ElfSymbols | None:
    """The ElfSymbols of a file (read once), or None if it is not a readable
    ELF file."""
    try:
        return ElfSymbols(path)
    except (OSError, ELFError, ValueError):
        return None


def fault_sites(t) -> pd.DataFrame:
    """Per fault (t.faults' index): `ip_module` (the file the instruction
    was in) and `ip_site` ("symbol+0xoff", or "module+0xoff" unnamed,
    "[kernel]", "[anon]" for JIT or other anonymous code, or missing)."""
    f, v = t.faults, t.vmas
    # by position: a summary row split across mappings repeats its label
    module = np.full(len(f), pd.NA, dtype=object)
    site = np.full(len(f), pd.NA, dtype=object)
    ip = f["ip"].to_numpy(dtype=np.uint64, na_value=0)
    site[ip >= np.uint64(KERNEL_SPACE)] = "[kernel]"
    located = f["ip_vma"].notna().to_numpy()
    if located.any():
        vid = f["ip_vma"].to_numpy(dtype=np.int64, na_value=0)[located]
        path = v["path"].to_numpy(dtype=object)[vid]
        off = (v["offset"].to_numpy(np.uint64)[vid] + ip[located]
               - v["start"].to_numpy(np.uint64)[vid]).astype(np.int64)
        names = []
        cache: dict[tuple[str, int], str] = {}
        for p, o in zip(path.tolist(), off.tolist()):
            if not isinstance(p, str) or not p.startswith("/"):
                names.append("[anon]" if not isinstance(p, str) else p)
                continue
            key = (p, o)
            if key not in cache:
                syms = symbols_of(p)
                n = syms.name(o) if syms is not None else None
                cache[key] = n if n else f"{p.rsplit('/', 1)[-1]}+0x{o:x}"
            names.append(cache[key])
        module[located] = [p if isinstance(p, str) else pd.NA for p in path.tolist()]
        site[located] = names
    return pd.DataFrame({"ip_module": module, "ip_site": site}, index=f.index)


def top_sites(t, n: int = 10) -> pd.DataFrame:
    """The call sites with the most faults: site, module, faults, major
    (a summary row counts `count` faults at its first fault's site)."""
    s = fault_sites(t)
    weight = t.faults["count"].to_numpy(np.int64)
    s["faults"] = weight
    s["major"] = np.where(t.faults["major"].to_numpy(dtype=bool, na_value=False), weight, 0)
    g = s.dropna(subset=["ip_site"]).groupby(["ip_site", "ip_module"], dropna=False)
    out = g.agg(faults=("faults", "sum"), major=("major", "sum")).reset_index()
    return out.sort_values("faults", ascending=False).head(n).reset_index(drop=True)


MAPPING_CALLS = ("mmap", "brk", "munmap", "mremap")


def mmap_sites(t) -> pd.Series | None:
    """The call site (tracer.stacks: the first frame outside the C library
    and the loader) of each mapping call with a recorded stack, as a Series
    on t.events' index; None when the trace has no stacks (--stacks). Used
    by budgets (tracer.check) to name who mapped the bytes."""
    if not t.meta.get("stacks"):
        return None
    rows = t.stacks.rows
    ev = t.events
    calls = ev.index[ev["kind"].isin(MAPPING_CALLS).to_numpy(bool)]
    return rows["call_site"].reindex(rows.index.intersection(calls))
