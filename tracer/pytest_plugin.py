"""memtrace's pytest plugin: memory budgets on what a test runs.

    @pytest.mark.memtrace(max_mapped="64M", max_major_faults=0)
    def test_convert(tmp_path):
        subprocess.run(["./convert", "big.png"], check=True)

    def test_maps_once(memtrace_trace):
        subprocess.run(["./prog"], check=True)
        t = memtrace_trace.stop()          # a tracer.Trace of ./prog
        assert (t.events["kind"] == "mmap").sum() == 1

Enabled with `pytest -p tracer.pytest_plugin`, or by itself where memtrace
is installed (entry point `memtrace`; `-p no:memtrace` turns it off).

How: while the test runs, `memtrace -p <this pytest process>` runs beside
it and follows every process the test starts (forks after the attach). A
process that exec'd is measured from its exec, as `memtrace -- CMD`
measures CMD (before its exec it is a copy of pytest, not what the test
runs); one that did not exec (a fork of pytest) from its fork. pytest's own
process is traced (its forks need its mappings) but is in no figure. The
marker's limits are tracer.budget's (`memtrace check --help`), for the
whole tree of processes the test started ([total]), or with comm="NAME" /
exe="PATH" for each matching process. A broken limit fails the test with
the budget report; the trace is then kept and its path printed.

The marker traces the test function's body; the fixture `memtrace_trace`
starts tracing when it is set up (so the fixtures set up after it are
traced too) and `stop()` ends it and returns the trace. Both need root and
bcc: without them the test is skipped, with the reason.

Cost: nothing for a test without the marker or fixture (no import of
pandas or bcc at collection); 2 to 3 s more per traced test (memtrace's
start-up and its first flush, which tells the plugin tracing has begun).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MARKER = "memtrace"
START_TIMEOUT = 120.0        # s: the BPF compile on a cold cache and a busy machine
_RUN = pytest.StashKey["Run"]()
_BUDGET = pytest.StashKey[object]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "memtrace(max_mapped='64M', max_major_faults=0, ...): trace the processes"
        " the test starts with memtrace and fail the test if they break these limits"
        " (limits: memtrace check --help; comm=/exe= for each matching process instead of"
        " the whole tree; needs root and bcc, skipped otherwise)")


def pytest_plugin_registered(plugin, plugin_name, manager) -> None:
    # Named both by the entry point (`memtrace`, loaded wherever memtrace is
    # installed) and by its module name (`-p tracer.pytest_plugin`, or
    # pytest_plugins in a conftest): pytest would register this module again
    # under the other name, which pluggy refuses. One registration is enough.
    if plugin is sys.modules[__name__]:
        for name in {MARKER, __name__} - {plugin_name}:
            manager.set_blocked(name)


def skip_reason() -> str | None:
    """Why memtrace cannot trace here, or None."""
    if os.geteuid() != 0:
        return "memtrace: tracing needs root (run pytest as root, e.g. with sudo)"
    try:
        found = importlib.util.find_spec("bcc") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return (f"memtrace: bcc is not importable by {sys.executable} (install python3-bpfcc;"
                " a venv needs --system-site-packages)")
    return None


class Run:
    """`memtrace -p <this process>` running beside a test."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "memtrace.parquet"    # the whole trace, pytest's own process too
        self.root = os.getpid()
        self.full = None                              # that trace, once stopped
        self._trace = None
        self._proc: subprocess.Popen | None = None
        self._err = None

    def start(self) -> "Run":
        import tracer
        env = dict(os.environ)
        # the same memtrace as this one, wherever it was imported from
        here = str(Path(tracer.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        self._err = open(self.dir / "memtrace.stderr", "w+b")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tracer", "-q", "-p", str(self.root), "-o", str(self.path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err, env=env,
            start_new_session=True)       # a Ctrl-C reaches pytest, which stops it
        deadline = time.monotonic() + START_TIMEOUT
        while not self._attached():
            if self._proc.poll() is not None:
                self._failed_to_start()
            if time.monotonic() > deadline:
                self.close(keep=True)
                pytest.fail(f"memtrace did not start within {START_TIMEOUT:.0f} s"
                            f" (its stderr: {self.dir / 'memtrace.stderr'})", pytrace=False)
            time.sleep(0.05)
        return self

    def _attached(self) -> bool:
        """memtrace writes the first rows (this process's maps, read after
        it is in the BPF filter) to PATH.partial once it traces."""
        import pyarrow as pa
        import pyarrow.ipc as ipc
        try:
            with pa.OSFile(str(self.path) + ".partial") as src:
                return any(b.num_rows for b in ipc.open_stream(src))
        except (OSError, pa.ArrowException):
            return False

    def _stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace").strip()

    def _failed_to_start(self):
        msg = self._stderr().splitlines()
        line = msg[-1] if msg else f"exit status {self._proc.returncode}"
        self.close(keep=False)
        if self._proc.returncode == 3:       # SetupError: the environment is not ready
            pytest.skip(line)
        pytest.fail(f"memtrace -p {self.root} failed: {line}", pytrace=False)

    def stop(self):
        """Ends tracing; the tracer.Trace of the processes the test started
        (each from its exec), pytest's own events left out of no figure:
        see the module's docstring. `self.full` is the whole trace."""
        if self._trace is not None:
            return self._trace
        self._proc.send_signal(signal.SIGTERM)          # ends tracing normally
        try:
            status = self._proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            pytest.fail("memtrace did not stop within "
                        f"{START_TIMEOUT:.0f} s: {self._stderr()}", pytrace=False)
        if status != 0:
            pytest.fail(f"memtrace -p {self.root} exited {status}: {self._stderr()}",
                        pytrace=False)
        from tracer.trace import load
        self.full = load(self.path)
        self._trace = from_exec(self.full)
        return self._trace

    @property
    def trace(self):
        return self.stop()

    def check(self, budget) -> str | None:
        """Stops tracing; the budget report if a limit is broken, else None."""
        from tracer import budget_report, check
        t = self.stop()
        outcomes = check.evaluate(t, budget, exclude=frozenset({self.root}))
        if not check.broken(outcomes):
            return None
        return budget_report.render(outcomes, budget, t)

    def close(self, keep: bool) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._err is not None:
            self._err.close()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def from_exec(t):
    """`t` without what each process did before its first exec, nor the
    fork row that made it (its pre-exec self was a copy of its parent)."""
    import numpy as np
    import pyarrow as pa
    from tracer.trace import Trace
    ev = t.events
    execs = ev.loc[ev["kind"] == "exec"].groupby("pid")["ts"].min()
    if not len(execs):
        return t
    pid = ev["pid"].to_numpy()
    has = np.isin(pid, execs.index.to_numpy())        # a process that exec'd
    first = np.zeros(len(ev), np.uint64)
    first[has] = execs.reindex(pid[has]).to_numpy(np.uint64)
    before = has & (ev["ts"].to_numpy(np.uint64) < first)
    forked = (ev["kind"] == "fork").to_numpy(bool) & \
        ev["child"].isin(execs.index.tolist()).to_numpy(dtype=bool, na_value=False)
    keep = ~(before | forked)
    table = t._table.filter(pa.array(keep)) if t._table is not None else None
    out = Trace(table, t.meta, t.path)
    out.__dict__["events"] = ev[keep].reset_index(drop=True)   # the cached_property's slot
    return out


def _directory(item: pytest.Item) -> Path:
    """Where a marked test's trace goes: under pytest's base temporary
    directory (its retention applies) if pytest tells it, else in /tmp."""
    factory = getattr(item.config, "_tmp_path_factory", None)
    if isinstance(factory, pytest.TempPathFactory):
        return factory.mktemp("memtrace")
    return Path(tempfile.mkdtemp(prefix="memtrace-pytest-"))


def _budget(item: pytest.Item):
    from tracer import budget
    from tracer.errors import UsageError
    marker = item.get_closest_marker(MARKER)
    if marker.args:
        pytest.fail(f"{item.nodeid}: @pytest.mark.memtrace takes keywords only"
                    " (max_mapped='64M', ...)", pytrace=False)
    try:
        return budget.from_keywords(marker.kwargs, "memtrace marker")
    except UsageError as e:
        pytest.fail(f"{item.nodeid}: {e}", pytrace=False)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(MARKER) is None:
        return
    item.stash[_BUDGET] = _budget(item)      # a bad marker fails before any work
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def memtrace_trace(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Traces from here to `stop()`, which returns the tracer.Trace of the
    processes the test started (see tracer.pytest_plugin)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    run = Run(tmp_path_factory.mktemp("memtrace")).start()
    request.node.stash[_RUN] = run
    yield run
    run.close(keep=True)                 # pytest's tmp_path retention applies


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    budget = item.stash.get(_BUDGET, None)
    if budget is None:
        return (yield)
    run = item.stash.get(_RUN, None)
    own = run is None
    if own:
        run = Run(_directory(item)).start()
    keep = False
    try:
        result = yield                   # the test; raises if it failed
        report = run.check(budget)
        if report is not None:
            keep = True
            pytest.fail(f"{report}\ntrace: {run.path}", pytrace=False)
        return result
    finally:
        if own:
            run.close(keep=keep)
