"""What becomes of the CMD memtrace started when memtrace is stopped by a
signal (README "Guarantees", tracer/cmd_stop.py): memtrace never exits
leaving it running, whatever CMD does with the signal, and says what it did;
a signal ignored when memtrace starts stays ignored by CMD (and SIGHUP by
memtrace too: nohup).

The case found (issue 6): the suite run as a background job of a script
(`cmd &` ignores SIGINT; pytest, memtrace and CMD inherit that). Ctrl-C to
memtrace's process group stopped memtrace (it catches SIGINT) but not CMD,
and memtrace exited a second later, saying nothing, leaving CMD running; the
Ctrl-C test then waited for the end of memtrace's stderr pipe, which CMD
held, failed, and killed nobody since memtrace was gone.

Every memtrace here runs in a session of its own (`memtrace_session`), all
of which is killed at teardown whatever happens: no workload outlives its
test."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from memtrace_helpers import faults_of, ignored_signals, procs, wait_for_trace

live = pytest.mark.live
RATE = 100_000      # neighbour's faults per second: a trace of bounded size
EXTRA = 4           # faults of the exec no tracer sees (test_robustness.py)


def _started(m, out: Path, name: str = "neighbour") -> int:
    """CMD's pid, once its faults are in the trace."""
    ok = wait_for_trace(out, lambda ev: len(faults_of(ev)) > 0, m.proc, timeout=120)
    assert ok, f"no fault traced within 120 s (exit {m.proc.poll()}):\n{m.stderr()}"
    cmd = [p for p, (c, _) in procs(sid=m.sid).items() if c == name]
    assert len(cmd) == 1, procs(sid=m.sid)
    return cmd[0]


def _exit(m, timeout: float = 120) -> int:
    try:
        return m.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"memtrace did not exit within {timeout} s:\n{m.stderr()}")


def _load(path: Path):
    import tracer
    return tracer.load(path)


@live
@pytest.mark.parametrize("case", ["CMD ignores SIGINT", "SIGINT to memtrace alone",
                                  "CMD ignores SIGINT and SIGTERM"])
def test_stopped_memtrace_leaves_no_cmd_running(workloads, tmp_path, memtrace_session, case):
    """Ctrl-C that does not end CMD: memtrace sends it SIGTERM after the
    grace, then SIGKILL; it exits only once CMD has, with CMD's status, and
    the trace follows CMD to its end (wait4's count next to the captured)."""
    ignore = {"CMD ignores SIGINT": (signal.SIGINT,), "SIGINT to memtrace alone": (),
              "CMD ignores SIGINT and SIGTERM": (signal.SIGINT, signal.SIGTERM)}[case]
    out = tmp_path / "t.parquet"
    m = memtrace_session(["-o", out, "--", workloads["neighbour"], 0, 0, RATE],
                         quiet=False, ignore=ignore)
    cmd = _started(m, out)
    # CMD inherits what memtrace was started with; memtrace catches SIGINT anyway
    assert ignored_signals(cmd) & {signal.SIGINT, signal.SIGTERM} == set(ignore)
    if case == "SIGINT to memtrace alone":
        os.kill(m.proc.pid, signal.SIGINT)
    else:
        os.killpg(m.sid, signal.SIGINT)      # a terminal's Ctrl-C
    status = _exit(m)
    left = procs(sid=m.sid)
    assert not left, f"left running after memtrace exited: {left}\n{m.stderr()}"
    err = m.stderr()
    killed = signal.SIGTERM in ignore
    expect = 128 + (signal.SIGKILL if killed else signal.SIGTERM)
    assert status == expect, err
    said = [ln for ln in err.splitlines() if f"(pid {cmd}) still running" in ln]
    steps = ["SIGINT: sent it SIGTERM"] + (["SIGTERM: killed it (SIGKILL)"] if killed else [])
    assert len(said) == len(steps), err
    for line, step in zip(said, steps):
        assert re.fullmatch(rf"memtrace: neighbour \(pid {cmd}\) still running \d+ s after"
                            rf" {re.escape(step)}", line), line
    t = _load(out)
    assert t.complete and t.meta["interrupted"] == "SIGINT", t.meta
    assert t.meta["exit_status"] == expect
    k = t.meta["kernel"]["total"]
    assert k["source"].startswith("wait4"), k
    assert 0 <= k["unseen_minor"] - k["lost_minor"] <= 1 + EXTRA, k
    assert 0 <= k["unseen_major"] - k["lost_major"] <= 1, k   # GUP_MAJOR of test_robustness.py
    assert len(faults_of(t.events, cmd)) > 0


@live
def test_sighup_ignored_when_started_stays_ignored(workloads, tmp_path, memtrace_session):
    """`nohup memtrace -- CMD`: a hang-up neither stops tracing nor reaches
    CMD; Ctrl-C then ends both (CMD dies of SIGINT, not of SIGHUP)."""
    out = tmp_path / "t.parquet"
    m = memtrace_session(["-o", out, "--", workloads["neighbour"], 0, 0, RATE],
                         ignore=(signal.SIGHUP,))
    cmd = _started(m, out)
    assert signal.SIGHUP in ignored_signals(cmd)
    os.killpg(m.sid, signal.SIGHUP)     # dropped on sending by whoever ignores it
    os.killpg(m.sid, signal.SIGINT)
    status = _exit(m)
    assert not procs(sid=m.sid)
    assert status == 128 + signal.SIGINT, m.stderr()
    t = _load(out)
    assert t.complete and t.meta["interrupted"] == "SIGINT", t.meta
    assert t.meta["exit_status"] == 128 + signal.SIGINT


@live
def test_duration_says_cmd_goes_on(workloads, tmp_path, memtrace_session):
    """-d with CMD: tracing stops, CMD goes on untraced, and memtrace says so
    (the session's teardown kills it)."""
    out = tmp_path / "t.parquet"
    m = memtrace_session(["-o", out, "-d", 1, "--", "sleep", 600], quiet=False)
    status = _exit(m)
    err = m.stderr()
    assert status == 0, err
    cmd = [p for p, (c, _) in procs(sid=m.sid).items() if c == "sleep"]
    assert len(cmd) == 1, procs(sid=m.sid)
    assert f"memtrace: sleep (pid {cmd[0]}) goes on running, untraced (-d)" in err, err
    assert _load(out).meta["interrupted"] == "duration"


@pytest.fixture
def children():
    """Popen objects a test gets of processes it starts: SIGKILLed and
    reaped at teardown, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


@live
def test_sigint_while_cmd_starts_does_not_orphan_it(monkeypatch, tmp_path, children):
    """SIGINT to memtrace just as CMD has been started (here: as Popen
    returns): memtrace stops tracing normally and ends CMD, which did not get
    the signal; before, a KeyboardInterrupt out of Popen left CMD running."""
    from tracer import capture, preflight
    preflight.check_all(lambda s: None)
    command = ["sleep", "600"]
    real = subprocess.Popen

    def popen_then_sigint(args, *a, **kw):
        p = real(args, *a, **kw)
        if args == command:
            children.append(p)
            os.kill(os.getpid(), signal.SIGINT)   # handled before Popen's caller resumes
        return p

    monkeypatch.setattr(subprocess, "Popen", popen_then_sigint)
    said: list[str] = []
    opts = capture.Options(command=command, pids=[], follow=True, duration=60,
                           output=tmp_path / "x.parquet", fmt="parquet")
    # whatever the test run inherited: SIGINT raises KeyboardInterrupt
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        res = capture.run(opts, said.append)
    except KeyboardInterrupt:
        pytest.fail(f"KeyboardInterrupt out of capture.run; CMD {children[0].pid} left running")
    finally:
        signal.signal(signal.SIGINT, old)
        monkeypatch.undo()
    res.spill.close()
    assert len(children) == 1
    assert children[0].poll() is not None, "CMD still running"
    assert res.interrupted == "SIGINT", res.interrupted
    assert res.exit_status == 128 + signal.SIGTERM, (res.exit_status, said)
    pid = children[0].pid
    assert any(re.fullmatch(rf"sleep \(pid {pid}\) still running \d+ s after SIGINT:"
                            " sent it SIGTERM", s) for s in said), said
