"""tracer.cmd_stop: when CMD gets which signal after memtrace was stopped,
and what memtrace says (a fake clock; the signals recorded, not sent)."""
from __future__ import annotations

import signal

import pytest

from tracer import cmd_stop


@pytest.fixture
def sent(monkeypatch):
    out: list[tuple[int, int]] = []
    monkeypatch.setattr(cmd_stop, "_send", lambda pid, sig: out.append((pid, sig)))
    return out


class Clock:
    """Tenths of a second, counted in integers (no drift of repeated +0.1)."""

    def __init__(self) -> None:
        self.tenths = 0

    def __call__(self) -> float:
        return 100 + self.tenths / 10


def _run(reason: str, sent, until: float) -> tuple[list[str], list[tuple[float, int]], bool]:
    clock, said = Clock(), []
    e = cmd_stop.Ending(42, "work", reason, said.append, grace=2.0, clock=clock)
    at: list[tuple[float, int]] = [(0.0, s) for _, s in sent]
    going = True
    while going and clock.tenths < until * 10:
        clock.tenths += 1
        n = len(sent)
        going = e.step()
        at += [(clock.tenths / 10, s) for _, s in sent[n:]]
    return said, at, going


def test_sigint_then_sigterm_then_sigkill(sent):
    said, at, going = _run("SIGINT", sent, until=10)
    # nothing at once: a terminal's Ctrl-C has reached CMD's group already
    assert at == [(2.0, signal.SIGTERM), (4.0, signal.SIGKILL)]
    assert said[:2] == ["work (pid 42) still running 2 s after SIGINT: sent it SIGTERM",
                        "work (pid 42) still running 2 s after SIGTERM: killed it (SIGKILL)"]
    # outlived its SIGKILL by the grace: the caller stops waiting, and says so
    assert not going
    assert said[2] == "work (pid 42) has not exited 2 s after SIGKILL: left to the kernel"
    assert all(pid == 42 for pid, _ in sent)


def test_sigterm_is_passed_on_at_once(sent):
    said, at, going = _run("SIGTERM", sent, until=3)
    assert at == [(0.0, signal.SIGTERM), (2.0, signal.SIGKILL)]
    assert said == ["work (pid 42) still running 2 s after SIGTERM: killed it (SIGKILL)"]
    assert going


def test_sighup_like_sigint(sent):
    said, at, _ = _run("SIGHUP", sent, until=3)
    assert at == [(2.0, signal.SIGTERM)]
    assert said == ["work (pid 42) still running 2 s after SIGHUP: sent it SIGTERM"]


def test_nothing_before_the_grace(sent):
    said, at, going = _run("SIGINT", sent, until=1.9)
    assert (said, at, going) == ([], [], True)
