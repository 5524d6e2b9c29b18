"""tracer.preflight without root: paths and euid are monkeypatched."""

from __future__ import annotations

import builtins
import os
import subprocess
from pathlib import Path

import pytest

from tracer import errors, preflight
from tracer.errors import SetupError


class Said(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def one_line(e: BaseException) -> str:
    s = str(e)
    assert s and "\n" not in s
    return s


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No headers anywhere, unless a test makes some."""
    monkeypatch.setattr(preflight, "MODULES_DIR", str(tmp_path / "modules"))
    monkeypatch.setattr(preflight, "SUBSTITUTE_DIR", str(tmp_path / "subst"))
    monkeypatch.setattr(preflight, "KHEADERS_PATH", str(tmp_path / "kheaders.tar.xz"))
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    return tmp_path


def test_check_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SetupError) as ei:
        preflight.check_root()
    assert one_line(ei.value) == "memtrace needs root (BPF): run it with sudo"
    assert ei.value.exit_code == 3
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    preflight.check_root()


def test_check_bcc_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bcc" else real_find(name, *a))
    with pytest.raises(SetupError) as ei:
        preflight.check_bcc()
    msg = one_line(ei.value)
    assert "python3-bpfcc" in msg and "--system-site-packages" in msg
    assert "No module named 'bcc'" in msg
    import sys
    assert sys.executable in msg


def test_headers_from_env(paths: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = paths / "tree"
    tree.mkdir()
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tree))
    said = Said()
    preflight.ensure_kernel_headers(said)
    assert said == [] and os.environ["BCC_KERNEL_SOURCE"] == str(tree)


def test_headers_env_not_a_dir(paths: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(paths / "nope"))
    with pytest.raises(SetupError) as ei:
        preflight.ensure_kernel_headers(Said())
    assert "BCC_KERNEL_SOURCE" in one_line(ei.value)


def test_headers_from_modules(paths: Path) -> None:
    (paths / "modules" / os.uname().release / "build").mkdir(parents=True)
    said = Said()
    preflight.ensure_kernel_headers(said)
    assert said == [] and "BCC_KERNEL_SOURCE" not in os.environ


def test_headers_substitute(paths: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subst = paths / "subst"
    subst.mkdir()
    (subst / preflight.VERSION_FILE).write_text("6.1.0-50-amd64\n6.1.176-1\n")
    # modules/RELEASE/build exists only as a dangling link: not usable.
    (paths / "modules" / os.uname().release).mkdir(parents=True)
    (paths / "modules" / os.uname().release / "build").symlink_to(paths / "gone")
    said = Said()
    try:
        preflight.ensure_kernel_headers(said)
        assert os.environ["BCC_KERNEL_SOURCE"] == str(subst)
    finally:
        os.environ.pop("BCC_KERNEL_SOURCE", None)
    assert said == [f"using substitute kernel headers 6.1.0-50-amd64 for kernel "
                    f"{os.uname().release} (memtrace reads no kernel structs)"]


def test_headers_substitute_without_version(paths: Path) -> None:
    (paths / "subst").mkdir()
    said = Said()
    try:
        preflight.ensure_kernel_headers(said)
    finally:
        os.environ.pop("BCC_KERNEL_SOURCE", None)
    assert "headers unknown for kernel" in said[0]


def test_headers_none(paths: Path) -> None:
    with pytest.raises(SetupError) as ei:
        preflight.ensure_kernel_headers(Said())
    assert one_line(ei.value) == (
        f"no kernel headers for {os.uname().release}: run scripts/setup"
        " (it installs the distribution's headers)")


def test_tracefs_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "events").mkdir()
    monkeypatch.setattr(preflight, "TRACING_DIR", str(tmp_path))
    said = Said()
    preflight.ensure_tracefs(said)
    assert said == []


def test_tracefs_missing_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "TRACING_DIR", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SetupError) as ei:
        preflight.ensure_tracefs(Said())
    assert f"mount -t tracefs nodev {tmp_path}" in one_line(ei.value)


def test_tracefs_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "TRACING_DIR", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        (tmp_path / "events").mkdir()
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    said = Said()
    preflight.ensure_tracefs(said)
    assert calls == [["mount", "-t", "tracefs", "nodev", str(tmp_path)]]
    assert said == [f"mounted tracefs on {tmp_path}"]


def test_tracefs_mount_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "TRACING_DIR", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 32, "", "mount: permission denied\nmore\n"))
    with pytest.raises(SetupError) as ei:
        preflight.ensure_tracefs(Said())
    msg = one_line(ei.value)
    assert "permission denied" in msg and "mount -t tracefs" in msg


def test_check_all_order(monkeypatch: pytest.MonkeyPatch) -> None:
    order = []
    for name in ("check_root", "check_bcc"):
        monkeypatch.setattr(preflight, name, lambda n=name: order.append(n))
    for name in ("ensure_tracefs", "ensure_kernel_headers"):
        monkeypatch.setattr(preflight, name, lambda say, n=name: order.append(n))
    preflight.check_all(Said())
    assert order == ["check_root", "check_bcc", "ensure_tracefs", "ensure_kernel_headers"]


def test_error_codes_and_one_line() -> None:
    codes = {errors.MemtraceError: 1, errors.UsageError: 2, errors.SetupError: 3,
             errors.NoSuchProcess: 4, errors.TraceFileError: 5, errors.OutputError: 6}
    for cls, code in codes.items():
        assert cls.exit_code == code and issubclass(cls, errors.MemtraceError)
    assert one_line(errors.UsageError("bad\n  option")) == "bad option"
    import pickle
    e = pickle.loads(pickle.dumps(errors.NoSuchProcess(42)))
    assert e.pid == 42 and str(e) == "no such process: 42"


def test_check_bcc_present() -> None:
    pytest.importorskip("bcc")
    preflight.check_bcc()


@pytest.mark.parametrize("error", [ModuleNotFoundError("No module named 'bcc'"),
                                   OSError("libbcc.so.0: cannot open shared object file")])
def test_import_bcc_failing_is_one_line(monkeypatch: pytest.MonkeyPatch, error) -> None:
    """Where bcc is imported (to compile): its failure is the same one line."""
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "bcc":
            raise error
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SetupError) as ei:
        preflight.import_bcc()
    msg = one_line(ei.value)
    assert str(error) in msg and "python3-bpfcc" in msg
    import sys
    assert sys.executable in msg


def test_check_bcc_does_not_import_it() -> None:
    """A run from the compiled-program cache never loads bcc (nor LLVM)."""
    import sys
    code = ("import sys; from tracer import preflight; preflight.check_bcc(); "
            "print('bcc' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    if r.returncode:
        pytest.skip(f"bcc not found here: {r.stderr.strip()[-200:]}")
    assert r.stdout.strip() == "False"
