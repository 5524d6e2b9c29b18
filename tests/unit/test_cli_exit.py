"""The end of a run: CMD's exit wakes the capture loop at once (a pidfd in
its epoll set, tracer.capture_procs.ExitWatch), and the console entry
(tracer.cli.run) leaves without the interpreter's teardown, its output
flushed and its status kept."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from dataset_helpers import write_run
from tracer.capture_procs import ExitWatch

ROOT = Path(__file__).resolve().parents[2]
# block-buffered output when piped, as a user's shell has it (not unbuffered)
_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
        "PYTHONPATH": str(ROOT)}


def test_exit_watch_wakes_the_poll_at_the_exit() -> None:
    poller = select.epoll()
    t0 = time.monotonic()
    child = subprocess.Popen(["sleep", "0.2"])
    watch = ExitWatch(poller, child.pid)
    assert watch.fd is not None
    assert poller.poll(0.05) == []                  # still running: no wake
    events = poller.poll(10)                         # woken by the exit, not the timeout
    took = time.monotonic() - t0                     # from before the start: >= its sleep
    assert events == [(watch.fd, select.EPOLLIN)]
    assert 0.2 <= took < 5
    child.wait()
    watch.close()
    assert watch.fd is None
    assert poller.poll(0) == []                      # unregistered: no busy loop after
    watch.close()                                    # twice: harmless
    poller.close()


def test_exit_watch_of_a_process_gone_leaves_the_timeout() -> None:
    poller = select.epoll()
    child = subprocess.Popen(["true"])
    child.wait()                                     # reaped: no such pid any more
    watch = ExitWatch(poller, child.pid)
    assert watch.fd is None
    assert poller.poll(0) == []
    watch.close()
    poller.close()


def _python(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=_ENV)


def _run(*args: str) -> subprocess.CompletedProcess:
    return _python("-m", "tracer", *args)


def test_console_entry_keeps_status_and_output() -> None:
    done = _run("--help")          # SystemExit from argparse: the usual way out
    assert done.returncode == 0
    assert done.stdout.startswith("usage: memtrace") and "examples:" in done.stdout
    bad = _run("report", "/nonexistent/trace.parquet")   # main's status, one line
    assert bad.returncode not in (0, 1)
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("memtrace: ")


def test_console_entry_flushes_its_output(tmp_path: Path) -> None:
    """A subcommand's output, piped (block-buffered) and not flushed by it
    (`report`), arrives whole before the process leaves through os._exit."""
    write_run(tmp_path, faults=3, mmaps=1, major=0, hostname="h", now=1735787045.0)
    trace = next(tmp_path.rglob("*.parquet"))
    done = _run("report", str(trace))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") > 5 and done.stdout.endswith("\n")
    assert done.stdout == _report_in_process(trace)


def _report_in_process(trace: Path) -> str:
    """`report` through main() and the interpreter's usual exit."""
    done = _python("-c", "import sys; from tracer.cli import main; "
                   "sys.exit(main(['report', sys.argv[1]]))", str(trace))
    assert done.returncode == 0, done.stderr
    return done.stdout
