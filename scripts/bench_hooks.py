"""What one hook costs a fault-heavy workload, with an empty BPF program.

Whole-run ratios on this kind of VM move +-15% from one run to the next, so
a hook is measured in paired runs: the workload (tests/workloads/faults.c,
64 MiB x 8 by default) runs with the hook on and off, in alternating order,
N times, and the median of the per-pair ratios of its CPU time is printed
with its 95% confidence interval (bench.median_ci) and the quartiles.
Perf-event and tracepoint hooks are switched with PERF_EVENT_IOC_ENABLE/
DISABLE, raw tracepoints attached and detached.

    sudo .venv/bin/python scripts/bench_hooks.py [--pairs 30] [HOOK ...]

HOOK: min (PAGE_FAULTS_MIN perf event), maj, entry (raw page_fault_user),
alloc (raw mm_page_alloc), sys_enter, sys_exit (raw), count (page_fault_user
with the least an exact per-block fault count does: a filter lookup and a
hash entry per 64 KiB block), run and runring (a per-CPU run of one
block's consecutive faults, flushed into that hash or to a ring), rss
(the kmem:rss_stat tracepoint, attached and detached: a bpf-attached
tracepoint's program runs while the event is disabled by ioctl), switch
(sched:sched_switch), raw_switch (raw sched_switch); hooks joined by + are
switched together (memtrace's default set: entry+rss+sys_enter+sys_exit+
raw_switch). --workload picks the program and its arguments: "faults 64 8"
(default), "churn 30000", "filemajor PATH".
"""
from __future__ import annotations

import argparse
import fcntl
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import median_ci  # noqa: E402  (scripts/bench.py)
PROGRAMS = r"""
#include <uapi/linux/bpf_perf_event.h>
BPF_PERCPU_ARRAY(cnt, u64, 1);
static __always_inline int bump(void) { int i = 0; u64 *c = cnt.lookup(&i); if (c) (*c)++; return 0; }
int on_perf(struct bpf_perf_event_data *ctx) { return bump(); }
int on_raw(struct bpf_raw_tracepoint_args *ctx) { return bump(); }
int on_tp(void *ctx) { return bump(); }

/* "count": the least a fault summary counted exactly in BPF does at a
 * fault's entry: the process's filter looked up (a hash: nothing is
 * traced here, so every fault goes on as if it were), then the fault added
 * to its (process, 64 KiB block) entry of a hash, made at the block's
 * first fault. No clock, no access type, no run kept per CPU. */
BPF_HASH(traced, u32, u32, 1024);
struct block_key { u32 pid; u32 pad; u64 block; };
BPF_HASH(blocks, struct block_key, u64, 131072);
int on_count(struct bpf_raw_tracepoint_args *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 *t = traced.lookup(&tgid);
    if (t && *t == 0)
        return 0;
    struct block_key k = {.pid = tgid, .block = ctx->args[0] >> 16};
    u64 *c = blocks.lookup(&k);
    if (c) {
        __sync_fetch_and_add(c, 1);
        return 0;
    }
    u64 one = 1;
    blocks.insert(&k, &one);
    return 0;
}

/* "run" and "runring": what --faults=summary does, reduced: the CPU's
 * consecutive faults of one (process, 64 KiB block) counted in a per-CPU
 * run, flushed when a fault of another block comes: into the hash (a
 * lookup, an atomic add or an insert) or as a record to a ring. */
struct run { u32 pid; u32 traced; u64 block; u64 n; };
BPF_PERCPU_ARRAY(runs, struct run, 1);
BPF_RINGBUF_OUTPUT(flushed, 4096);
struct flushed_run { u32 pid; u32 pad; u64 block; u64 n; };
static __always_inline struct run *run_of(struct bpf_raw_tracepoint_args *ctx, u32 *tgid,
                                          u64 *block) {
    int i = 0;
    struct run *r = runs.lookup(&i);
    if (!r)
        return 0;
    *tgid = bpf_get_current_pid_tgid() >> 32;
    *block = ctx->args[0] >> 16;
    if (r->pid == *tgid && r->block == *block) {
        r->n++;
        return 0;
    }
    return r;     /* another block: the caller flushes, then run_start */
}
static __always_inline void run_start(struct run *r, u32 tgid, u64 block) {
    if (r->pid != tgid) {
        u32 *t = traced.lookup(&tgid);
        r->traced = !(t && *t == 0);
        r->pid = tgid;
    }
    r->block = block;
    r->n = r->traced ? 1 : 0;
}
/* the run's flush: into the hash, or (to_ring) as a ring record; inlined
 * with a constant, so each program has one of the two */
static __always_inline int run_hook(struct bpf_raw_tracepoint_args *ctx, int to_ring) {
    u32 tgid;
    u64 block;
    struct run *r = run_of(ctx, &tgid, &block);
    if (!r)
        return 0;
    if (r->n && to_ring) {
        struct flushed_run *o = flushed.ringbuf_reserve(sizeof(*o));
        if (o) {
            o->pid = r->pid;
            o->block = r->block;
            o->n = r->n;
            flushed.ringbuf_submit(o, BPF_RB_NO_WAKEUP);
        }
    } else if (r->n) {
        struct block_key k = {.pid = r->pid, .block = r->block};
        u64 *c = blocks.lookup(&k);
        if (c)
            __sync_fetch_and_add(c, r->n);
        else
            blocks.insert(&k, &r->n);
    }
    run_start(r, tgid, block);
    return 0;
}
int on_run(struct bpf_raw_tracepoint_args *ctx) { return run_hook(ctx, 0); }
int on_runring(struct bpf_raw_tracepoint_args *ctx) { return run_hook(ctx, 1); }
"""
PERF = {"min": 5, "maj": 6}                    # PERF_COUNT_SW_PAGE_FAULTS_MIN/MAJ
RAW = {"entry": b"page_fault_user", "alloc": b"mm_page_alloc", "sys_enter": b"sys_enter",
       "sys_exit": b"sys_exit", "count": b"page_fault_user", "run": b"page_fault_user",
       "runring": b"page_fault_user", "raw_switch": b"sched_switch"}
OWN_PROGRAM = ("count", "run", "runring")     # RAW hooks with a program of their own
TRACEPOINTS = {"rss": b"kmem:rss_stat", "switch": b"sched:sched_switch"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--workload", default="faults 64 8",
                    help="a tests/workloads program and its arguments")
    ap.add_argument("hooks", nargs="*", default=["min", "entry", "alloc"])
    args = ap.parse_args()
    from bcc import BPF, PerfType
    sys.path.insert(0, str(ROOT))
    from tracer.preflight import SUBSTITUTE_DIR
    import os
    if not os.environ.get("BCC_KERNEL_SOURCE") and Path(SUBSTITUTE_DIR).is_dir():
        os.environ["BCC_KERNEL_SOURCE"] = SUBSTITUTE_DIR
    with tempfile.TemporaryDirectory() as d:
        name, *wargs = args.workload.split()
        timer, prog = Path(d) / "timer", Path(d) / name
        for src, exe in ((ROOT / "scripts" / "fork_exit_timer.c", timer),
                         (ROOT / "tests" / "workloads" / f"{name}.c", prog)):
            subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(src)], check=True)
        cmd = [str(timer), str(prog), *wargs]

        def cpu() -> float:
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            return int(re.search(r"WORKLOAD_CPU_NS (\d+)", r.stderr).group(1)) / 1e9

        for hook in args.hooks:
            b = BPF(text=PROGRAMS)
            b[b"flushed"].open_ring_buffer(lambda cpu, data, size: 0)
            switches = []
            for part in hook.split("+"):   # "entry+rss": switched together
                if part not in PERF and part not in RAW and part not in TRACEPOINTS:
                    ap.error(f"unknown hook {part}")
                switches.append(_switch(b, part, PerfType))

            def switch(on: bool) -> None:
                for sw in switches:
                    sw(on)
            ratios, on_t, off_t = [], [], []
            for i in range(args.pairs):
                t = {}
                for on in ((False, True) if i % 2 == 0 else (True, False)):
                    switch(on)
                    t[on] = cpu()
                ratios.append(t[True] / t[False])
                on_t.append(t[True])
                off_t.append(t[False])
            switch(False)
            b.cleanup()
            q = statistics.quantiles(ratios, n=4)
            lo, hi = median_ci(ratios)
            print(f"{args.workload}: {hook:10s} paired median {statistics.median(ratios):.3f}x "
                  f"(95% CI {lo:.3f}..{hi:.3f}, quartiles {q[0]:.3f}..{q[2]:.3f}), "
                  f"on {statistics.median(on_t):.3f} s, "
                  f"off {statistics.median(off_t):.3f} s, {args.pairs} pairs")
    return 0


def _switch(b, hook: str, PerfType):
    """on/off for one hook, its empty program loaded in `b`."""
    if hook in PERF:
        b.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PERF[hook],
                            fn_name=b"on_perf", sample_period=1)
        fds = list(b.open_perf_events[(PerfType.SOFTWARE, PERF[hook])].values())

        def switch(on: bool) -> None:
            for fd in fds:
                fcntl.ioctl(fd, 0x2400 if on else 0x2401, 0)
        return switch
    state = {"on": False}

    def switch(on: bool) -> None:
        if on == state["on"]:
            return
        if hook in RAW and on:
            if hook in ("count", "run"):       # each run's blocks counted afresh
                b[b"blocks"].clear()
            if hook == "runring":              # the last run's records dropped
                b.ring_buffer_consume()
            b.attach_raw_tracepoint(tp=RAW[hook], fn_name=(
                b"on_" + hook.encode() if hook in OWN_PROGRAM else b"on_raw"))
        elif hook in RAW:
            b.detach_raw_tracepoint(tp=RAW[hook])
        elif on:
            b.attach_tracepoint(tp=TRACEPOINTS[hook], fn_name=b"on_tp")
        else:
            b.detach_tracepoint(tp=TRACEPOINTS[hook])
        state["on"] = on
    return switch


if __name__ == "__main__":
    sys.exit(main())
