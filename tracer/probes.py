"""The kernel side: bpf/memtrace.bpf.c compiled by bcc, its tracepoints and
perf-event programs attached, and the maps memtrace sets (traced processes,
configuration) and reads (counters, ring buffers).

The compiled programs are cached (tracer/bpfcache.py): a start with a warm
cache runs no compiler. Either way the programs reach the kernel through
bpf_load.load; if that fails, bcc's own loader (bcc.BPF) is the last resort.
How it went is in `startup` (seconds by phase, `cache` 1 for a hit) and
`cache_status` (a sentence)."""
from __future__ import annotations

import mmap
import os
import struct
import time

import numpy as np

from tracer import bpf_kfunc, bpf_load, bpf_spec, bpf_syscall, bpfcache, cpu_rings, layout
from tracer.layout import BPF_DIR, C
from tracer.ringbuf import RingReader

SOURCE = BPF_DIR / "memtrace.bpf.c"

# perf_event_open types and configs (include/uapi/linux/perf_event.h)
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_PAGE_FAULTS_MIN = 5
PERF_COUNT_SW_PAGE_FAULTS_MAJ = 6
PERF_COUNT_SW_CPU_CLOCK = 0
TICK_NS = 50_000_000     # on_tick's period (bpf/memtrace.bpf.c)

# the perf-event programs: function -> [(type, config, sample period)], on every online CPU
PERF_EVENTS = {
    "on_fault_min": [(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS_MIN, 1)],
    "on_fault_maj": [(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS_MAJ, 1)],
    "on_tick": [(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, TICK_NS)],
}
RINGS = {"faults": layout.FAULT, "events": layout.EVENT, "execs": layout.EXEC}
# residency (--no-rss turns it off): the programs not attached then, as
# (bcc's function name, how bcc's own loader names the attachment)
RESIDENCY = {"tracepoint__kmem__rss_stat": ("tracepoint", b"kmem:rss_stat"),
             "raw_tracepoint__mm_page_alloc": ("raw_tracepoint", b"mm_page_alloc")}
# the pages allocated inside each fault (--alloc): kmem:mm_page_alloc fires
# for every page the machine allocates, and cost the fault-heavy workload
# about 9% (docs/benchmarks.md), most of what residency costs
ALLOC = "raw_tracepoint__mm_page_alloc"
# --faults=summary: faults are counted at entry; a minor fault's end and the
# page allocations inside it are not followed (the costliest hooks)
SUMMARY_SKIP = ("on_fault_min", "raw_tracepoint__mm_page_alloc")
# The end of a minor fault (the PAGE_FAULTS_MIN perf event, the costliest
# hook: about 6% of a fault-heavy workload's time with an empty program,
# docs/benchmarks.md) is followed only with --fault-latency. Without it, a
# fault ends when its thread's next fault, syscall, signal or exit shows
# it: the programs that close it then are attached instead (raw sys_enter
# always is: the memory syscalls come through it).
FAULT_END_SKIP = ("on_fault_min",)
LAZY_END = {"tracepoint__signal__signal_deliver": ("tracepoint", b"signal:signal_deliver"),
            "on_tick": ("perf_event", None)}
# --faults=summary: where a major fault of a file page begins to wait, read
# exactly for its latency (the entry takes the tick's time there); a kernel
# without the tracepoint (filemap:mm_filemap_fault) leaves such majors
# without latency (counter summary_untimed)
SUMMARY_ONLY = {"raw_tracepoint__mm_filemap_fault": ("raw_tracepoint", b"mm_filemap_fault")}
# what bcc's own loader attached by itself and may have to detach
_BCC_ATTACHED = {k: v for k, v in {**RESIDENCY, **LAZY_END, **SUMMARY_ONLY}.items()
                 if v[0] != "perf_event"}
STACK_DEPTH = 127        # bcc's BPF_STACK_TRACE value: u64 ips[127]

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def _has_tracepoint(category: str, name: str) -> bool:
    return (bpf_spec.tracefs() / "events" / category / name).is_dir()


class Probes:
    """Loaded and attached BPF programs, and their maps.

    `cache`: None (the default place, or $MEMTRACE_BPF_CACHE), False (no
    cache), a directory, or "bcc" (bcc's own loader, no cache: the way
    memtrace loaded before the cache, kept as the last resort)."""

    def __init__(self, fault_ring_pages: int | None = None, cache=None,
                 residency: bool = True, summary: bool = False,
                 fault_end: bool = False, alloc: bool = False) -> None:
        cflags = [f"-I{BPF_DIR}", "-Wno-unused-function"]
        if fault_ring_pages:
            cflags.append(f"-DFAULT_RING_PAGES={int(fault_ring_pages)}")
        self.bpf = None               # bcc.BPF, on the last-resort path only
        self.fault_end = fault_end and not summary
        self._skip = frozenset(() if residency else RESIDENCY) | frozenset(
            SUMMARY_SKIP if summary else ()) | frozenset(
            LAZY_END if self.fault_end else FAULT_END_SKIP) | frozenset(
            () if alloc else (ALLOC,)) | frozenset(
            () if summary and _has_tracepoint("filemap", "mm_filemap_fault") else SUMMARY_ONLY)
        self.alloc = residency and alloc and not summary
        self.cache_key: str | None = None
        self.cache_status = ""
        self.startup: dict[str, float] = {"import": 0.0, "compile": 0.0, "load": 0.0,
                                          "attach": 0.0, "cache": 0.0}
        self._loaded = self._load(cflags, cache)
        self._maps = self._loaded.maps
        self.rings: dict[str, RingReader] = {}
        # --faults=summary: the runs not in the map, the shared ring and each
        # CPU's (read by tracer.fault_summary, not with the rings above)
        self.summary_runs: cpu_rings.RingSet | None = None
        self._closed = False
        page = mmap.PAGESIZE
        sizes = {"faults": fault_ring_pages or C["MT_SHARED_RING_PAGES"],
                 "events": C["MT_SHARED_RING_PAGES"], "execs": C["MT_EXEC_RING_PAGES"]}
        self._cpu_rings: list[cpu_rings.CpuRing] = []
        self._ring_sets: dict[str, cpu_rings.RingSet] = {}    # kind -> shared + CPUs' rings
        try:
            for name, dtype in RINGS.items():
                self.rings[name] = RingReader(self._maps[name].fd, sizes[name] * page, dtype)
            kinds = ("faults", "events") + (("runs",) if summary else ())
            self._cpu_rings, self.cpu_rings_note = cpu_rings.make(self._maps, fault_ring_pages,
                                                                  kinds=kinds)
            shared = {kind: self.rings[kind] for kind in ("faults", "events")}
            if summary:
                shared["runs"] = RingReader(self._maps["summary_runs"].fd,
                                            C["MT_FALLBACK_RING_PAGES"] * page, layout.SUMMARY_RUN)
            for kind, reader in shared.items():
                self._ring_sets[kind] = cpu_rings.RingSet(
                    [reader] + [r.reader for r in self._cpu_rings if r.kind == kind],
                    ordered=kind == "events")
            for ring in self._cpu_rings:
                if ring.kind != "runs":
                    self.rings[ring.name] = ring.reader
            self.summary_runs = self._ring_sets.get("runs")
        except BaseException:
            self.close()
            raise

    # ---- loading ----

    def _load(self, cflags: list[str], cache) -> bpf_load.Loaded:
        t0 = time.monotonic()
        setting = os.environ.get(bpfcache.ENV) if cache is None else str(cache or "off")
        if setting == "bcc":
            return self._bcc(cflags, f"{bpfcache.ENV}=bcc")
        store = bpfcache.Cache(None if cache is None else (cache or "off"))
        key = bpfcache.cache_key(BPF_DIR, cflags, repr(sorted(PERF_EVENTS.items())))
        self.cache_key = key
        why = store.uncacheable(key)
        if why is not None:      # known: our loader cannot; do not compile twice
            return self._bcc(cflags, f"not cacheable ({why})")
        try:
            spec = store.get(key)
            loaded = bpf_load.load(spec, skip=self._skip)
        except (bpf_spec.CacheError, OSError) as e:
            miss = str(e)
        else:
            self.startup.update(loaded.timing, cache=1.0, lookup=0.0)
            self.startup["lookup"] = time.monotonic() - t0 - sum(loaded.timing.values())
            self.cache_status = f"hit {store.path(key)}"
            return loaded
        # compile: bcc, then the same loader; with the kfuncs this kernel
        # has (tracer/bpf_kfunc.py), and if the verifier refuses them, without
        t1 = time.monotonic()
        kf_flags, kf_links = bpf_kfunc.resolve()
        attempts = [(kf_flags, kf_links), ([], {})] if kf_links else [([], {})]
        for n, (extra, links) in enumerate(attempts):
            try:
                spec = bpf_spec.compile_spec(SOURCE, cflags + extra, PERF_EVENTS, links)
            except bpf_spec.NotCacheable as e:
                store.mark_uncacheable(key, str(e))
                return self._bcc(cflags, f"miss ({miss}); not cacheable: {e}")
            self.startup["compile"] = time.monotonic() - t1
            try:
                loaded = bpf_load.load(spec, skip=self._skip)
            except (bpf_spec.CacheError, OSError) as e:
                if n + 1 < len(attempts):
                    miss += f"; kfuncs refused: {e}"
                    continue
                out = self._bcc(cflags, f"miss ({miss}); the fresh compile did not load: {e}")
                # bcc's loader managed where ours did not: do not try ours again
                store.mark_uncacheable(key, str(e))
                return out
            break
        self.startup.update(loaded.timing)
        not_stored = store.put(key, spec)
        self.cache_status = (f"miss ({miss}); compiled{' with kfuncs' if links else ''}, "
                             + (f"not stored: {not_stored}" if not_stored else
                                f"stored {store.path(key)}"))
        return loaded

    def _bcc(self, cflags: list[str], why: str) -> bpf_load.Loaded:
        """bcc's own loader, as memtrace loaded before the cache."""
        t0 = time.monotonic()
        from tracer.preflight import import_bcc   # late: bcc maps LLVM in
        BPF = import_bcc().BPF
        t1 = time.monotonic()
        self.bpf = b = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        for fn in self._skip & _BCC_ATTACHED.keys():   # bcc attached every tracepoint program
            kind, target = _BCC_ATTACHED[fn]
            if kind == "tracepoint":
                b.detach_tracepoint(target)
            else:
                b.detach_raw_tracepoint(target)
        t2 = time.monotonic()
        for fn, events in PERF_EVENTS.items():
            if fn in self._skip:
                continue
            for ev_type, ev_config, period in events:
                b.attach_perf_event(ev_type=ev_type, ev_config=ev_config,
                                    fn_name=fn.encode(), sample_period=period)
        t3 = time.monotonic()
        out = bpf_load.Loaded()
        for name, fd in bpf_spec.module_tables(b.module):
            d, mid = bpf_syscall.map_info(fd, name)
            out.maps[name] = bpf_syscall.Map(fd, d)
            out.map_ids.append(mid)
        out.links = [*b.tracepoint_fds.values(), *b.raw_tracepoint_fds.values(),
                     *(fd for per_cpu in b.open_perf_events.values() for fd in per_cpu.values())]
        out.progs = {name.decode(): fn.fd for name, fn in b.funcs.items()}
        out.prog_ids = [bpf_syscall.prog_info(fd)["id"] for fd in out.progs.values()]
        self.startup.update({"import": t1 - t0, "compile": t2 - t1, "attach": t3 - t2})
        self.cache_status = why + "; loaded by bcc"
        return out

    # ---- maps ----

    def table(self, name: str) -> bpf_syscall.Map:
        """A map of the BPF program by name (keys and values as bytes)."""
        return self._maps[name]

    def set_config(self, index: int, value: int) -> None:
        self._maps["config"].update(_I32.pack(index), _U64.pack(value))

    def freeze_slots(self) -> None:
        """BPF no longer closes nor fills the fault slots (MT_CFG_FROZEN:
        user space reads the faults left open, tracer.pending_faults). The
        epoch moves too: summary mode's short path checks the epoch, not the
        config (bpf/memtrace.bpf.c, summary_continue)."""
        self.set_config(C["MT_CFG_FROZEN"], 1)
        self.traced_changed()

    def trace_pid(self, pid: int, state: int = C["MT_STATE_TRACED"]) -> None:
        self._maps["traced"].update(_U32.pack(pid), _U32.pack(state))
        self.traced_changed()

    def untrace_all(self) -> None:
        """Every process out of `traced` (BPF follows none any more)."""
        traced = self._maps["traced"]
        for k in list(traced.keys()):
            traced.delete(k)
        self.traced_changed()

    def untrace_pid(self, pid: int) -> None:
        self._maps["traced"].delete(_U32.pack(pid))
        self.traced_changed()

    def traced_changed(self) -> None:
        """After a change of `traced`: BPF's per-CPU cached lookups are
        stale (bpf/memtrace.bpf.c, traced_epoch). BPF adds 1 atomically;
        user space adds 2^32, so that an add of BPF's between this read and
        write cannot bring back a value a CPU has cached."""
        epoch = self._maps["traced_epoch"]
        key = _I32.pack(0)
        raw = epoch.lookup(key)
        now = _U64.unpack(raw)[0] if raw else 0
        epoch.update(key, _U64.pack((now + (1 << 32)) % (1 << 64)))

    def traced_pids(self) -> dict[int, int]:
        """pid -> state of every process BPF has decided, in one batch read
        (an entry at a time was two syscalls a process at every flush: with
        -a, every process of the machine)."""
        keys, values, n = self._maps["traced"].lookup_batch()
        pids = np.frombuffer(keys, "<u4", count=n).tolist()
        words = np.frombuffer(values, "<u4", count=n) & C["MT_STATE_MASK"]
        return dict(zip(pids, words.tolist()))

    def counters(self) -> dict[str, int]:
        """Summed over the CPUs modulo 2^64: a counter BPF takes back on
        another CPU than the one that counted (summary_faults) wraps there."""
        table = self._maps["counters"]
        return {name: sum(_U64.unpack(v)[0] for v in table.percpu_values(_I32.pack(i)))
                % (1 << 64) for i, name in layout.COUNTER_NAMES.items()}

    def stacks(self) -> dict[int, list[int]]:
        """--stacks: every stored user stack, id -> instruction pointers
        (innermost first)."""
        out = {}
        for k, v in self._maps["stacks"].items():
            ips = struct.unpack(f"<{len(v) // 8}Q", v)
            n = ips.index(0) if 0 in ips else len(ips)
            out[_U32.unpack(k)[0]] = list(ips[:n])
        return out

    def ring_fds(self) -> list[int]:
        """The rings the capture loop polls (summary runs are not: read at each drain)."""
        return [self._maps[name].fd for name in RINGS] + [
            r.fd for r in self._cpu_rings if r.kind != "runs"]

    def bulk_readers(self) -> list[RingReader]:
        """The rings of faults, events and summary runs, shared and per CPU
        (tracer.ring_pump keeps them from filling)."""
        return [r for rs in self._ring_sets.values() for r in rs.readers]

    def read_rings(self, kind: str) -> np.ndarray:
        """Every record of `kind` ("faults", "events") waiting in its rings:
        the shared one and each CPU's (tracer/cpu_rings.py); events in time
        order, faults ring after ring (their rows are sorted when written)."""
        return self._ring_sets[kind].read()

    def ids(self) -> dict[str, list[int]]:
        """The kernel ids of the programs and maps (to check they are gone)."""
        return {"prog": list(self._loaded.prog_ids),
                "map": list(self._loaded.map_ids) + [r.map_id for r in self._cpu_rings]}

    # ---- the end ----

    def close(self, background: bool = True) -> None:
        """Unmaps the rings, quiets the programs (no process traced, no stop
        at exec), and releases everything; with `background` the kernel's
        slow detach runs in a helper process (bpf_load.release) and this
        returns at once."""
        if self._closed:
            return
        self._closed = True
        for r in [*self.rings.values(), *([self.summary_runs] if self.summary_runs else [])]:
            r.close()
        # the CPUs' rings' descriptors (the programs' arrays of maps hold
        # the rings until they go)
        cpu_rings.close(self._cpu_rings)
        try:
            for i in range(C["MT_NR_CONFIG"]):
                self.set_config(i, 0)
            self.untrace_all()
        except OSError:
            pass
        if self.bpf is not None:
            # the helper takes copies of bcc's descriptors; bcc closes its own
            bpf, self.bpf = self.bpf, None
            bpf_load.release(self._loaded.links, background, close_own=bpf.cleanup)
            return
        bpf_load.release(self._loaded.fds(), background)
