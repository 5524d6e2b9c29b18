"""Shared fixtures of memtrace's tests (the helpers are in memtrace_helpers.py).

- `workloads` (session): every tests/workloads/*.c compiled with
  `gcc -O1 -g -fno-omit-frame-pointer -pthread`; a dict name -> path.
- Tests marked `@pytest.mark.live` are skipped, with the reason, unless
  running as root with bcc importable and kernel BTF (/sys/kernel/btf).
- `memtrace` (function): `run_memtrace` bound to the test's tmp_path:
  `proc, trace = memtrace(["--", workloads["faults"], "256", "2"])`.
- `disk_tmp` (session): a directory on a disk file system (not tmpfs).
"""
from __future__ import annotations

import functools
import shutil
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
    compile_workloads, fs_type, live_skip_reason, run_memtrace,
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
