"""A process BPF holds at its exec is continued as soon as its maps and exe
are read: before the loop reads the other rings or builds any row (a hold
that waited for the whole drain cost each exec'd workload 6-8 ms here:
docs/benchmarks.md, fifteenth session). Fake rings, no privileges."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tracer import _procfs, capture, capture_drain, trace_rows
from tracer.layout import EVENT, EXEC, FAULT, C


class _Ring:
    def __init__(self, name: str, records: np.ndarray, log: list) -> None:
        self.name, self.records, self.log = name, records, log

    def read(self) -> np.ndarray:
        self.log.append(("read", self.name))
        out, self.records = self.records, self.records[:0]
        return out


class _Probes:
    def __init__(self, rings: dict) -> None:
        self.rings = rings

    def read_rings(self, kind: str) -> np.ndarray:    # one ring of each kind here
        return self.rings[kind].read()


def _exec_record(pid: int, comm: bytes) -> np.ndarray:
    r = np.zeros(1, EXEC)
    r["kind"] = C["MT_EV_EXEC"]
    r["pid"] = r["tid"] = pid
    r["comm"] = comm
    r["filename"] = b"/bin/sleep"
    return r


def test_held_exec_resumed_before_the_other_rings_and_rows(monkeypatch):
    log: list = []
    # a real process to read the maps and exe of (the drain reads /proc)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid = proc.pid
        events = np.zeros(3, EVENT)
        events["kind"] = C["MT_EV_MMAP"]
        events["pid"] = events["tid"] = pid
        faults = np.zeros(2, FAULT)
        faults["pid"] = faults["tid"] = pid
        probes = _Probes({"execs": _Ring("execs", _exec_record(pid, b"sleep"), log),
                          "events": _Ring("events", events, log),
                          "faults": _Ring("faults", faults, log)})
        real_maps = _procfs.read_maps
        monkeypatch.setattr(capture_drain, "resume", lambda p: log.append(("resume", p)))
        monkeypatch.setattr(capture_drain._procfs, "read_maps",
                            lambda p: log.append(("maps", p)) or real_maps(p))
        for name in ("maps_batch", "exec_batch", "event_batch", "fault_batch"):
            real = getattr(trace_rows, name)
            monkeypatch.setattr(trace_rows, name,
                                lambda *a, _n=name, _r=real, **k: log.append(("rows", _n))
                                or _r(*a, **k))
        res = capture.Result()
        held: set[int] = set()
        out = capture_drain.drain(probes, res, trace_rows.CommTable(), {pid}, held)
        steps = [s for s, _ in log]
        assert log[:3] == [("read", "execs"), ("maps", pid), ("resume", pid)], log
        assert steps.index("resume") < steps.index("rows")
        assert log.index(("resume", pid)) < log.index(("read", "events"))
        assert log.index(("resume", pid)) < log.index(("read", "faults"))
        assert held == set()                       # continued, so no longer held
        assert res.exe[pid] == os.readlink(f"/proc/{pid}/exe")
        kinds = [b.column("kind")[0].as_py() for b in out]
        assert "map" in kinds                      # the maps read at the exec are rows
        assert sum(b.num_rows for b in out if b.column("kind")[0].as_py() == "mmap") == 3
    finally:
        proc.kill()
        proc.wait()
