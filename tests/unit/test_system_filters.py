"""`memtrace -a` without BPF: the command line's checks, the filters as
BPF's config reads them and as user space decides them, the accounting of
where each traced process came from, and the summary's table."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tracer import _procfs, capture, layout, record, summary, system
from tracer.errors import UsageError
from tracer.layout import C

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mode(*argv: str):
    args = record.parser().parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return record.check_mode(args, command), args


# ---- the command line ----

@pytest.mark.parametrize("argv,message", [
    (["-a", "-p", "1"], "-a traces every process: not with -p or a command"),
    (["-a", "--", "true"], "-a traces every process: not with -p or a command"),
    (["-a", "--user", "root"], "--user and --as-root choose who runs CMD: not with -a"),
    (["-a", "--no-follow"], "--no-follow is for -p"),
    (["--comm", "bash", "--", "true"], "--comm, --cgroup and --uid choose the processes of -a"),
    (["--uid", "0", "-p", "1"], "--comm, --cgroup and --uid choose the processes of -a"),
    (["--cgroup", "/", "-p", "1"], "--comm, --cgroup and --uid choose the processes of -a"),
    (["-a", "--uid", "no-such-user-memtrace"], "--uid no-such-user-memtrace: no such user"),
    (["-a", "--comm", "systemd-journald"], "give --comm systemd-journal$"),
    (["-a", "--comm", ""], "not a process name"),
    (["-a", "--cgroup", "/no/such/cgroup/memtrace"], "no such cgroup|no cgroup v2"),
    ([], "give either -p PID, -a or -- CMD"),
])
def test_bad_combinations_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        _mode(*argv)


@pytest.mark.parametrize("argv", [["-a", "-p", "1"], ["--comm", "x", "--", "true"],
                                  ["-a", "--uid", "no-such-user-memtrace"]])
def test_usage_error_is_one_line_before_anything_runs(argv):
    """No root needed: refused before the set-up checks and BPF."""
    r = subprocess.run([sys.executable, "-m", "tracer", *argv], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memtrace: "), r.stderr
    assert "Traceback" not in r.stderr


def test_filters_parsed():
    f, args = _mode("-a", "--comm", "nginx", "--comm", "bash", "--comm", "nginx",
                    "--uid", "0", "-d", "5")
    assert f == system.Filters(("nginx", "bash"), 0, None)
    assert args.stop_at_exec is False          # -a: no stop at every exec
    assert _mode("-a")[0] == system.Filters()
    user = pwd.getpwuid(os.getuid()).pw_name
    assert _mode("-a", "--uid", user)[0].uid == os.getuid()
    assert _mode("-a", "--uid", "4242")[0].uid == 4242   # a uid needs no passwd entry


@pytest.mark.parametrize("argv,stop", [
    (["-a"], False), (["-a", "--exec-stop"], True), (["-a", "--no-exec-stop"], False),
    (["--", "true"], True), (["--no-exec-stop", "--", "true"], False)])
def test_exec_stop_default(argv, stop):
    assert _mode(*argv)[1].stop_at_exec is stop


def test_comm_at_most_15_bytes():
    assert system.parse_comm("a" * 15) == "a" * 15
    with pytest.raises(UsageError, match="15 bytes"):
        system.parse_comm("é" * 8)                      # 16 bytes of UTF-8


# ---- the filters as BPF reads them ----

def test_config_encoding():
    cg = system.Cgroup("/sys/fs/cgroup/x", "/x", 4242)
    f = system.Filters(("bash",), 0, cg)
    assert f.config() == {C["MT_CFG_ALL"]: C["MT_ALL_FILTERS"], C["MT_CFG_UID"]: 1,
                          C["MT_CFG_CGROUP"]: 4242, C["MT_CFG_COMM"]: 1}
    none = system.Filters().config()
    assert none[C["MT_CFG_UID"]] == 0 and none[C["MT_CFG_CGROUP"]] == 0
    assert none[C["MT_CFG_COMM"]] == 0 and none[C["MT_CFG_ALL"]] == C["MT_ALL_FILTERS"]
    assert max(f.config()) < C["MT_NR_CONFIG"]


def test_comm_keys_zero_padded_as_bpf_get_current_comm():
    keys = system.Filters(("bash", "a" * 15)).comm_keys()
    assert keys == [b"bash" + b"\0" * 12, b"a" * 15 + b"\0"]
    assert all(len(k) == C["MT_COMM_LEN"] for k in keys)


def test_states_and_flags_distinct():
    states = [C[k] for k in ("MT_STATE_PRE_EXEC", "MT_STATE_TRACED",
                             "MT_STATE_IGNORED", "MT_STATE_EXCLUDED")]
    assert len(set(states)) == 4 and 0 not in states
    others = C["MT_EXIT_GROUP_DEAD"] | C["MT_RSS_BASELINE"] | C["MT_RSS_NEW_MM"] | \
        C["MT_RSS_OTHER_TASK"]
    assert C["MT_EXIT_LEFT"] & others == 0


# ---- the filters as user space decides (processes running at start) ----

def test_matches_is_an_and_of_the_filters_given():
    cg = system.Cgroup("/sys/fs/cgroup/a/b", "/a/b", 7)
    assert system.Filters().matches("anything", None, None)
    f = system.Filters(("bash", "sh"), 1000, cg)
    assert f.matches("bash", 1000, "/a/b")
    assert f.matches("sh", 1000, "/a/b/c.scope")          # below the cgroup
    assert not f.matches("bash", 1000, "/a/bc")           # a sibling, not below
    assert not f.matches("bash", 1000, "/a")
    assert not f.matches("bash", 0, "/a/b")
    assert not f.matches("zsh", 1000, "/a/b")
    assert not f.matches("bash", 1000, None)              # no cgroup v2 line
    root = system.Filters(cgroup=system.Cgroup("/sys/fs/cgroup", "/", 1))
    assert root.matches("x", None, "/") and root.matches("x", None, "/any/where")


def test_parse_cgroup_by_directory_or_by_hierarchy_path(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "cgroup.procs").write_text("")
    mounts = [("/", str(tmp_path))]
    ino = os.stat(tmp_path / "a" / "b").st_ino
    for given in (str(tmp_path / "a" / "b"), "/a/b", "a/b"):
        cg = system.parse_cgroup(given, mounts)
        assert cg == system.Cgroup(str(tmp_path / "a" / "b"), "/a/b", ino), given
    # a mount of a subtree (root field of mountinfo): named from the top
    assert system.parse_cgroup("/a/b", [("/top", str(tmp_path))]).rel == "/top/a/b"
    with pytest.raises(UsageError, match="no such cgroup"):
        system.parse_cgroup("/a", mounts)                 # no cgroup.procs: not a cgroup
    with pytest.raises(UsageError, match="no such cgroup"):
        system.parse_cgroup("/a/nope", mounts)
    with pytest.raises(UsageError, match="no cgroup v2 hierarchy"):
        system.parse_cgroup("/a/b", [])


def test_procfs_cgroup_parsing():
    assert _procfs.parse_cgroup_v2(b"4:memory:/x\n0::/user.slice/s.scope\n") == \
        "/user.slice/s.scope"
    assert _procfs.parse_cgroup_v2(b"4:memory:/x\n") is None
    info = (b"25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
            b"30 25 0:26 / /sys/fs/cgroup/my\\040dir rw shared:4 - cgroup2 cgroup2 rw\n"
            b"31 25 0:27 /sub /mnt/cg rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert _procfs.parse_cgroup2_mounts(info) == [("/", "/sys/fs/cgroup/my dir"),
                                                  ("/sub", "/mnt/cg")]


def test_own_process_in_list_and_cgroup_readable():
    assert os.getpid() in _procfs.list_pids()
    if _procfs.cgroup2_mounts():
        assert _procfs.read_cgroup_v2(os.getpid()).startswith("/")


# ---- where each traced process came from ----

def _events(rows: list[dict]) -> np.ndarray:
    ev = np.zeros(len(rows), layout.EVENT)
    for i, r in enumerate(rows):
        for k, v in r.items():
            ev[i][k] = v
    return ev


def _res(**kw) -> capture.Result:
    res = capture.Result()
    res.origin = {}
    for k, v in kw.items():
        setattr(res, k, v)
    return res


def test_account_fork_left_and_first_seen():
    res = _res(origin={10: "start"}, baseline={10: {"minflt": 5, "majflt": 0},
                                                  11: {"minflt": 1, "majflt": 0}})
    res.kernel[12] = {"minflt": 9, "majflt": 0, "source": "/proc/PID/stat (exited)"}
    live = {10, 12}
    res.origin[12] = "start"
    ev = _events([
        {"kind": C["MT_EV_FORK"], "pid": 10, "aux": 11},
        {"kind": C["MT_EV_EXIT"], "pid": 12, "flags": C["MT_EXIT_GROUP_DEAD"] | C["MT_EXIT_LEFT"]},
        {"kind": C["MT_EV_MMAP"], "pid": 13},
    ])
    faults = np.zeros(2, layout.FAULT)
    faults["pid"] = [13, 14]
    snapped = []
    out = system.account(res, ev, faults, live, lambda pid: snapped.append(pid) or [pid])
    assert res.origin == {10: "start", 11: "fork", 12: "start", 13: "seen", 14: "seen"}
    assert 11 not in res.baseline                 # forked: its whole life is traced
    assert res.left == {12} and 12 not in res.kernel and 12 not in live
    assert snapped == [13, 14] and out == [13, 14] and {13, 14} <= live


def test_entered_at_exec():
    res = _res(origin={10: "fork"})
    live: set[int] = set()
    system.entered(10, res, held=False, live_pids=live)
    assert res.origin[10] == "fork" and not live       # traced before its exec
    system.entered(os.getpid(), res, held=True, live_pids=live)
    assert res.origin[os.getpid()] == "exec" and os.getpid() in live
    assert set(res.baseline[os.getpid()]) == {"minflt", "majflt"}   # held: read at once
    res.left.add(10)
    system.entered(10, res, held=False, live_pids=live)
    assert res.origin[10] == "exec" and 10 not in res.left and 10 not in res.baseline


def test_kernel_figures_only_where_they_cover_the_trace():
    base = {"minflt": 100, "majflt": 1}
    res = _res(origin={1: "start", 2: "fork", 3: "exec", 4: "exec", 5: "seen", 6: "fork"},
               baseline={1: base, 3: base}, left={6})
    res.faults = {p: [50, 0] for p in range(1, 7)}
    res.processes = {p: f"p{p}" for p in range(1, 7)}
    for p in range(1, 7):
        res.kernel[p] = {"minflt": 150, "majflt": 1, "source": "/proc/PID/stat (exited)"}
    k = summary.kernel_check(res)
    assert sorted(k["per_pid"]) == ["1", "2", "3"]
    assert k["per_pid"]["1"]["kernel_minor"] == 50 and k["per_pid"]["2"]["kernel_minor"] == 150
    assert k["total"]["processes_with_kernel_counts"] == 3 and k["total"]["processes"] == 6


# ---- the summary's table ----

def test_process_table_fits_80_columns_and_adds_up():
    res = _res()
    n = 60
    res.processes = {100_000 + p: f"a-very-long-name{p}"[:15] for p in range(n)}
    res.faults = {100_000 + p: [p * 123_456_789, p % 3] for p in range(n)}
    res.origin = {pid: ("start", "fork", "exec", "seen")[pid % 4] for pid in res.processes}
    res.left = {100_003}
    per_pid = {str(pid): {"kernel_minor": f[0] + 1, "kernel_major": f[1]}
               for pid, f in res.faults.items() if pid % 2}
    lines = system.process_lines(res, per_pid, top=10)
    assert max(len(ln) for ln in lines) <= 80, "\n".join(lines)
    assert len(lines) == 2 + 10 + 3
    assert lines[2].split()[:2] == [str(100_000 + n - 1), res.processes[100_000 + n - 1]]

    def col(line, i):
        v = line.split()[i]
        return 0 if v == "-" else int(v.replace(",", ""))

    shown = sum(col(ln, 2) for ln in lines[2:12])     # pid, name, captured minor, ...
    more, every, with_k = lines[12], lines[13], lines[14]
    assert "(50 more)" in more and "all 60" in every and "30 with kernel counts" in with_k
    total = sum(f[0] for f in res.faults.values())
    assert shown + col(more, -4) == col(every, -4) == total
    assert col(with_k, -2) == sum(v["kernel_minor"] for v in per_pid.values())
    assert col(with_k, -4) == sum(res.faults[int(p)][0] for p in per_pid)


def test_summary_renders_the_table_only_with_a():
    opts = SimpleNamespace(command=None, stacks=0, residency=False, rss_interval=0.1, records_rss=True,
                           fault_mode="summary", fault_latency=False, alloc=False,
                           system=system.Filters(("x",)))
    res = _res(processes={5: "x"}, faults={5: [3, 0]}, origin={5: "fork"})
    res.kernel[5] = {"minflt": 3, "majflt": 0, "source": "/proc/PID/stat (exited)"}
    meta = summary.metadata(res, opts, ["-a", "--comm", "x"])
    assert meta["system"]["comm"] == ["x"] and meta["system"]["origin"] == {"5": "fork"}
    from pathlib import Path
    text = summary.render(res, meta, Path("t.parquet"), 100)
    assert "by process" in text and "1 with kernel counts" in text
    res.origin = None
    opts.system = None
    assert "by process" not in summary.render(res, summary.metadata(res, opts, []),
                                              Path("t.parquet"), 100)


def test_insert_keeps_a_decision_bpf_made_first():
    """The scan's map update is BPF_NOEXIST: a process BPF decided meanwhile
    (forked by a traced one, or at its exec) is left to its events."""
    import errno
    from tracer import bpf_syscall

    class FakeMap:
        def __init__(self):
            self.d = {}

        def update(self, key, value, flags=0):
            assert flags == system.BPF_NOEXIST
            if key in self.d:
                raise bpf_syscall.LoadError(errno.EEXIST, "exists")
            self.d[key] = value

    class FakeProbes:
        changes = 0

        def traced_changed(self):
            self.changes += 1

    m, probes = FakeMap(), FakeProbes()
    assert system._insert(probes, m, 7, system.TRACED)
    assert not system._insert(probes, m, 7, system.IGNORED)
    assert m.d == {(7).to_bytes(4, "little"): system.TRACED.to_bytes(4, "little")}
    assert probes.changes == 1    # BPF's cached lookups told of the insert, not of the refusal


def test_a_difference_within_the_take_in_and_let_go_windows_is_said_so():
    # a process running at start and at the end (-a): its counters read just
    # before and after BPF began counting it (4 faults between), and around
    # the end (3 between): the two counts may differ by as much
    opts = SimpleNamespace(command=None, stacks=0, residency=False, rss_interval=0.1,
                           records_rss=True, fault_mode="summary", fault_latency=False,
                           alloc=False, system=system.Filters(()))
    from pathlib import Path

    def text(captured: int) -> str:
        res = _res(processes={5: "busy"}, faults={5: [captured, 0]}, origin={5: "start"},
                   baseline={5: {"minflt": 100, "majflt": 0,
                                 "window_minflt": 4, "window_majflt": 0}})
        res.kernel[5] = {"minflt": 1100, "majflt": 0, "source": system.STOPPED,
                         "window_minflt": 3, "window_majflt": 0}
        meta = summary.metadata(res, opts, ["-a"])
        k = meta["kernel"]["total"]
        assert (k["start_window_minor"], k["end_window_minor"]) == (4, 3)
        return summary.render(res, meta, Path("t.parquet"), 100)

    assert "every fault the kernel counted was captured" in text(1000)
    more = text(1004)
    assert "captured 4 minor more: of the faults made while -a took" in more
    assert "running processes in (4) or let them go (3)," in more
    assert "captured 3 minor fewer" in text(997)
    assert "not seen: faults the kernel took with" in text(1005)   # beyond the window
