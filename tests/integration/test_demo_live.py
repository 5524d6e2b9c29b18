"""`memtrace demo` (issue 10, "What users get"): seed 003's point in numbers,
4 read faults and nothing resident, then 4 write faults and 16 KiB; and the
summary's peaks after the stories."""
from __future__ import annotations

import re
import subprocess

import pytest

from memtrace_helpers import REPO, memtrace_cmd

pytestmark = pytest.mark.live


def test_demo_tells_seed003_in_faults_and_resident_bytes():
    r = subprocess.run(memtrace_cmd("demo", quiet=False), cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^  read 4 pages +no syscall +[\d,]+ KiB +4 minor \(4r\) +0$", out, re.M), out
    assert re.search(r"^  write 4 pages +no syscall +[\d,]+ KiB +4 minor \(4w\) +\+16 KiB$",
                     out, re.M), out
    assert re.search(r"^  munmap +munmap 16 KiB +[\d,]+ KiB +none +-16 KiB$", out, re.M), out
    assert re.search(r"^  peak +mapped +resident  \(the largest over time\)$", out, re.M), out
