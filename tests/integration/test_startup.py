"""Start-up through the compiled-program cache (tracer/bpfcache.py), live:
bcc's own loader, a cold cache (compile, load, store) and a warm one (no
compiler) give the same capture of the same workload, and a broken entry
costs a compile, not the trace.

Timing is not tested here (a loaded machine makes it flaky): scripts/bench
--startup measures it."""
from __future__ import annotations

import collections
import json
import os

import pytest

from memtrace_helpers import exec_pid, faults_of, kernel_counts, kinds, of_kind, run_memtrace, unseen_faults

pytestmark = pytest.mark.live

MIB, ROUNDS = 16, 2
GUP_MAX = 4


def _run(workloads, tmp_path, name: str, cache: str):
    env = {**os.environ, "MEMTRACE_BPF_CACHE": cache}
    _, t = run_memtrace(["--", workloads["faults"], MIB, ROUNDS], tmp_path, name=name, env=env)
    return t


def _capture(t) -> dict:
    """What must not depend on how the programs were loaded. The total of
    faults outside the rounds does (ASLR moves the loader's and libc's pages:
    8243 vs 8248 in one CI run), so each run is held to the kernel instead."""
    ev, meta = t.events, t.meta
    assert meta["lost"] == 0, meta.get("counters")
    pid = exec_pid(ev, "faults")
    mine = ev[ev["pid"] == pid]
    minor = faults_of(ev, pid, major=False)
    major = faults_of(ev, pid, major=True)   # a cold file page (libc, the binary) is one
    # every page of each round's mapping, once
    maps = of_kind(mine, "mmap")
    maps = maps[maps["len"] == MIB << 20]
    unmaps = of_kind(mine, "munmap")
    unmaps = unmaps[unmaps["len"] == MIB << 20]
    assert len(maps) == len(unmaps) == ROUNDS
    in_rounds = 0
    addr = minor["addr"].astype("uint64")
    for m, u in zip(maps.itertuples(), unmaps.itertuples()):
        start = int(m.ret)
        f = minor[(addr >= start) & (addr < start + (MIB << 20))
                  & (minor["ts"] > m.ts) & (minor["ts"] < u.ts)]
        assert len(f) == MIB * 256 and f["addr"].nunique() == MIB * 256
        in_rounds += len(f)
    # against the kernel: captured + pre-exec + execve's GUP faults
    k = kernel_counts(meta, pid)
    unseen_major, gup = unseen_faults(meta, int(k["minflt"]), int(k["majflt"]),
                                      len(minor), len(major))
    assert unseen_major >= 0 and 0 <= gup <= GUP_MAX, (k, meta["counters"], len(minor), len(major))
    syscalls = collections.Counter(kinds(mine[kinds(mine) != "fault"]))
    syscalls.pop("rss", None)        # resident-set events outside faults: timing-dependent
    return {"kinds": sorted(set(kinds(ev))), "syscalls": dict(syscalls),
            "faults_in_rounds": in_rounds,
            "counters": sorted(meta["counters"])}


def test_bcc_cold_and_warm_capture_the_same(workloads, tmp_path):
    cache = tmp_path / "cache"
    runs = {}
    for name, setting in (("bcc", "bcc"), ("cold", str(cache)), ("warm", str(cache))):
        t = _run(workloads, tmp_path, f"{name}.parquet", setting)
        startup = t.meta["startup_s"]
        runs[name] = (_capture(t), startup)
    (bcc, s_bcc), (cold, s_cold), (warm, s_warm) = runs["bcc"], runs["cold"], runs["warm"]
    assert s_bcc["compile"] > 0 and s_bcc["cache"] == 0
    assert s_cold["compile"] > 0 and s_cold["cache"] == 0
    assert s_warm["compile"] == 0 and s_warm["cache"] == 1, s_warm
    assert len(list(cache.glob("*.json"))) == 1
    for other in (cold, warm):
        assert other["kinds"] == bcc["kinds"]
        assert other["syscalls"] == bcc["syscalls"]
        assert other["faults_in_rounds"] == bcc["faults_in_rounds"] == ROUNDS * MIB * 256
        assert other["counters"] == bcc["counters"]


def test_a_broken_entry_is_recompiled(workloads, tmp_path):
    cache = tmp_path / "cache"
    _run(workloads, tmp_path, "first.parquet", str(cache))
    (entry,) = cache.glob("*.json")
    d = json.loads(entry.read_text())
    d["progs"][0]["insns"] = d["progs"][0]["insns"][:-12]      # cut short: no longer base64 of 8s
    entry.write_text(json.dumps(d))
    t = _run(workloads, tmp_path, "second.parquet", str(cache))
    assert t.meta["startup_s"]["cache"] == 0 and t.meta["startup_s"]["compile"] > 0
    _capture(t)
    t = _run(workloads, tmp_path, "third.parquet", str(cache))     # stored again
    assert t.meta["startup_s"]["cache"] == 1
    _capture(t)
