"""Offline benchmark of memtrace's consumer (issue 4, acceptance 4): N
synthetic page-fault records laid out as ring-buffer bytes go through what
the capture loop does with them: `ringbuf.decode` (one ring read per chunk),
`trace_rows.fault_batch`, `Spill.write` (one per flush of the capture loop), and
at the end `Spill.finish` (Parquet, or CSV). Prints the time of each phase,
events per second end to end (generation of the synthetic bytes excluded),
the CPU time (a fairer figure than wall time on a busy machine), the peak
RSS of the process (its imports included) and the bytes per event on disk.

    .venv/bin/python scripts/bench_consumer.py [--events 10000000] [--format parquet]

The records look like a fault-heavy program's: four threads touching pages
in address order, ts steps of 0.2-3 us, latencies of 0.3-4 us, a handful of
instruction addresses, one major fault in 10,000, rss_anon +1.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if "--bare" in sys.argv:
    # the modules without tracer/__init__.py, which imports pandas (for
    # tracer.load): what recording costs when nothing imports it
    import types
    _pkg = types.ModuleType("tracer")
    _pkg.__path__ = [str(ROOT / "tracer")]
    sys.modules["tracer"] = _pkg

from tracer.cli import arrow_system_allocator  # noqa: E402

arrow_system_allocator()     # as memtrace does, before pyarrow is imported
from tracer import layout, ringbuf, trace_rows, trace_schema, writer  # noqa: E402
from tracer.peaks_stream import PeaksStream  # noqa: E402

C = layout.C


def synthetic(n: int, start: int, rng: np.random.Generator, state: dict) -> np.ndarray:
    """Ring slots (header + record) of faults start..start+n."""
    slot = ringbuf.record_dtype(layout.FAULT)
    buf = np.zeros(n, slot)
    buf["hdr_len"] = layout.FAULT.itemsize
    r = buf["rec"]
    steps = rng.integers(200, 3000, n, dtype=np.uint64)
    r["ts"] = state["ts"] + np.cumsum(steps)
    state["ts"] = int(r["ts"][-1])
    idx = np.arange(start, start + n, dtype=np.uint64)
    thread = (idx // 4096) % 4
    r["pid"] = 4242
    r["tid"] = 4242 + thread.astype(np.uint32)
    r["addr"] = np.uint64(0x7F0000000000) + thread * np.uint64(1 << 32) + (idx // 4) * np.uint64(4096) \
        + rng.integers(0, 4096, n, dtype=np.uint64)
    r["ip"] = np.uint64(0x401000) + rng.integers(0, 16, n, dtype=np.uint64) * np.uint64(0x40)
    r["latency"] = rng.integers(300, 4000, n, dtype=np.uint32)
    r["error_code"] = np.where(rng.random(n) < 0.9, 6, 4).astype(np.uint16)
    major = (idx % 10000) == 9999
    r["flags"] = np.where(major, C["MT_FAULT_MAJOR"], 0).astype(np.uint16)
    r["rss_anon"] = np.where(major, 0, 1).astype(np.int16)
    r["rss_file"] = np.where(major, 1, 0).astype(np.int16)
    return buf.view(np.uint8)


def _check(path: Path, n: int) -> None:
    """The file holds every event, in time order, all of kind fault."""
    import pyarrow.parquet as pq
    f = pq.ParquetFile(path)
    assert f.metadata.num_rows == n, (f.metadata.num_rows, n)
    last, rows = 0, 0
    for b in f.iter_batches(batch_size=1 << 17, columns=["ts", "kind"]):
        ts = trace_schema.numpy_view(b.column(0))     # (to_numpy would import pandas)
        assert ts[0] >= last and not (ts[1:] < ts[:-1]).any(), "not in time order"
        assert b.column(1).dictionary.to_pylist()[b.column(1).indices[0].as_py()] == "fault"
        last, rows = ts[-1], rows + len(ts)
    assert rows == n


def _cpu() -> float:
    """User + system CPU seconds of this process (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=65536, help="records per ring read")
    ap.add_argument("--flush", type=int, default=1 << 20,
                    help="rows per Spill.write (the capture loop flushes once a second)")
    ap.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    ap.add_argument("--dir", type=Path, help="where the trace goes (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the trace file")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--stream", action="store_true",
                    help="as the capture does: the Parquet file and the peaks written while "
                    "tracing (threads following the spill), the peaks waited for at the end")
    ap.add_argument("--bare", action="store_true",
                    help="skip tracer/__init__.py (and the pandas it imports)")
    args = ap.parse_args()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(4)
    state = {"ts": 10**12}
    slot = ringbuf.record_dtype(layout.FAULT)
    t = {"generate": 0.0, "decode": 0.0, "batch": 0.0, "spill": 0.0, "finish": 0.0}
    with tempfile.TemporaryDirectory(prefix="memtrace-consumer-", dir=args.dir) as d:
        out = Path(d) / f"bench.{args.format}"
        spill = writer.Spill(out, stream=args.stream,
                             peaks=PeaksStream(4096, True) if args.stream else None)
        comms = trace_rows.CommTable()
        comms.update([4242, 4243, 4244, 4245], ["bench", "bench-w1", "bench-w2", "bench-w3"])
        pending, rows, done = [], 0, 0
        cpu = 0.0
        while done < args.events:
            n = min(args.chunk, args.events - done)
            a = time.perf_counter()
            data = synthetic(n, done, rng, state)
            b = time.perf_counter()
            c0 = _cpu()
            rec, used = ringbuf.decode(data, 0, len(data), slot)
            c = time.perf_counter()
            assert used == len(data) and len(rec) == n
            pending.append(trace_rows.fault_batch(rec, comms))
            rows += n
            done += n
            e = time.perf_counter()
            if rows >= args.flush or done >= args.events:
                spill.write(pending)
                pending, rows = [], 0
            f = time.perf_counter()
            cpu += _cpu() - c0
            t["generate"] += b - a
            t["decode"] += c - b
            t["batch"] += e - c
            t["spill"] += f - e
            del data, rec
        peak_tracing = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        a = time.perf_counter()
        c0 = _cpu()
        spill.end()
        peaks = spill.peaks()         # as summary.metadata waits for them
        assert peaks is not None or not args.stream
        size = spill.finish(args.format, {"format_version": C["MT_FORMAT_VERSION"],
                                          "complete": True, "lost": 0, "peaks": peaks})
        t["finish"] = time.perf_counter() - a
        cpu_finish = _cpu() - c0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.format == "parquet":
            _check(out, args.events)
        if args.keep:
            keep = Path.cwd() / out.name
            out.replace(keep)
            print(f"kept {keep}")
    total = t["decode"] + t["batch"] + t["spill"] + t["finish"]
    n = args.events
    res = {"events": n, "seconds": {k: round(v, 3) for k, v in t.items()},
           "events_per_s": n / total, "while_tracing_events_per_s": n / (total - t["finish"]),
           "finish_events_per_s": n / t["finish"], "peak_rss_mb": peak,
           "cpu_seconds": round(cpu + cpu_finish, 3), "cpu_finish_seconds": round(cpu_finish, 3),
           "events_per_cpu_s": n / (cpu + cpu_finish),
           "rss_at_start_mb": rss0, "pandas_imported": "pandas" in sys.modules, "peak_rss_while_tracing_mb": peak_tracing, "bytes_per_event": size / n, "format": args.format}
    print(f"{n:,} fault events, {args.format}: "
          f"decode {t['decode']:.2f} s, batches {t['batch']:.2f} s, spill {t['spill']:.2f} s, "
          f"finish {t['finish']:.2f} s (generation {t['generate']:.2f} s, not counted)")
    print(f"  end to end {n / total / 1e6:.2f} M events/s "
          f"(while tracing {res['while_tracing_events_per_s'] / 1e6:.2f} M/s, "
          f"finish {res['finish_events_per_s'] / 1e6:.2f} M/s)")
    print(f"  CPU time {cpu + cpu_finish:.2f} s ({cpu_finish:.2f} s of it in finish, which reads "
          f"ahead in a second thread): {res['events_per_cpu_s'] / 1e6:.2f} M events per CPU-second")
    print(f"  peak RSS {peak:.0f} MB (at start {rss0:.0f} MB, while tracing {peak_tracing:.0f} MB; "
          f"pandas {'imported' if 'pandas' in sys.modules else 'not imported'}), "
          f"{size / n:.2f} bytes per event on disk")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
