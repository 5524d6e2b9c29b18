"""The pytest plugin without tracing: it costs an unmarked test nothing
(no pandas, no bcc), a bad marker is one clear error, and without root a
marked test is skipped with the reason."""
import os

import pytest

from tracer import pytest_plugin


def test_unmarked_tests_import_nothing_heavy(pytester):
    pytester.makepyfile(test_plain='''
        import sys
        def test_plain():
            heavy = {"pandas", "pyarrow", "bcc", "numpy", "tracer.budget", "tracer.check"}
            assert not heavy & set(sys.modules), heavy & set(sys.modules)
    ''')
    for plugin in (["-p", "tracer.pytest_plugin"], []):     # with -p, and by its entry point
        r = pytester.runpytest_subprocess(*plugin, "-p", "no:cacheprovider")
        r.assert_outcomes(passed=1)


def test_loaded_by_name_and_by_entry_point_at_once(pytester):
    """Where memtrace is installed, pytest loads the plugin as `memtrace`;
    naming its module too (-p, or pytest_plugins in a conftest) must not
    register it twice (pluggy refuses: the run would not start)."""
    pytester.makeconftest('pytest_plugins = ["tracer.pytest_plugin"]')
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    for args in ([], ["-p", "tracer.pytest_plugin"], ["-p", "memtrace"]):
        r = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
        r.assert_outcomes(passed=1)


def test_the_marker_is_registered(pytester):
    r = pytester.runpytest_subprocess("-p", "tracer.pytest_plugin", "--markers")
    assert any(x.startswith("@pytest.mark.memtrace(max_mapped='64M'") for x in r.outlines)


def test_a_bad_marker_is_one_clear_error(pytester):
    pytester.makepyfile(test_bad='''
        import pytest
        @pytest.mark.memtrace(max_maped="1G")
        def test_typo():
            pass
        @pytest.mark.memtrace(max_mapped="lots")
        def test_size():
            pass
    ''')
    r = pytester.runpytest_subprocess("-p", "tracer.pytest_plugin", "-p", "no:cacheprovider")
    r.assert_outcomes(errors=2)
    out = r.stdout.str()
    assert "test_bad.py::test_typo: memtrace marker: unknown key 'max_maped' (did you mean " \
        "max_mapped?)" in out
    assert "max_mapped = 'lots' is not a size" in out
    assert "Traceback" not in out


def test_skipped_with_the_reason_when_not_root(pytester, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in pytest_plugin.skip_reason()
    pytester.makepyfile(test_marked='''
        import pytest
        @pytest.mark.memtrace(max_mapped="64M")
        def test_marked():
            raise AssertionError("must not run")
        def test_fixture(memtrace_trace):
            raise AssertionError("must not run")
    ''')
    r = pytester.runpytest_inprocess("-p", "tracer.pytest_plugin", "-p", "no:cacheprovider",
                                     "-rs")
    r.assert_outcomes(skipped=2)
    assert sum("memtrace: tracing needs root" in x for x in r.outlines) == 2


def test_skip_reason_without_bcc(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bcc" else real(name, *a))
    assert "bcc is not importable" in pytest_plugin.skip_reason()
