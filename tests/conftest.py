"""Shared fixtures of memtrace's tests (the helpers are in memtrace_helpers.py).

- `workloads` (session): every tests/workloads/*.c compiled with
  `gcc -O1 -g -fno-omit-frame-pointer -pthread`; a dict name -> path.
- Tests marked `@pytest.mark.live` are skipped, with the reason, unless
  running as root with bcc importable and kernel BTF (/sys/kernel/btf).
- `memtrace` (function): `run_memtrace` bound to the test's tmp_path:
  `proc, trace = memtrace(["--", workloads["faults"], "256", "2"])`.
- `disk_tmp` (session): a directory on a disk file system (not tmpfs).
- `memtrace_session` (function): start(args) -> memtrace in a session of its
  own; every process left in it is killed at teardown, whatever happened.
"""
from __future__ import annotations

import functools
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
# tests/ (for `import memtrace_helpers`, `import strace_parse`) and the repo
# (for `import tracer` without an installed package), whatever pytest's
# import mode.
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from memtrace_helpers import (  # noqa: E402
    REPO, compile_workloads, fs_type, kill_session, live_skip_reason, memtrace_cmd,
    run_memtrace,
)

# `pytester`: tests of the pytest plugin (tracer/pytest_plugin.py) run pytest
pytest_plugins = ["pytester"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("live") is not None:
        reason = live_skip_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """name -> path of every compiled tests/workloads/*.c."""
    return compile_workloads(tmp_path_factory.mktemp("workloads"))


@pytest.fixture
def memtrace(tmp_path: Path):
    """run_memtrace bound to the test's tmp_path: memtrace(args, **kw)."""
    return functools.partial(run_memtrace, tmp_path=tmp_path)


@pytest.fixture(scope="session")
def disk_tmp(tmp_path_factory: pytest.TempPathFactory):
    """A directory on a disk file system (not tmpfs/ramfs), for tests that
    need the page cache: pytest's temporary directory if it is on disk, else
    a temporary directory in /var/tmp (removed at the end)."""
    base = tmp_path_factory.mktemp("disk")
    if fs_type(base) not in ("tmpfs", "ramfs", "?"):
        yield base
        return
    if Path("/var/tmp").is_dir() and fs_type(Path("/var/tmp")) not in ("tmpfs", "ramfs", "?"):
        d = Path(tempfile.mkdtemp(prefix="memtrace-tests-", dir="/var/tmp"))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    pytest.skip("no disk-backed directory for file-backed major faults (only tmpfs)")


class MemtraceSession:
    """memtrace started by `start(args)`: its Popen is `proc`, its stderr
    goes to a file (`stderr()`), not a pipe, so that its exit is `proc.wait()`
    and never the end of a pipe a surviving CMD could hold open."""

    def __init__(self, args: list, tmp_path: Path, n: int, quiet: bool,
                 ignore: tuple[int, ...]) -> None:
        self.err_path = tmp_path / f"memtrace-{n}.stderr"

        def dispositions() -> None:
            # a terminal's foreground job (nothing ignored), whatever the
            # test run inherited (`pytest &` in a script ignores SIGINT),
            # except the signals the test asks to be ignored
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(s, signal.SIG_IGN if s in ignore else signal.SIG_DFL)

        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(memtrace_cmd(*args, quiet=quiet), cwd=REPO,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True, preexec_fn=dispositions)

    @property
    def sid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


@pytest.fixture
def memtrace_session(tmp_path: Path):
    """start(args, quiet=True, ignore=()) -> MemtraceSession: memtrace
    (memtrace_cmd(*args)) in a session of its own, with the signals in
    `ignore` ignored (and CMD inherits that). At teardown, whatever the test
    did or failed at, every process left in each session is SIGKILLed:
    memtrace, CMD and CMD's children keep memtrace's session id even once
    memtrace is gone, so no workload outlives its test."""
    started: list[MemtraceSession] = []

    def start(args: list, quiet: bool = True, ignore: tuple[int, ...] = ()) -> MemtraceSession:
        started.append(MemtraceSession(args, tmp_path, len(started), quiet, ignore))
        return started[-1]

    yield start
    for m in started:
        kill_session(m.sid)
        if m.proc.poll() is None:
            m.proc.wait()
