"""Budget files (tracer.budget): sizes, validation, one-line errors, exit 2
before any tracing."""
import subprocess
import sys
import time

import pytest

from memtrace_helpers import REPO
from tracer import budget as bg
from tracer.errors import UsageError


def _load(tmp_path, text: str) -> bg.Budget:
    p = tmp_path / "budget.toml"
    p.write_text(text)
    return bg.load(p)


def _error(tmp_path, text: str) -> str:
    with pytest.raises(UsageError) as e:
        _load(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "budget.toml") in msg
    return msg


@pytest.mark.parametrize("text, value", [
    (0, 0), (4096, 4096), ("4096", 4096), ("512B", 512), ("64K", 64 << 10),
    ("64M", 64 << 20), ("64m", 64 << 20), ("64MiB", 64 << 20), ("64Mi", 64 << 20),
    ("1G", 1 << 30), ("1.5G", 3 << 29), (" 2 T ", 2 << 40), (".5M", 1 << 19),
])
def test_sizes(text, value):
    assert bg.parse_size(text) == value


@pytest.mark.parametrize("text", ["64MB", "64 KB", "-1", -1, "M", "", "1e9", "64X", True,
                                  1.5, None, [64], "1G2"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        bg.parse_size(text)


def test_a_whole_budget(tmp_path):
    b = _load(tmp_path, """
        [total]
        max_mapped = "1G"
        max_major_faults = 0

        [[process]]
        comm = "faults"
        max_mapped = "96M"
        max_minor_faults = 40000

        [[process]]
        exe = "/usr/bin/python3*"
        comm = "py*"
        max_mmap_calls = 200
        max_site_mapped = 1048576
        """)
    assert b.limits == 6
    total, faults, py = b.scopes
    assert total.kind == "total" and total.limits == [bg.Limit("max_mapped", 1 << 30),
                                                      bg.Limit("max_major_faults", 0)]
    assert (faults.kind, faults.comm, faults.exe) == ("process", "faults", None)
    assert faults.limits[0].metric == "peak_mapped" and faults.limits[0].unit == "bytes"
    assert faults.limits[1] == bg.Limit("max_minor_faults", 40000)
    assert (py.comm, py.exe, py.where) == ("py*", "/usr/bin/python3*", "[[process]] #2")
    assert py.label() == "comm='py*' exe='/usr/bin/python3*'"


def test_one_process_table_written_without_brackets(tmp_path):
    b = _load(tmp_path, '[process]\ncomm = "x"\nmax_brk_calls = 3\n')
    assert [(s.comm, s.limits) for s in b.scopes] == [("x", [bg.Limit("max_brk_calls", 3)])]


@pytest.mark.parametrize("text, says", [
    ('[total]\nmax_maped = "1G"\n', "unknown key 'max_maped' (did you mean max_mapped?)"),
    ('[total]\npeak_mapped = "1G"\n', "unknown key 'peak_mapped' (did you mean max_mapped?)"),
    ('[total]\nmax_mapped = "1GB"\n', "max_mapped = '1GB' is not a size"),
    ('[total]\nmax_mapped = -4\n', "max_mapped = -4 is not a size"),
    ('[total]\nmax_mapped = true\n', "max_mapped = True is not a size"),
    ('[total]\nmax_minor_faults = "10k"\n', "max_minor_faults = '10k' is not a count"),
    ('[total]\nmax_minor_faults = 1.5\n', "max_minor_faults = 1.5 is not a count"),
    ('[totl]\nmax_mapped = 1\n', "unknown section 'totl' (did you mean total?)"),
    ('max_mapped = 1\n', "unknown section 'max_mapped' (limits go in [total] or a"),
    ('[[process]]\nmax_mapped = "1M"\n', "[[process]] #1: name the processes with comm"),
    ('[[process]]\ncomm = ""\nmax_mapped = "1M"\n', "comm must be a non-empty string"),
    ('[[process]]\ncomm = 3\nmax_mapped = "1M"\n', "comm must be a non-empty string"),
    ('[[process]]\ncomm = "a"\nmax_mapped = "1M"\n[[process]]\ncomm = "b"\n',
     "[[process]] #2: no limits"),
    ('[[process]]\ncomm = "a"\nmax_mapped = "1M"\nexec = "x"\n',
     "[[process]] #1: unknown key 'exec' (did you mean exe?)"),
    ('[total]\n', "[total]: no limits"),
    ('', "no limits: add [total] or [[process]] tables"),
    ('total = 5\n', "total must be a table"),
    ('[total\nmax_mapped = 1\n', "not valid TOML: "),
    ('[total]\nmax_mapped = 1\nmax_mapped = 2\n', "not valid TOML: "),
])
def test_one_clear_line_for_each_mistake(tmp_path, text, says):
    assert says in _error(tmp_path, text)


def test_unreadable_files(tmp_path):
    with pytest.raises(UsageError, match="no such budget file"):
        bg.load(tmp_path / "missing.toml")
    with pytest.raises(UsageError, match="is a directory"):
        bg.load(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="not UTF-8"):
        bg.load(tmp_path / "bin.toml")


def test_marker_keywords():
    b = bg.from_keywords({"max_major_faults": 0, "max_mapped": "64M"})
    (scope,) = b.scopes
    assert scope.kind == "total"
    assert scope.limits == [bg.Limit("max_major_faults", 0), bg.Limit("max_mapped", 64 << 20)]
    (per,) = bg.from_keywords({"comm": "faults", "max_heap": "1M"}).scopes
    assert (per.kind, per.comm, per.limits) == ("process", "faults", [bg.Limit("max_heap", 1 << 20)])
    with pytest.raises(UsageError, match="unknown key 'max_faults'"):
        bg.from_keywords({"max_faults": 1})
    with pytest.raises(UsageError, match="no limits"):
        bg.from_keywords({})


def test_every_limit_bounds_a_figure_of_tracer_metrics():
    """One definition of the figures: those `memtrace diff` compares."""
    from tracer import metrics
    units = dict(metrics.PROCESS_METRICS)
    for name, (metric, unit, _) in bg.LIMITS.items():
        if metric == "site_mapped":        # by call site: from recorded stacks
            continue
        assert units.get(metric) == unit, name
    assert {m for m, _, _ in bg.LIMITS.values()} >= set(units)


def _memtrace(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "tracer", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_a_bad_budget_fails_before_tracing(tmp_path):
    """Exit 2, one line, fast, and no trace: the budget is read before the
    BPF program is even compiled (and before the root check)."""
    bad = tmp_path / "b.toml"
    bad.write_text('[total]\nmax_mapped = "lots"\n')
    out = tmp_path / "t.parquet"
    t0 = time.monotonic()
    r = _memtrace("--budget", bad, "-o", out, "--", "true")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("memtrace: ")
    assert "max_mapped = 'lots' is not a size" in r.stderr
    assert time.monotonic() - t0 < 30
    assert not out.exists() and not (tmp_path / "t.parquet.partial").exists()
    r = _memtrace("check", bad, out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    r = _memtrace("--junit", tmp_path / "j.xml", "-o", out, "--", "true")
    assert r.returncode == 2 and "--junit writes budget results" in r.stderr
    good = tmp_path / "g.toml"
    good.write_text("[total]\nmax_mmap_calls = 1\n")
    r = _memtrace("--budget", good, "--json", tmp_path / "no" / "s.json", "-o", out, "--", "true")
    assert r.returncode == 6 and "no directory" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()
