"""`memtrace record` input checks and end-of-run decisions, without BPF:
pid lists, who runs CMD (sudo, --user, --as-root), the exit status when
events were lost, and the ownership of the output files."""
from __future__ import annotations

import os
import pwd
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tracer import capture, capture_files, capture_procs, preflight, record, summary
from tracer.errors import NoSuchProcess, UsageError


def _args(*argv: str):
    return record.parser().parse_args(list(argv))


# ---- -p ----

def test_pids_comma_separated_and_repeated():
    assert _args("-p", "1,2", "-p", "3").pid == [1, 2, 3]


@pytest.mark.parametrize("bad", ["abc", "1,x", "0", "-5", "1,,2", ""])
def test_pid_not_a_number(bad):
    with pytest.raises(UsageError, match="not a process id"):
        _args("-p", bad)


def test_pid_listed_twice_before_anything_else():
    # checked first: no /proc lookup needed for 999999
    with pytest.raises(UsageError, match="999999 is listed twice"):
        record._check_pids([999_999, 999_999])
    with pytest.raises(UsageError, match="listed twice"):
        record._check_pids(_args("-p", "7", "-p", "7").pid)


def test_pid_memtrace_itself():
    with pytest.raises(UsageError, match="memtrace itself"):
        record._check_pids([os.getpid()])


def test_pid_missing():
    with pytest.raises(NoSuchProcess):
        record._check_pids([4_194_305])   # above PID_MAX_LIMIT: never a process


def test_pid_a_thread_names_its_process():
    ready, done, tid = threading.Event(), threading.Event(), []

    def body():
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(30)

    t = threading.Thread(target=body)
    t.start()
    try:
        ready.wait(10)
        with pytest.raises(UsageError, match=f"thread of process {os.getpid()}: give -p"):
            record._check_pids([tid[0]])
    finally:
        done.set()
        t.join()


def test_pid_a_kernel_thread():
    if not Path("/proc/2/stat").exists() or "kthreadd" not in Path("/proc/2/stat").read_text():
        pytest.skip("no kthreadd as pid 2 here")
    with pytest.raises(UsageError, match="kernel thread"):
        record._check_pids([2])


# ---- who runs CMD ----

def test_user_and_as_root_exclude_each_other():
    with pytest.raises(UsageError, match="not allowed with"):
        _args("--user", "nobody", "--as-root", "--", "true")


def test_user_or_as_root_with_pid_refused():
    for extra in (["--user", "nobody"], ["--as-root"]):
        with pytest.raises(UsageError, match="not with -p"):
            record.main(["-p", "1", *extra])


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(record.os, "geteuid", lambda: 0)
    monkeypatch.delenv("SUDO_UID", raising=False)
    monkeypatch.delenv("SUDO_GID", raising=False)
    return monkeypatch


def test_sudo_user(as_root):
    assert record._sudo_user() is None
    as_root.setenv("SUDO_UID", "1234")
    as_root.setenv("SUDO_GID", "4321")
    assert record._sudo_user() == (1234, 4321)
    as_root.setenv("SUDO_UID", "0")                 # root ran sudo: nothing to give back
    assert record._sudo_user() is None
    as_root.setenv("SUDO_UID", "x")
    with pytest.raises(UsageError, match="SUDO_UID"):
        record._sudo_user()


def test_sudo_ignored_when_not_root(monkeypatch):
    monkeypatch.setattr(record.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_GID", "1234")
    assert record._sudo_user() is None


def test_run_as_choices():
    nobody = pwd.getpwnam("nobody")
    sudo = (nobody.pw_uid, nobody.pw_gid)
    # default through sudo: the invoking user, with their groups
    uid, gid, groups = record._run_as(_args("--", "true"), sudo)
    assert (uid, gid) == sudo and gid in groups
    assert record._run_as(_args("--as-root", "--", "true"), sudo) is None
    assert record._run_as(_args("--", "true"), None) is None          # not through sudo
    root = record._run_as(_args("--user", "root", "--", "true"), sudo)
    assert root[:2] == (0, 0)
    assert record._run_as(_args("--user", str(nobody.pw_uid), "--", "true"), None)[0] == \
        nobody.pw_uid
    with pytest.raises(UsageError, match="no such user: memtrace-nobody-here"):
        record._run_as(_args("--user", "memtrace-nobody-here", "--", "true"), None)


def test_invoker_without_passwd_entry():
    uid = 2**31 - 7
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    assert record._invoker(uid, 555) == (uid, 555, [555])


def test_popen_user_arguments():
    assert capture_procs.user_args(None) == {}
    assert capture_procs.user_args((5, 6, [6, 7])) == {"user": 5, "group": 6,
                                                       "extra_groups": [6, 7]}


# ---- the end of a run: exit status on loss, ownership of the files ----

class _FakeSpill:
    def __init__(self, output: Path):
        self.output = output

    def finish(self, fmt, meta):
        self.output.write_text("trace")
        if fmt == "csv":
            Path(str(self.output) + ".meta.json").write_text("{}")
        return 5


@pytest.fixture
def fake_run(monkeypatch):
    """record.main with the capture, preflight and summary replaced:
    fake_run(argv, lost=N, status=S) -> (exit code, chown calls, opts)."""
    seen = {}

    def run(argv, lost=0, status=0):
        chowns = []

        def fake_capture(opts, say, live=None):
            seen["opts"] = opts
            res = capture.Result(exit_status=status)
            res.spill = _FakeSpill(opts.output)
            return res

        monkeypatch.setattr(preflight, "check_all", lambda say: None)
        monkeypatch.setattr(capture, "run", fake_capture)
        monkeypatch.setattr(summary, "metadata", lambda res, opts, argv: {"lost": lost})
        monkeypatch.setattr(summary, "render", lambda *a: "summary")
        monkeypatch.setattr(capture_files.os, "chown",
                            lambda p, u, g: chowns.append((str(p), u, g)))
        return record.main(argv), chowns, seen["opts"]

    return run


def test_lost_events_keep_cmd_status_by_default(fake_run, tmp_path, capsys):
    code, _, _ = fake_run(["-q", "-o", str(tmp_path / "t.parquet"), "--", "true"], lost=12, status=3)
    assert code == 3
    assert capsys.readouterr().err.strip().endswith("memtrace: 12 events LOST: the trace is "
                                                    "incomplete (see the summary)")


def test_fail_on_loss(fake_run, tmp_path):
    out = str(tmp_path / "t.parquet")
    assert fake_run(["-q", "--fail-on-loss", "-o", out, "--", "true"], lost=1)[0] == \
        record.LOST_EXIT == 7
    assert fake_run(["-q", "--fail-on-loss", "-o", out, "--", "true"], lost=0, status=4)[0] == 4


def test_output_files_go_to_the_sudo_user(fake_run, tmp_path, monkeypatch):
    monkeypatch.setattr(record.os, "geteuid", lambda: 0)
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("SUDO_GID", "65533")
    out = tmp_path / "t.csv"
    code, chowns, opts = fake_run(["-q", "-o", str(out), "--", "true"])
    assert code == 0
    assert opts.owner == (65534, 65533)
    assert opts.run_as is not None and opts.run_as[:2] == (65534, 65533)
    assert chowns == [(str(out), 65534, 65533), (str(out) + ".meta.json", 65534, 65533)]


def test_no_chown_without_sudo(fake_run, tmp_path, monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    code, chowns, opts = fake_run(["-q", "-o", str(tmp_path / "t.parquet"), "--", "true"])
    assert code == 0 and chowns == [] and opts.owner is None and opts.run_as is None


def test_stale_trace_removed(tmp_path):
    out = tmp_path / "t.csv"
    out.write_text("old")
    Path(str(out) + ".meta.json").write_text("{}")
    capture_files.remove_stale(out)
    assert not out.exists() and not Path(str(out) + ".meta.json").exists()
    capture_files.remove_stale(out)                # nothing there: fine


def test_release_continues_what_is_held(monkeypatch):
    sent = []
    monkeypatch.setattr(capture_procs.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    held = {11, 12}
    capture_procs.release_held(SimpleNamespace(), held, stop_at_exec=False)
    assert sorted(sent) == [(11, capture_procs.signal.SIGCONT), (12, capture_procs.signal.SIGCONT)]
    assert held == set()


# ---- residency and stacks ----

def test_stacks_and_residency_options():
    a = _args("--", "true")
    assert a.stacks == 0 and record.residency(a, "events") == ("exact", None)
    assert _args("--stacks", "--", "true").stacks == record.STACK_SAMPLE
    assert _args("--stacks", "1", "--no-rss", "--", "true").stacks == 1
    assert record.residency(_args("--no-rss", "--", "true"), "events") == ("off", None)
    assert record.residency(_args("--rss", "off", "--", "true"), "summary") == ("off", None)


def test_summary_mode_samples_residency_by_default():
    assert record.residency(_args("--", "true"), "summary") == \
        ("sampled", record.rss_sample.DEFAULT_INTERVAL)
    assert record.residency(_args("--rss-interval", "0.02", "--", "true"), "summary") == \
        ("sampled", 0.02)
    assert record.residency(_args("--rss", "sampled", "--", "true"), "events")[0] == "sampled"
    assert record.residency(_args("--rss", "exact", "--", "true"), "summary") == ("exact", None)


def test_rss_interval_only_when_sampled():
    with pytest.raises(UsageError, match="--rss-interval is for --rss sampled"):
        record.residency(_args("--rss-interval", "1", "--", "true"), "events")
    with pytest.raises(UsageError, match="invalid choice"):
        _args("--rss", "some", "--", "true")


@pytest.mark.parametrize("argv,mode", [(["--alloc", "--no-rss"], "events"),
                                       (["--alloc", "--rss", "sampled"], "events"),
                                       (["--alloc"], "summary")])
def test_alloc_needs_exact_residency_of_fault_rows(argv, mode):
    with pytest.raises(UsageError, match="--alloc counts pages inside each fault row"):
        record.residency(_args(*argv, "--", "true"), mode)
    assert record.residency(_args("--alloc", "--", "true"), "events") == ("exact", None)


@pytest.mark.parametrize("bad", ["0", "x", "1.5"])
def test_stacks_sample_must_be_a_positive_integer(bad):
    with pytest.raises(UsageError, match="--stacks: not a positive integer"):
        _args("--stacks", bad, "--", "true")
