"""The figures a trace is judged by, per process and per mapping: what
`memtrace diff` compares and budgets will limit.

Processes of two runs are matched by name and order: the k-th process named
`x` in one trace is the k-th named `x` in the other (pids differ between
runs, names and order of a deterministic program do not).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PROCESS_METRICS = [
    # name, unit
    ("peak_mapped", "bytes"), ("peak_heap", "bytes"), ("peak_rss", "bytes"),
    ("bytes_mapped", "bytes"), ("pages_touched", "pages"),
    ("minor_faults", "faults"), ("major_faults", "faults"), ("file_write_faults", "faults"),
    ("brk_calls", "calls"), ("mmap_calls", "calls"), ("munmap_calls", "calls"),
]
MAPPING_METRICS = [("mapped", "bytes"), ("faults", "faults"), ("major", "faults"),
                   ("pages_touched", "pages")]


def process_key(t) -> pd.Series:
    """pid -> 'name#k': the process's last name and its rank among the
    processes of that name, in order of first appearance."""
    ev = t.events
    first = ev.groupby("pid", sort=False)["ts"].min().sort_values(kind="stable")
    names = ev.dropna(subset=["comm"]).groupby("pid")["comm"].last().astype(str)
    names = names.reindex(first.index).fillna("?")
    rank = names.groupby(names).cumcount()
    return pd.Series([f"{n}#{k}" for n, k in zip(names, rank)], index=first.index)


def per_process(t) -> pd.DataFrame:
    """One row per process (index: process_key), the PROCESS_METRICS columns."""
    ev, vmas = t.events, t.vmas
    keys = process_key(t)
    faults = t.faults
    rows = {}
    try:
        from tracer import rss
        peaks = rss.peak(t.rss)
    except Exception:  # residency unknown (e.g. a trace without rss rows)
        peaks = None
    for pid, key in keys.items():
        e = ev[ev["pid"] == pid]
        f = faults[faults["pid"] == pid]
        tl = t.timeline(int(pid))
        ok = e["ret"].fillna(-1) >= 0
        n = f["count"].to_numpy(np.int64)              # the faults each row stands for
        major = f["major"].to_numpy(dtype=bool, na_value=False)
        file_write = n[((f["vma_kind"] == "file") & (f["access"] == "write")).to_numpy(bool)].sum()
        rows[key] = {
            "peak_mapped": int(tl["mapped"].max()) if len(tl) else 0,
            "peak_heap": int(tl["heap"].max()) if len(tl) and tl["heap"].notna().any() else 0,
            "peak_rss": int(peaks.loc[pid, "peak"]) if peaks is not None and pid in peaks.index
            and pd.notna(peaks.loc[pid, "peak"]) else 0,
            "bytes_mapped": int(e.loc[(e["kind"] == "mmap") & ok, "len"].sum()),
            "pages_touched": int(tl["pages_touched"].max()) if len(tl) else 0,
            "minor_faults": int(n[~major].sum()),
            "major_faults": int(n[major].sum()),
            "file_write_faults": int(file_write),
            "brk_calls": int((e["kind"] == "brk").sum()),
            "mmap_calls": int((e["kind"] == "mmap").sum()),
            "munmap_calls": int((e["kind"] == "munmap").sum()),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "process"
    return out


def per_mapping(t) -> pd.DataFrame:
    """Totals by (process, mapping kind, path): bytes mapped (each mapping
    lineage at its largest), faults, major faults, pages touched."""
    v = t.vmas.copy()
    keys = process_key(t)
    v["process"] = v["pid"].map(keys)
    v["path"] = v["path"].astype(object).where(v["path"].notna(), "")
    keys3 = ["process", "kind", "path"]
    g = v.groupby(keys3, observed=True)
    out = g.agg(faults=("faults", "sum"), major=("major", "sum"),
                pages_touched=("pages_touched", "sum"))
    # a mapping resized or split is one lineage: counted once, at its largest
    lin = v.groupby("lineage").agg(size=("size", "max"), process=("process", "first"),
                                   kind=("kind", "first"), path=("path", "first"))
    out["mapped"] = lin.groupby(keys3, observed=True)["size"].sum()
    return out.fillna(0).astype(np.int64)[[m for m, _ in MAPPING_METRICS]]
