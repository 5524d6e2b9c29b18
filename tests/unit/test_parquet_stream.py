"""The Parquet file encoded while tracing (Spill(stream=True)): the same
file, byte for byte, as the conversion of the spill at the end, whether the
encoder kept up or fell behind; and a failure of it leaves nothing half
written."""
import errno
import os

import numpy as np
import pytest

import tracer
from tracer import layout, parquet_stream, trace_rows, writer
from tracer.errors import OutputError

C = layout.C
META = {"format_version": C["MT_FORMAT_VERSION"], "complete": True, "lost": 0,
        "peaks": {"total": {"mapped": 1}}}


def _flushes(n_flushes=7, rows=70_000, seed=1):
    """Batches of flushes as the capture makes them: faults and syscalls
    interleaved in time, several threads' names, rows held back across
    flushes (`before`), more rows than two row groups."""
    rng = np.random.default_rng(seed)
    comms = trace_rows.CommTable()
    t = 0
    out = []
    for i in range(n_flushes):
        f = np.zeros(rows, layout.FAULT)
        f["ts"] = t + np.sort(rng.integers(0, 10**6, rows))
        f["pid"] = 7
        f["tid"] = 7 + (np.arange(rows) // 5000) % 3
        f["addr"] = rng.integers(0, 1 << 30, rows) * 4096
        f["rss_anon"] = 1
        comms.update([7, 8, 9], ["main", f"w{i}", "other"])
        e = np.zeros(rows // 7, layout.EVENT)
        e["ts"] = t + np.sort(rng.integers(0, 10**6, len(e)))
        e["pid"], e["tid"] = 7, 8
        e["comm"] = f"w{i}".encode()
        e["kind"] = C["MT_EV_MMAP"]
        e["args"][:, 1] = 4096
        e["ret"] = 0x7f0000000000
        out.append(([trace_rows.fault_batch(f, comms), trace_rows.event_batch(e, comms)],
                     t + 9 * 10**5))
        t += 10**6
    return out


def _record(out, stream, flushes):
    spill = writer.Spill(out, stream=stream)
    for batches, before in flushes:
        spill.write(batches, before=before)
    spill.write([])
    spill.end()
    return spill


@pytest.mark.parametrize("backlog", [None, 50_000, 0])
def test_streamed_file_is_the_converted_file(tmp_path, monkeypatch, backlog):
    """backlog: the encoder falls behind (taking at most that many rows):
    the rest is read back from the spill."""
    if backlog is not None:
        monkeypatch.setattr(parquet_stream, "MAX_BACKLOG", backlog)
    flushes = _flushes()
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    _record(old, False, flushes).finish("parquet", META)
    spill = _record(new, True, flushes)
    if backlog is not None:
        assert spill._stream.follower.spilled             # fell behind indeed
    spill.finish("parquet", META)
    assert new.read_bytes() == old.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.parquet", "old.parquet"]
    t = tracer.load(new)
    assert t.meta["peaks"] == META["peaks"] and len(t.events) == spill.rows


def test_a_failing_encoder_leaves_no_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(parquet_stream.pq.ParquetWriter, "write_table", full)
    out = tmp_path / "t.parquet"
    spill = _record(out, True, _flushes(3))
    with pytest.raises(OutputError, match="No space left"):
        spill.finish("parquet", META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet.partial"]
    t = tracer.load(out)                      # the spill: cut short, but readable
    assert not t.complete and len(t.events) == spill.rows


def test_abandoned_run_keeps_the_spill_only(tmp_path):
    out = tmp_path / "t.parquet"
    spill = writer.Spill(out, stream=True)
    for batches, before in _flushes(2):
        spill.write(batches, before=before)
    spill.abandon()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet.partial"]
    assert len(tracer.load(out).events) == spill.rows


def test_csv_output_is_converted_at_the_end(tmp_path):
    out = tmp_path / "t.csv"
    spill = _record(out, True, _flushes(2, rows=1000))
    spill.finish("csv", META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.csv.meta.json"]
    assert len(tracer.load(out).events) == spill.rows


@pytest.mark.parametrize("backlog", [None, 0])
def test_peaks_thread_gives_way_to_a_late_encoder_and_gets_the_spills_peaks(
        tmp_path, monkeypatch, backlog):
    """The peaks thread waits while the Parquet encoder is behind (here:
    slowed down), then computes at the end what peaks.of_spill reads back;
    backlog 0: every batch read back from the spill by both threads."""
    import time
    from tracer import peaks, peaks_stream, spill_follower
    if backlog is not None:
        monkeypatch.setattr(parquet_stream, "MAX_BACKLOG", backlog)
    encode = parquet_stream.ParquetStream._encode

    def slow(self, batches):
        def late():
            for b in batches:
                time.sleep(0.05)
                yield b
        encode(self, late())
    monkeypatch.setattr(parquet_stream.ParquetStream, "_encode", slow)
    flushes = _flushes(8, rows=20_000)
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    _record(old, False, flushes).finish("parquet", META)
    spill = writer.Spill(new, stream=True, peaks=peaks_stream.PeaksStream(4096, True))
    gave_way = []
    for batches, before in flushes:
        spill.write(batches, before=before)
        gave_way.append(spill._peaks_followers[0]._gives_way())
    spill.write([])
    assert any(gave_way) and spill_follower.AFTER_BEHIND < spill._stream.follower.behind()
    spill.end()
    got = spill.peaks()
    assert got == peaks.of_spill(spill.path) and got["per_pid"]
    spill.finish("parquet", META)
    assert new.read_bytes() == old.read_bytes()
