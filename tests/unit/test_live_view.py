"""The live view (tracer.live) without BPF: the figures' formats, the status
line's width, the bytes-mapped sums over batches of event records, and the
redraw/clear protocol on a fake terminal with a fake clock."""
import io
import re
from types import SimpleNamespace

import numpy as np
import pytest

from tracer import layout, live, trace_rows

C = layout.C
MiB = 1 << 20


# ---- formats ----

_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _parse_count(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]?)", text)
    return float(m.group(1)) * _SUFFIX[m.group(2)]


@pytest.mark.parametrize("v, text", [(0, "0"), (999, "999"), (1000, "1.00k"), (1239, "1.23k"),
                                     (12_399, "12.3k"), (999_999, "999k"),
                                     (1_000_000, "1.00M"), (123_456_789, "123M"),
                                     (10**15, "1000T")])
def test_count(v, text):
    assert live.count(v) == text


def test_count_is_cut_never_rounded_up_and_never_shrinks():
    values = np.unique(np.random.default_rng(1).integers(0, 10**13, 20000, dtype=np.int64))
    shown = [_parse_count(live.count(int(v))) for v in values]
    assert all(s <= v for s, v in zip(shown, values.tolist()))
    assert shown == sorted(shown)
    assert max(len(live.count(int(v))) for v in values) <= 5


@pytest.mark.parametrize("v, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"),
                                     (-3 * MiB // 2, "-1.50 MiB"), (100 * MiB, "100 MiB"),
                                     (1023 * MiB, "1023 MiB"), (5 << 40, "5.00 TiB")])
def test_size(v, text):
    assert live.size(v) == text


@pytest.mark.parametrize("s, text", [(0, "0.0s"), (3.27, "3.2s"), (599.99, "599.9s"),
                                     (600, "10m00s"), (3725, "62m05s"), (36000, "10h00m")])
def test_elapsed(s, text):
    assert live.elapsed_text(s) == text


def test_status_line_fits_79_columns_at_its_widest():
    line = live.status_line(39599, 999_999, 999_999_999, 999_999_999, -1023 * (1 << 30),
                            999_999_999)
    assert len(line) <= 79, (len(line), line)
    assert line.startswith("10h59m ") and line.endswith(" LOST 999M")
    assert live.status_line(1.5, 10, 3, 0, 0, 0) == \
        "1.5s  10 events/s  faults 3 minor 0 major  mapped 0 B  lost 0"
    assert len(live.status_line(1.5, 10, 3, 0, 0, 0, width=39)) == 39   # narrow terminal


# ---- bytes mapped ----

def _ev(rows):
    """rows: (ts, pid, kind, args, ret[, flags]) -> an event batch, as the
    capture makes it from the ring's records."""
    e = np.zeros(len(rows), layout.EVENT)
    for i, (ts, pid, kind, args, ret, *flags) in enumerate(rows):
        e[i]["ts"], e[i]["pid"], e[i]["tid"] = ts, pid, pid
        e[i]["kind"] = C["MT_EV_" + kind.upper()]
        e[i]["args"][:len(args)] = args
        e[i]["ret"] = ret
        e[i]["flags"] = flags[0] if flags else 0
    e["comm"] = b"prog"
    return trace_rows.event_batch(e, trace_rows.CommTable())


def _exec(ts, pid):
    x = np.zeros(1, layout.EXEC)
    x["ts"], x["pid"], x["tid"], x["kind"] = ts, pid, pid, C["MT_EV_EXEC"]
    return x


def test_net_mapped_sums_mmap_munmap_mremap_and_heap_growth():
    n = live.NetMapped()
    n.update(_ev([
        (1, 10, "mmap", [0, 8 * MiB, 3, 0x22, 2**64 - 1, 0], 0x7f0000000000),
        (2, 10, "mmap", [0, 4 * MiB, 3, 0x22, 2**64 - 1, 0], -12),      # ENOMEM: nothing
        (3, 10, "munmap", [0x7f0000000000, MiB], 0),
        (4, 10, "mremap", [0x7f0000100000, MiB, 3 * MiB, 1, 0], 0x7f0000400000),
        (5, 10, "brk", [0], 0x555000),                 # reads the break: no growth
        (6, 20, "brk", [0x900000], 0x900000),          # first brk seen of 20: its baseline
        (7, 10, "brk", [0x575000], 0x575000),          # +0x20000
        (8, 10, "brk", [0x595000], 0x575000),          # failed: the break stays
        (9, 10, "madvise", [0x7f0000000000, MiB, 4], 0),
    ]))
    assert n.by_pid == {10: 8 * MiB - MiB + 2 * MiB + 0x20000}
    assert n.brk == {10: 0x575000, 20: 0x900000}
    # the next batch goes on from the breaks seen
    n.update(_ev([(10, 20, "brk", [0x901000], 0x901000),
                  (11, 10, "brk", [0x565000], 0x565000)]))
    assert n.by_pid == {10: 9 * MiB + 0x10000, 20: 0x1000}
    assert n.total == 9 * MiB + 0x11000


def test_net_mapped_forgets_a_process_at_its_exit_and_exec():
    n = live.NetMapped()
    n.update(_ev([(1, 10, "mmap", [0, MiB], 0x1000), (2, 20, "mmap", [0, 2 * MiB], 0x1000),
                  (3, 30, "mmap", [0, 4 * MiB], 0x1000)]))
    dead = C["MT_EXIT_GROUP_DEAD"]
    n.update(_ev([(4, 10, "exit", [], 0, 0),           # a thread of 10: 10 stays
                  (5, 20, "exit", [], 0, dead),        # 20 is gone
                  (6, 30, "munmap", [0x1000, MiB], 0),  # 30 before its exec: gone with it
                  (8, 30, "mmap", [0, 64 << 10], 0x1000)]),   # 30 after its exec
                 _exec(7, 30))
    assert n.by_pid == {10: MiB, 30: 64 << 10}
    assert 20 not in n.brk


def test_net_mapped_of_an_empty_batch():
    n = live.NetMapped()
    n.update(None, np.zeros(0, layout.EXEC))
    n.update(trace_rows.event_batch(np.zeros(0, layout.EVENT), trace_rows.CommTable()))
    assert n.total == 0


# ---- redraws ----

class _Tty(io.StringIO):
    def isatty(self):
        return True


def _res(start, events=0, minor=0, major=0):
    net = live.NetMapped()
    net.by_pid = {1: 3 * MiB}
    return SimpleNamespace(start_ts=int(start * 1e9), counts={"fault": events},
                           faults={1: [minor, major]}, net_mapped=net)


def test_view_only_on_a_terminal_and_not_quiet():
    assert live.LiveView.for_stream(io.StringIO(), False, ()) is None
    assert live.LiveView.for_stream(_Tty(), True, ()) is None
    assert isinstance(live.LiveView.for_stream(_Tty(), False, ()), live.LiveView)


def test_redraws_at_most_four_times_a_second_then_clears(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    now = [100.0]
    out = _Tty()
    view = live.LiveView(out, ["lost_fault", "lost_event"], clock=lambda: now[0])
    counters = lambda: {"lost_fault": 2, "lost_event": 1, "syscalls": 99}  # noqa: E731
    view(_res(99.5, events=500, minor=400, major=1), counters)
    assert out.getvalue() == ("\r0.5s  1.00k events/s  faults 400 minor 1 major  "
                              "mapped 3.00 MiB  LOST 3\x1b[K")
    now[0] = 100.1                                   # too soon: nothing
    view(_res(99.5, events=600), counters)
    assert out.getvalue().count("\r") == 1
    now[0] = 100.5                                   # 500 more events in 0.5 s
    view(_res(99.5, events=1000, minor=800, major=1), counters)
    assert out.getvalue().count("\r") == 2
    assert "\r1.0s  1.00k events/s  faults 800 minor" in out.getvalue()
    said = []
    view.wrap(said.append)("a message")              # clears the line first
    assert out.getvalue().endswith("LOST 3\x1b[K\r\x1b[K") and said == ["a message"]
    view.clear()                                     # nothing shown: nothing to clear
    assert out.getvalue().endswith("LOST 3\x1b[K\r\x1b[K")


def test_dumb_terminal_gets_spaces_not_escapes(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    out = _Tty()
    view = live.LiveView(out, [], clock=lambda: 10.0)
    view(_res(9.0), dict)
    view.clear()
    assert "\x1b" not in out.getvalue()
    first = out.getvalue().split("\r")[1]
    assert len(first) == 79 and first.startswith("1.0s  0 events/s")


def test_net_mapped_of_many_processes_in_one_batch():
    # more processes than the grouping takes one pass each for: then a sort
    rows = [(t, 100 + t % 12, "mmap", [0, (1 + t % 12) << 12], 0x1000) for t in range(48)]
    n = live.NetMapped()
    n.update(_ev(rows))
    assert n.by_pid == {100 + i: 4 * ((1 + i) << 12) for i in range(12)}
