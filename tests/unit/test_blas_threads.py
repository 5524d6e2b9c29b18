"""memtrace imports numpy with OpenBLAS held to one thread (tracer.cli.
blas_one_thread): numpy's OpenBLAS otherwise starts a thread per CPU that
busy-waits after the import. The setting is for that import only: the
environment the traced programs inherit is the user's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import os, sys
sys.path.insert(0, {root!r})
if {call}:
    from tracer import cli
    cli.blas_one_thread()
import numpy
print(len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def _threads(call: bool, env: dict | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")} | (env or {})
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), call=call)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), out[1]


def test_numpy_imported_with_one_thread_and_the_environment_left_as_it_was():
    plain, _ = _threads(False)
    if plain == 1:
        pytest.skip("numpy's BLAS starts no thread here (one CPU, or not OpenBLAS)")
    threads, var = _threads(True)
    assert threads == 1
    assert var == "None"          # not left for the traced programs


def test_the_users_setting_is_kept():
    threads, var = _threads(True, {"OPENBLAS_NUM_THREADS": "2"})
    assert var == "2"
    assert threads == _threads(False, {"OPENBLAS_NUM_THREADS": "2"})[0]
