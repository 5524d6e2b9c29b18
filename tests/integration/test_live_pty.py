"""The live view under a pseudo-terminal (issue 5, acceptance 4): while
memtrace traces, stderr on a terminal shows a status line redrawn in place
(elapsed time, events/s, faults minor/major, bytes mapped, lost events),
cleared before the final summary; with -q, or stderr not a terminal, none."""
from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pytest

from memtrace_helpers import REPO, memtrace_cmd

live = pytest.mark.live

_N = r"(\d+(?:\.\d+)?[kMGT]?)"
STATUS = re.compile(r"(?P<elapsed>\d+\.\d)s +" + _N + r" events/s +faults " + _N +
                    r" minor " + _N + r" major +mapped (?P<mapped>-?\d+(?:\.\d+)? (?:B|[KMGT]iB))"
                    r" +(?:lost|LOST) " + _N + "\x1b\\[K")
_SUFFIX = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _num(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([kMGT]?)", text)
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _workload(faults: str) -> list[str]:
    # 8 x (32 MiB of faults, 0.2 s asleep): 1.6 s of sleeps at least, so the
    # line is redrawn several times however fast the machine (4 a second)
    return ["sh", "-c", f"for i in 1 2 3 4 5 6 7 8; do {faults} 32 1; sleep 0.2; done"]


def _run(args: list, tmp_path, terminal: bool) -> tuple[int, str]:
    """memtrace ARGS with stdout and stderr on a pseudo-terminal of 80
    columns (or stderr on a pipe): (exit status, all it printed)."""
    cmd = memtrace_cmd("-o", tmp_path / "live.parquet", *args, quiet=False)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    err = slave if terminal else subprocess.PIPE
    env = {**os.environ, "TERM": "xterm"}    # not "dumb" (no escapes), as some CI sets it
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=slave, stderr=err,
                            env=env)
    os.close(slave)
    out, deadline = b"", time.monotonic() + 300
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:             # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            out += chunk
    else:
        proc.kill()
        pytest.fail(f"memtrace did not finish: {cmd}")
    os.close(master)
    if not terminal:
        out += proc.stderr.read()
        proc.stderr.close()
    return proc.wait(timeout=60), out.decode("utf-8", "replace")


@live
def test_status_line_on_a_terminal_then_the_summary(workloads, tmp_path):
    status, text = _run(["--", *_workload(workloads["faults"])], tmp_path, terminal=True)
    assert status == 0, text
    lines = [m for m in (STATUS.match(seg) for seg in re.split(r"[\r\n]", text)) if m]
    assert len(lines) >= 2, text
    for m in lines:                                   # each drawn from column 0, within 80
        assert "\r" + m.group(0) in text
        assert len(m.group(0)) - 3 <= 79, m.group(0)
    elapsed = [float(m.group("elapsed")) for m in lines]
    counts = [[_num(m.group(i)) for i in (2, 3, 4, 6)] for m in lines]   # rate, minor, major, lost
    assert elapsed == sorted(elapsed) and elapsed[-1] > elapsed[0], elapsed
    for i in (1, 2, 3):                               # faults and losses only grow
        seq = [c[i] for c in counts]
        assert seq == sorted(seq), (i, seq)
    assert counts[-1][1] > 0                          # faults seen while tracing
    # the line is erased, then the usual summary follows
    last = text.rindex(lines[-1].group(0))
    tail = text[last + len(lines[-1].group(0)):]
    assert "\r\x1b[K" in tail
    summary = tail[tail.index("\r\x1b[K"):]
    assert STATUS.search(summary) is None
    m = re.search(r"memtrace: \d+ process(?:es)?, .*\n\s+faults +([\d,]+): ([\d,]+) minor, "
                  r"([\d,]+) major", summary)
    assert m, summary
    assert int(m.group(2).replace(",", "")) >= counts[-1][1]
    assert re.search(r"\n +trace +\S*live\.parquet", summary), summary


@live
@pytest.mark.parametrize("how", ["-q", "pipe"])
def test_no_status_line_quiet_or_not_a_terminal(workloads, tmp_path, how):
    args = (["-q"] if how == "-q" else []) + ["--", *_workload(workloads["faults"])]
    status, text = _run(args, tmp_path, terminal=how == "-q")
    assert status == 0, text
    assert "\x1b[K" not in text and "events/s" not in text, text
    if how == "-q":
        assert "memtrace:" not in text, text
    else:
        assert re.search(r"memtrace: \d+ process", text), text
