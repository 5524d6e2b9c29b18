"""scripts/bench.py's `memtrace-base` runs MEMTRACE_BASE's memtrace, not the
one of the directory it is started from (no privileges)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402


@pytest.mark.skipif(not Path(bench.PY).exists(), reason="no .venv (scripts/setup makes it)")
def test_base_tracer_imports_the_base_checkout_from_the_repository(tmp_path, monkeypatch):
    """Started from the repository's directory (as the documented commands
    are), `python -m tracer` found the repository's tracer first on sys.path
    and never PYTHONPATH's: an A/B of two commits compared one with itself."""
    fake = tmp_path / "base" / "tracer"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import tracer; print(tracer.__file__)\n")
    monkeypatch.setenv("MEMTRACE_BASE", str(tmp_path / "base"))
    cmd = bench.tracers(tmp_path)["memtrace-base-summary"]
    cmd = cmd[:cmd.index("tracer") + 1]       # `env PYTHONPATH=... python ... -m tracer`
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(fake / "__init__.py")
