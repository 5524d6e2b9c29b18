"""Writing and reading trace files: batches from ring records, the spill,
Parquet/CSV, and every way a file can be wrong."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tracer
from tracer import layout, trace_rows, writer
from tracer.errors import TraceFileError

C = layout.C


def _records():
    f = np.zeros(3, layout.FAULT)
    f["ts"] = [30, 10, 50]
    f["pid"] = f["tid"] = 7
    f["addr"] = [0x1000, 0x2000, 0x3000]
    f["ip"] = 0x400000
    f["error_code"] = [C["MT_PF_USER"], C["MT_PF_USER"] | C["MT_PF_WRITE"], 0]
    f["flags"] = [0, C["MT_FAULT_MAJOR"], C["MT_FAULT_NO_ENTRY"]]
    f["rss_anon"] = [0, 1, 0]
    e = np.zeros(3, layout.EVENT)
    e["ts"] = [20, 40, 60]
    e["pid"] = e["tid"] = 7
    e["comm"] = b"prog"
    e["kind"] = [C["MT_EV_MMAP"], C["MT_EV_FORK"], C["MT_EV_RSS"]]
    e["args"][0] = [0, 8192, 3, 0x22, 2**64 - 1, 0]      # mmap(NULL, 8192, RW, PRIVATE|ANON, -1, 0)
    e["args"][1, 0] = 0x11                                # fork: clone flags
    e["args"][2, 0] = 4096                                # rss: new size
    e["ret"] = [0x7f0000000000, 0, 0]
    e["aux"] = [0, 8, 1]
    e["args"][2, 1] = 4096
    e["args"][2, 2] = C["MT_EV_MUNMAP"]
    x = np.zeros(1, layout.EXEC)
    x["ts"], x["pid"], x["tid"], x["old_tid"] = 5, 7, 7, 7
    x["comm"], x["filename"] = b"prog", b"/usr/bin/prog"
    return f, e, x


def _write(tmp_path, fmt):
    f, e, x = _records()
    out = tmp_path / f"t.{fmt}"
    spill = writer.Spill(out)
    comms = trace_rows.CommTable()
    batches = [trace_rows.exec_batch(x, comms), trace_rows.event_batch(e, comms),
               trace_rows.fault_batch(f, comms)]
    spill.write(batches)
    meta = {"format_version": C["MT_FORMAT_VERSION"], "complete": True, "lost": 0}
    spill.finish(fmt, meta)
    return out


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_roundtrip(tmp_path, fmt):
    t = tracer.load(_write(tmp_path, fmt))
    ev = t.events
    assert t.complete and not (tmp_path / f"t.{fmt}.partial").exists()
    assert list(ev.ts) == [5, 10, 20, 30, 40, 50, 60]          # time order across rings
    assert list(ev.kind) == ["exec", "fault", "mmap", "fault", "fork", "fault", "rss"]
    assert ev.comm.tolist() == ["prog"] * 7                     # faults take their thread's name
    mm = ev[ev.kind == "mmap"].iloc[0]
    assert (mm["len"], mm.prot, mm["flags"], mm.fd, mm.ret) == (8192, 3, 0x22, -1, 0x7f0000000000)
    assert ev.addr.dtype == "UInt64" and ev.ts.dtype == "uint64"
    faults = ev[ev.kind == "fault"]
    assert faults.major.tolist() == [True, False, False]
    assert faults.error_code.isna().tolist() == [False, False, True]   # no entry seen
    assert faults.rss_anon.tolist() == [1, 0, 0]
    fork = ev[ev.kind == "fork"].iloc[0]
    assert fork.child == 8 and pd_isna(fork.addr)
    rss = ev[ev.kind == "rss"].iloc[0]
    assert (rss.member, rss.rss_size, rss.rss_delta, rss.cause) == (1, 4096, 4096, "munmap")
    assert ev[ev.kind == "exec"].iloc[0].path == "/usr/bin/prog"


def pd_isna(v):
    import pandas as pd
    return pd.isna(v)


def test_partial_spill_reads_as_cut_short(tmp_path):
    f, e, x = _records()
    out = tmp_path / "t.parquet"
    spill = writer.Spill(out)
    comms = trace_rows.CommTable()
    spill.write([trace_rows.event_batch(e, comms)])
    spill.write([trace_rows.fault_batch(f, comms)])
    spill._sink.flush()
    data = spill.path.read_bytes()
    spill.close()
    spill.path.write_bytes(data[:-40])                # killed mid-write of the 2nd batch
    t = tracer.load(out)                              # finds t.parquet.partial
    assert not t.complete
    assert len(t.events) == 3                          # the whole first batch


def _expect(path, match):
    with pytest.raises(TraceFileError, match=match):
        tracer.load(path)


def test_bad_files(tmp_path):
    _expect(tmp_path / "missing.parquet", "no such trace")
    (tmp_path / "empty.parquet").write_bytes(b"")
    _expect(tmp_path / "empty.parquet", "empty")
    good = _write(tmp_path, "parquet").read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(good[: len(good) // 2])
    _expect(tmp_path / "trunc.parquet", "not a readable Parquet")
    (tmp_path / "junk.csv").write_bytes(b"\x00\x01garbage")
    _expect(tmp_path / "junk.csv", "not a memtrace trace")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    _expect(tmp_path / "foreign.parquet", "not a memtrace trace")
    _expect(tmp_path, "directory")


def test_newer_format_is_refused(tmp_path):
    out = _write(tmp_path, "parquet")
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[writer.META_KEY])
    meta["format_version"] = C["MT_FORMAT_VERSION"] + 1
    pq.write_table(table.replace_schema_metadata({writer.META_KEY: json.dumps(meta)}), out)
    _expect(out, "newer than this memtrace reads")


def test_csv_with_wrong_columns(tmp_path):
    out = _write(tmp_path, "csv")
    out.write_text("a,b\n1,2\n")
    _expect(out, "CSV")


def test_faults_of_unnamed_threads_mix_with_named_ones(tmp_path):
    """A fault of a thread whose name no event has told yet gets a null comm;
    batches with and without such threads still write and read back."""
    f, e, x = _records()
    f["tid"] = [7, 9, 7]                      # tid 9: never named
    out = tmp_path / "t.parquet"
    spill = writer.Spill(out)
    comms = trace_rows.CommTable()
    spill.write([trace_rows.event_batch(e, comms), trace_rows.fault_batch(f, comms)])
    spill.write([trace_rows.fault_batch(f, comms)])
    spill.finish("parquet", {"format_version": C["MT_FORMAT_VERSION"], "complete": True})
    ev = tracer.load(out).events
    faults = ev[ev.kind == "fault"]
    assert faults.comm.isna().sum() == 2 and (faults.tid == 9).sum() == 2
    assert set(faults[faults.tid == 7].comm.dropna()) == {"prog"}
