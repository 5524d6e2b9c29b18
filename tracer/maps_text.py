"""/proc/PID/maps as text: render the model's mappings, parse the kernel's,
merge adjacent mappings the way the kernel merges VMAs, and compare."""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from tracer import _procfs
from tracer import vma_kinds as vk

# fs/proc/task_mmu.c show_map_vma: seq_setwidth(m, 25 + sizeof(void *) * 6 - 1)
_NAME_COLUMN = 73


class Entry:
    """One maps line, parsed or from the model."""
    __slots__ = ("start", "end", "prot", "shared", "path", "off", "inode", "file", "fd")

    def __init__(self, start, end, prot, shared, path, off, inode=None, file=None, fd=None):
        self.start, self.end, self.prot, self.shared = int(start), int(end), int(prot), bool(shared)
        self.path = path if path else None
        self.off = int(off)
        self.inode = int(inode) if inode is not None and not pd.isna(inode) else None
        self.file = vk.has_file(self.path) if file is None else bool(file)
        self.fd = fd

    @property
    def perms(self) -> str:
        return vk.perms(self.prot, self.shared)

    def line(self, dev: str = "00:00") -> str:
        head = (f"{self.start:08x}-{self.end:08x} {self.perms} {self.off if self.file else 0:08x} "
                f"{dev} {self.inode or 0} ")
        if self.path is None:
            return head
        return head.ljust(_NAME_COLUMN) + " " + self.path


def entries_of(maps: pd.DataFrame | Iterable) -> list[Entry]:
    """Entries from a maps_at frame, from maps text lines, or a list of Entry."""
    if isinstance(maps, pd.DataFrame):
        cols = [maps[c].tolist() for c in ("start", "end", "prot", "shared", "path", "offset",
                                           "inode", "file", "fd")]
        return [Entry(s, e, p, sh, (None if pd.isna(pa) else pa), o, i, f,
                      (None if pd.isna(fd) else fd))
                for s, e, p, sh, pa, o, i, f, fd in zip(*cols)]
    if isinstance(maps, str):
        maps = maps.splitlines()
    out = []
    for x in maps:
        if isinstance(x, Entry):
            out.append(x)
            continue
        if isinstance(x, str):
            if not x.strip():
                continue
            x = x.encode("utf-8", "surrogateescape")
        me = _procfs.parse_maps_line(x)
        out.append(Entry(me.start, me.end, _procfs.prot_of(me.perms), me.perms[3] == "s",
                         me.path, me.offset, me.inode))
    return out


def merge(entries: list[Entry]) -> list[Entry]:
    """Adjacent entries the kernel would keep as one VMA, joined (the name of
    a joined anonymous run is [heap] if any part was the heap)."""
    out: list[Entry] = []
    for e in sorted(entries, key=lambda e: e.start):
        last = out[-1] if out else None
        if last is not None and vk.mergeable(last, e):
            j = Entry(last.start, e.end, last.prot, last.shared, last.path or e.path,
                      last.off, last.inode or e.inode, last.file, last.fd)
            out[-1] = j
        else:
            out.append(e)
    return out


def _same_name(ours: Entry, theirs: Entry) -> bool:
    if ours.path == theirs.path:
        return True
    if ours.file and ours.path is None:      # a file mapped by fd: name not traced
        return theirs.file
    anon = (None, vk.HEAP)
    return ours.path in anon and theirs.path in anon


def compare_maps(ours: pd.DataFrame | Iterable, kernel_lines: Iterable[str] | str) -> list[str]:
    """Differences between the model's maps (a maps_at frame or maps text) and
    the kernel's /proc/PID/maps lines, both merged first; [] if they agree.
    Compared: range, perms, offset (of file mappings), name (a file the model
    knows only by its fd matches any file; [heap] matches an anonymous
    mapping, as the kernel names by the brk range) and inode where both
    have one. The device is not compared."""
    a = merge(entries_of(ours))
    b = merge(entries_of(kernel_lines))
    diffs: list[str] = []
    i = j = 0
    xs = ys = False      # has a[i] / b[j] overlapped an entry of the other side?
    while i < len(a) or j < len(b):
        x = a[i] if i < len(a) else None
        y = b[j] if j < len(b) else None
        if y is None or (x is not None and x.end <= y.start):
            if not xs:
                diffs.append(f"only in ours:   {x.line()}")
            i, xs = i + 1, False
            continue
        if x is None or y.end <= x.start:
            if not ys:
                diffs.append(f"only in kernel: {y.line()}")
            j, ys = j + 1, False
            continue
        same = (x.start == y.start and x.end == y.end and x.prot == y.prot
                and x.shared == y.shared and _same_name(x, y)
                and (not y.file or x.off == y.off)
                and (x.inode is None or y.inode is None or x.inode == y.inode))
        if not same:
            diffs.append(f"ours:   {x.line()}\n  kernel: {y.line()}")
        xs = ys = True
        xe, ye = x.end, y.end
        if xe <= ye:
            i, xs = i + 1, False
        if ye <= xe:
            j, ys = j + 1, False
    return diffs


def render(maps: pd.DataFrame | Iterable) -> list[str]:
    """/proc/PID/maps text lines of a maps_at frame."""
    return [e.line() for e in entries_of(maps)]
