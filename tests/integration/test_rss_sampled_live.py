"""--rss sampled (the default of --faults=summary and -a): the counters read
from /proc/PID/status at an interval, against what the process read itself
while its resident set stood still (tests/workloads/holdrss.c)."""
from __future__ import annotations

import json
import re

import pytest

from memtrace_helpers import counter, exec_pid, faults_of, marker_ts, run_memtrace
from tracer import rss, summary

pytestmark = pytest.mark.live

KiB, MiB = 1024, 1 << 20


def _hold(path) -> dict[str, int]:
    m = re.fullmatch(r"HOLD anon=(\d+) file=(\d+) shmem=(\d+)\n", path.read_text())
    assert m, path.read_text()
    return dict(zip(("anon", "file", "shmem"), (int(v) * KiB for v in m.groups())))


@pytest.mark.parametrize("mode", [["--faults=summary"], ["--rss", "sampled"]],
                         ids=["summary-default", "events-sampled"])
def test_sampled_values_are_what_the_process_read(workloads, tmp_path, mode):
    out, js = tmp_path / "hold.txt", tmp_path / "summary.json"
    proc, t = run_memtrace([*mode, "--rss-interval", "0.05", "--json", str(js), "--",
                            workloads["holdrss"], str(out), "32", "1000"], tmp_path, quiet=False)
    held, doc, meta = _hold(out), json.loads(js.read_text()), t.meta
    pid = exec_pid(t.events, "holdrss")
    assert (meta["rss"], meta["rss_interval"], meta["residency"]) == ("sampled", 0.05, True)
    # kmem:rss_stat not attached: no rss event from BPF, faults without residency
    assert counter(meta, "rss") == 0
    assert faults_of(t.events, pid)["rss_anon"].isna().all()

    r = t.rss[t.rss["pid"] == pid]
    assert set(r["cause"].astype(str)) == {"exec", "sampled", "exit"}, r["cause"].value_counts()
    # a row only where a counter changed: the value read in the 600 ms the
    # process held still is what it read itself
    v = rss.at(t.rss, pid, marker_ts(t.events, pid, 101))
    assert (int(v["anon"]), int(v["file"]), int(v["shmem"])) == \
        (held["anon"], held["file"], held["shmem"]), (v, held)
    assert held["anon"] >= 32 * MiB

    # the summary's peak: a lower bound, at least the held set, said so
    p = doc["peaks"]["per_pid"][str(pid)]
    assert p["rss_exact"] is False and p["rss"] >= held["anon"] + held["file"] + held["shmem"]
    assert "resident bytes read every 0.05 s (--rss sampled) with the kernel's" in proc.stderr
    assert "high-water mark (VmHWM): peaks at least" in proc.stderr
    assert ">=" + summary._bytes(p["rss"]) in proc.stderr


SPIKE = ("import time; time.sleep(1); b = bytearray(64 << 20); del b; "
         "open({out!r}, 'w').write(open('/proc/self/status').read()); time.sleep(1.2)")


def test_a_peak_between_two_reads_is_in_the_high_water_mark(tmp_path):
    # 1 s asleep (a read comes meanwhile: VmHWM counts from the address
    # space's start, and only a rise after the first read is the trace's),
    # 64 MiB touched and given back in a few tens of ms, 1.2 s asleep: reads
    # every 0.5 s may miss the spike; VmHWM, read with them, holds it, and
    # only this image's (memtrace's own memory, which the child had before
    # its exec, is not in it)
    out, js = tmp_path / "status.txt", tmp_path / "summary.json"
    code = SPIKE.format(out=str(out))
    proc, t = run_memtrace(["--faults=summary", "--rss-interval", "0.5", "--json", str(js),
                            "--", "/usr/bin/python3", "-c", code], tmp_path, quiet=False)
    own = dict(re.findall(r"^(VmHWM|VmRSS):\s*(\d+) kB$", out.read_text(), re.M))
    hwm, now = int(own["VmHWM"]) * KiB, int(own["VmRSS"]) * KiB
    assert hwm >= 64 * MiB > now, own          # the spike, then given back
    pid = exec_pid(t.events, "python3")
    p = json.loads(js.read_text())["peaks"]["per_pid"][str(pid)]
    assert p["rss_vmhwm"] >= hwm and p["rss"] >= hwm, p
    assert p["rss_vmhwm"] <= hwm + 16 * MiB, p   # python's own growth after its read only
    assert p["rss_exact"] is False
    assert ">=" + summary._bytes(p["rss"]) in proc.stderr


FORKED = ("import os, time\n"
          "pid = os.fork()\n"
          "if pid == 0:\n"
          "    b = b'\\x01' * (32 << 20); time.sleep(0.6); os._exit(0)\n"
          "os.waitpid(pid, 0)\n")


def test_a_forked_child_is_read_while_it_runs(tmp_path):
    # the rings are read only with a reason (tracer.drain_gate): a fork is
    # one (BPF wakes the loop), so the sampler knows the child at once and
    # reads it while it holds its 32 MiB, not only after its exit
    proc, t = run_memtrace(["--rss", "sampled", "--rss-interval", "0.05", "--",
                            "/usr/bin/python3", "-c", FORKED], tmp_path, quiet=False)
    parent = exec_pid(t.events, "python3")
    forks = t.events[(t.events["kind"] == "fork") & (t.events["pid"] == parent)]
    assert len(forks) == 1, forks
    child = int(t.rss["pid"][t.rss["pid"] != parent].iloc[0])
    r = t.rss[(t.rss["pid"] == child) & (t.rss["cause"].astype(str) == "sampled")]
    assert len(r) and int(r["anon"].max()) >= 32 * MiB, t.rss[t.rss["pid"] == child]
