"""Each CPU's own rings for faults, events and summary runs
(bpf/memtrace.bpf.c, `fault_rings`, `event_rings`, `run_rings`): made here,
one of each per online CPU (up to MAX_RINGS, then shared by CPUs in turn),
and put in the BPF side's array of maps under the CPU's id. Every fault and
memory syscall writes a record; on one shared ring the CPUs contend for its
lock and its producer position (docs/benchmarks.md, fifteenth session). A
CPU left without a ring (one that came online later, or a kernel that
refuses a ring inside a map of maps) writes to the shared ring, which the
capture reads too.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from tracer import layout
from tracer.bpf_syscall import MAP_RINGBUF, LoadError, Map, map_create, map_info, online_cpus
from tracer.layout import C
from tracer.ringbuf import RingReader

# kind -> (the array of maps, the record), as bpf/memtrace.bpf.c names them
KINDS = {"faults": ("fault_rings", layout.FAULT), "events": ("event_rings", layout.EVENT),
         "runs": ("run_rings", layout.SUMMARY_RUN)}      # runs: --faults=summary only
_TOTAL = {"faults": C["MT_FAULT_RING_PAGES"], "events": C["MT_EVENT_RING_PAGES"],
          "runs": C["MT_RUN_RING_PAGES"]}
_U32 = struct.Struct("<I")


# At most this many rings of a kind: on a larger machine CPUs share them
# (CPU ids in turn), so a kind's rings stay within 16 x 8 MiB.
MAX_RINGS = 16


def pages_per_ring(total: int, rings: int, minimum: int = C["MT_CPU_RING_MIN_PAGES"]) -> int:
    """Each ring's share of `total` pages, at least `minimum`: a power of
    two (the kernel's rule for a ring's size), rounded down."""
    share = max(minimum, total // max(rings, 1))
    return 1 << (share.bit_length() - 1)


@dataclass
class CpuRing:
    kind: str          # "faults", "events" or "runs"
    index: int
    cpus: list[int]    # the CPUs that write to it (one, up to MAX_RINGS CPUs)
    fd: int
    map_id: int
    reader: RingReader

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.index}"


def make(outer: dict[str, Map], fault_pages: int | None = None,
         cpus: list[int] | None = None,
         kinds: tuple[str, ...] = ("faults", "events")) -> tuple[list[CpuRing], str]:
    """The rings of `kinds` of the online CPUs, one each (MAX_RINGS at most),
    in `outer` (kind's array of maps by name) under every CPU they serve;
    `fault_pages` each fault ring's size (--ring-pages), else its share of
    MT_FAULT_RING_PAGES. Returns the rings and "" or why there are none (the
    shared rings then take every record)."""
    # a CPU id past the arrays' entries writes to the shared ring
    cpus = [c for c in (online_cpus() if cpus is None else cpus) if c < C["MT_RING_CPUS"]]
    n = min(len(cpus), MAX_RINGS)
    pages = {kind: pages_per_ring(_TOTAL[kind], n) for kind in kinds}
    if fault_pages:
        pages["faults"] = fault_pages
    made: list[CpuRing] = []
    try:
        for kind in kinds:
            outer_name, dtype = KINDS[kind]
            size = pages[kind] * mmap.PAGESIZE
            for i in range(n):
                fd = map_create(MAP_RINGBUF, 0, 0, size, 0, f"{kind[:-1]}_ring{i}")
                try:
                    ring = CpuRing(kind, i, cpus[i::n], fd, map_info(fd)[1],
                                   RingReader(fd, size, dtype))
                except BaseException:
                    os.close(fd)
                    raise
                made.append(ring)
                for cpu in ring.cpus:
                    outer[outer_name].update(_U32.pack(cpu), _U32.pack(fd))
    except (LoadError, OSError) as e:
        for outer_name in (KINDS[k][0] for k in kinds):   # it holds references of its own
            for cpu in cpus:
                try:
                    outer[outer_name].delete(_U32.pack(cpu))
                except (LoadError, OSError):
                    pass
        close(made)
        return [], f"rings per CPU not made ({e}): one shared ring each for {', '.join(kinds)}"
    return made, ""


def read(rings: list[RingReader], ordered: bool) -> np.ndarray:
    """The records of several rings of one kind; `ordered`: in time order
    (each ring is in the order its CPU reserved: a stable sort of the
    concatenation merges those runs), else ring after ring."""
    parts = [r.read() for r in rings]
    parts = [p for p in parts if len(p)]
    if len(parts) <= 1:
        return parts[0] if parts else np.empty(0, rings[0].dtype)
    out = np.concatenate(parts)
    return out[np.argsort(out["ts"], kind="stable")] if ordered else out


class RingSet:
    """The rings of one kind, the shared one first, read as one (`read`)."""

    def __init__(self, readers: list[RingReader], ordered: bool = False) -> None:
        self.readers = readers
        self.ordered = ordered

    def read(self) -> np.ndarray:
        return read(self.readers, self.ordered)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def close(rings: list[CpuRing]) -> None:
    for ring in rings:
        ring.reader.close()
        try:
            os.close(ring.fd)
        except OSError:
            pass
