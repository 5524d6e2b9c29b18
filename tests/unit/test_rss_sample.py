"""--rss sampled (tracer.rss_sample): /proc/PID/status read at an interval,
written as absolute `rss` rows (cause `sampled`) that t.rss follows."""
from __future__ import annotations

import os

import numpy as np

import pandas as pd
import pyarrow as pa

from tracer import _procfs, rss, rss_sample, trace_rows
from tracer.errors import NoSuchProcess

KB = 1024


class FakeProc:
    """/proc/PID/status as _procfs.read_status parses it, per pid."""

    def __init__(self) -> None:
        self.status: dict[int, dict] = {}

    def set(self, pid: int, anon: int, file: int = 0, shmem: int = 0, swap: int = 0,
            name: str = "prog", hwm: int | None = None) -> None:
        rss = anon + file + shmem
        hwm = rss if hwm is None else hwm
        self.status[pid] = (f"Name:\t{name}\nUmask:\t0022\nVmHWM:\t{hwm // KB} kB\n"
                            f"VmRSS:\t{rss // KB}"
                            f" kB\nRssAnon:\t {anon // KB} kB\nRssFile:\t {file // KB} kB\n"
                            f"RssShmem:\t {shmem // KB} kB\nVmSwap:\t {swap // KB} kB\n").encode()

    def read(self, pid: int) -> _procfs.RssStatus | None:
        if pid not in self.status:
            raise NoSuchProcess(pid)
        return _procfs.parse_rss_status(self.status[pid])


def _rows(rec) -> pd.DataFrame:
    batch = trace_rows.event_batch(rec, trace_rows.CommTable())
    return pa.Table.from_batches([batch]).to_pandas()


def test_first_read_gives_all_four_counters_then_only_changes():
    proc = FakeProc()
    proc.set(10, anon=8 * KB, file=4 * KB)
    s = rss_sample.Sampler(0.1, proc.read)
    first = s.sample([10], now=1.0)
    assert sorted(first["aux"].tolist()) == [0, 1, 2, 3]
    assert dict(zip(first["aux"].tolist(), first["args"][:, 0].tolist())) == \
        {0: 4 * KB, 1: 8 * KB, 2: 0, 3: 0}
    assert not s.due(1.05) and s.due(1.1)
    assert len(s.sample([10], now=1.1)) == 0                 # nothing changed: no row
    proc.set(10, anon=12 * KB, file=4 * KB)
    s.active([10])                                           # it faulted, say
    again = s.sample([10], now=1.2)
    assert again["aux"].tolist() == [1] and again["args"][0, 0] == 12 * KB


def test_gone_and_kernel_processes_are_skipped_and_a_reused_pid_starts_again():
    proc = FakeProc()
    proc.set(10, anon=8 * KB)
    proc.status[11] = b"Name:\tkthreadd\nUmask:\t0000\nState:\tS (sleeping)\n"   # no mm
    s = rss_sample.Sampler(0.1, proc.read)
    assert set(s.sample([10, 11, 12])["pid"].tolist()) == {10}
    del proc.status[10]
    s.active([10])
    assert len(s.sample([10])) == 0
    proc.set(10, anon=8 * KB)                                # the same values, a new process
    s.active([10])
    assert len(s.sample([10])) == 4


def test_rows_are_sampled_absolute_values_that_t_rss_follows():
    proc = FakeProc()
    proc.set(10, anon=8 * KB, file=4 * KB, name="worker")
    s = rss_sample.Sampler(0.1, proc.read)
    a = s.sample([10])
    proc.set(10, anon=20 * KB, file=4 * KB, name="worker")
    s.active([10])
    b = s.sample([10])
    rows = _rows(np.concatenate([a, b]))
    assert (rows["kind"] == "rss").all() and (rows["cause"] == "sampled").all()
    assert rows["rss_delta"].isna().all() and (rows["comm"] == "worker").all()
    frame = rss.frame(rows)
    assert (frame["cause"] == "sampled").all()
    last = frame.iloc[-1]
    assert (last["anon"], last["file"], last["shmem"], last["swap"]) == (20 * KB, 4 * KB, 0, 0)
    assert (rss.check(rows)["gap"] == 0).all()


def test_reads_this_process_as_parse_status_does():
    s = rss_sample.Sampler()
    rec = s.sample([os.getpid()])
    assert len(rec) == 4 and s.reads == 1
    assert rec["args"][rec["aux"] == 1, 0][0] > 0            # this process has anon pages
    full = _procfs.read_status(os.getpid())
    fast = _procfs.read_rss_status(os.getpid())
    assert fast.name == full["Name"]
    # Rss lines move between the two reads; VmSwap and the key order do not
    assert fast.counters[2] == full["VmSwap"] and fast.counters[0] > 0


def test_idle_processes_are_read_only_every_full_round():
    proc = FakeProc()
    proc.set(10, anon=8 * KB)
    proc.set(11, anon=8 * KB)
    s = rss_sample.Sampler(0.1, proc.read)
    assert set(s.sample([10, 11])["pid"].tolist()) == {10, 11}    # round 0: everyone
    proc.set(10, anon=12 * KB)
    proc.set(11, anon=12 * KB)                                    # changed by reclaim, say
    s.active([10])
    assert s.sample([10, 11])["pid"].tolist() == [10]             # only the active one
    assert s.reads == 3
    for _ in range(rss_sample.FULL_EVERY - 2):
        assert len(s.sample([10, 11])) == 0
    assert s.sample([10, 11])["pid"].tolist() == [11]             # the full round
    proc.set(12, anon=4 * KB)
    assert set(s.sample([10, 11, 12])["pid"].tolist()) == {12}    # new: read at once


def test_the_pids_of_rows_are_read_without_importing_pandas():
    """The capture loop tells the sampler whose rows came; pandas imported
    there (0.3 s) held a process stopped at its exec that long."""
    import subprocess
    import sys
    code = ("import sys, numpy as np\n"
            "from tracer import capture, rss_sample, trace_rows\n"
            "rows = rss_sample.rows_of([(1, 7, 1, 4096, 'a'), (2, 9, 1, 4096, 'b')])\n"
            "b = trace_rows.event_batch(rows, trace_rows.CommTable())\n"
            "assert capture.pids_of([b, b]) == [7, 9], capture.pids_of([b])\n"
            "print('pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_rows_read_wait_for_take_and_a_process_that_left_loses_them():
    proc = FakeProc()
    proc.set(10, anon=8 * KB)
    proc.set(11, anon=8 * KB)
    s = rss_sample.Sampler(0.1, proc.read)
    s.read([10, 11])
    proc.set(10, anon=12 * KB)
    s.active([10])
    s.read([10, 11])
    rows = s.take(left={11})          # 11 left the trace (-a) in the drain after the read
    assert rows["pid"].tolist() == [10] * 5
    assert len(s.take()) == 0


def test_the_kernels_high_water_mark_keeps_the_peak_the_reads_missed():
    # 64 MiB touched and given back between two reads: the counters read
    # show nothing of it, VmHWM does (it only grows, per address space)
    proc = FakeProc()
    proc.set(10, anon=8 * KB, hwm=8 * KB)
    s = rss_sample.Sampler(0.1, proc.read)
    s.sample([10], now=1.0)
    proc.set(10, anon=8 * KB, hwm=(64 << 20) + 8 * KB)
    s.active([10])
    assert len(s.sample([10], now=1.1)) == 0      # the same counters: no row
    assert s.hwm() == {10: (64 << 20) + 8 * KB}
    proc.set(10, anon=4 * KB, hwm=16 * KB)        # an exec: a new mm starts again
    s.active([10])
    s.sample([10], now=1.2)
    assert s.hwm() == {10: (64 << 20) + 8 * KB}   # the largest read stays
    assert _procfs.parse_rss_status(b"Name:\tx\nRssAnon:\t4 kB\n").hwm == 0


def test_a_high_water_mark_that_never_grew_may_be_older_than_the_trace():
    # -p, or -a's processes running at start: 1 GiB an hour ago is VmHWM
    # at the first read; it says nothing of the traced window
    proc = FakeProc()
    proc.set(10, anon=8 * KB, hwm=1 << 30)
    s = rss_sample.Sampler(0.1, proc.read)
    s.sample([10], now=1.0)
    proc.set(10, anon=16 * KB, hwm=1 << 30)
    s.active([10])
    s.sample([10], now=1.1)
    assert s.hwm() == {}
    proc.set(10, anon=16 * KB, hwm=(1 << 30) + 4 * KB)   # grew: reached while traced
    s.active([10])
    s.sample([10], now=1.2)
    assert s.hwm() == {10: (1 << 30) + 4 * KB}
