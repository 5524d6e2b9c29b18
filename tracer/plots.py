"""The report's pictures: an address-space timeline, memory over time and
the fault rate, as PNG and SVG, and one self-contained HTML page.

Every series is drawn with a `gid`, so the SVG names it (`id="mapped"`):
tests and scripts can check a picture holds what it should.
"""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from tracer import as_summary  # noqa: E402

KIND_COLOURS = {
    "heap": "#d62728", "anon": "#1f77b4", "file": "#2ca02c", "stack": "#9467bd",
    "thread_stack": "#8c564b", "vdso": "#7f7f7f", "shm": "#e377c2", "guard": "#c7c7c7",
}
MiB = 1 << 20
SCATTER_MAX = 50_000      # above this many faults, a density map instead of points
RASTER_ABOVE = 2_000      # above this many bars of a kind, the SVG embeds them as a bitmap


def busiest_pid(t) -> int:
    """The process with the most faults (or events): the one to draw."""
    ev = t.events
    faults = ev[ev["kind"] == "fault"]
    if not len(faults):
        return int(ev["pid"].value_counts().index[0])
    counts = pd.Series(as_summary.counts(faults), index=faults["pid"].to_numpy())
    counts = counts.groupby(level=0, sort=False).sum()
    # the most faults; among equal, the process seen first (value_counts' order)
    return int(counts.index[np.argmax(counts.to_numpy())])


class AddressAxis:
    """Maps addresses to a compressed axis: each run of mapped memory keeps
    its order and gets a height that grows with the log of its size; the
    gaps between runs (terabytes, in a 64-bit address space) shrink to a
    fixed sliver. A 4 KiB page and a 1 GiB heap both stay visible."""

    GAP = 0.3

    def __init__(self, starts: np.ndarray, ends: np.ndarray) -> None:
        order = np.argsort(starts, kind="stable")
        s, e = starts[order].astype(np.float64), ends[order].astype(np.float64)
        runs: list[list[float]] = []
        for a, b in zip(s, e):
            if runs and a <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], b)
            else:
                runs.append([a, b])
        self.lo = np.array([r[0] for r in runs]) if runs else np.zeros(1)
        self.hi = np.array([r[1] for r in runs]) if runs else np.ones(1)
        height = 1.0 + np.log2(np.maximum((self.hi - self.lo) / 4096.0, 1.0))
        self.base = np.concatenate([[0.0], np.cumsum(height + self.GAP)[:-1]])
        self.height = height

    def __call__(self, addr: np.ndarray) -> np.ndarray:
        a = np.asarray(addr, np.float64)
        i = np.clip(np.searchsorted(self.lo, a, side="right") - 1, 0, len(self.lo) - 1)
        frac = np.clip((a - self.lo[i]) / (self.hi[i] - self.lo[i]), 0.0, 1.0)
        return self.base[i] + frac * self.height[i]

    def ticks(self, most: int = 12) -> tuple[np.ndarray, list[str]]:
        step = max(1, len(self.lo) // most)
        idx = np.arange(0, len(self.lo), step)
        return self.base[idx], [f"{int(self.lo[i]):x}" for i in idx]


def _seconds(ts, t0: int) -> np.ndarray:
    return (np.asarray(ts, np.float64) - t0) / 1e9


def address_space_figure(t, pid: int):
    vmas = t.vmas[t.vmas["pid"] == pid]
    faults = t.faults[t.faults["pid"] == pid]
    t0, t1 = int(t.events["ts"].min()), int(t.events["ts"].max())
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=100)
    if vmas.empty:
        ax.text(0.5, 0.5, "no mappings known for this process", ha="center")
        return fig
    axis = AddressAxis(vmas["start"].to_numpy(np.uint64), vmas["end"].to_numpy(np.uint64))
    x0 = _seconds(vmas["created"].to_numpy(np.float64), t0)
    x1 = _seconds(vmas["destroyed"].astype("Float64").fillna(t1).to_numpy(np.float64), t0)
    y0 = axis(vmas["start"].to_numpy(np.float64))
    y1 = axis(vmas["end"].to_numpy(np.float64))
    kinds = vmas["kind"].astype(str).to_numpy()
    for kind in np.unique(kinds):
        m = kinds == kind
        a, b, c, d = x0[m], x1[m], y0[m], y1[m]
        verts = np.stack([np.stack([a, c], 1), np.stack([b, c], 1),
                          np.stack([b, d], 1), np.stack([a, d], 1)], 1)
        pc = PolyCollection(verts, facecolors=KIND_COLOURS.get(kind, "#bcbd22"),
                            edgecolors="none", alpha=0.55)
        pc.set_gid(f"vmas-{kind}")
        # thousands of bars: a bitmap inside the SVG, not thousands of paths
        pc.set_rasterized(len(verts) > RASTER_ABOVE)
        ax.add_collection(pc)
    if len(faults):
        # a point per fault; a summary row's: one per page of its bitmap,
        # at its first fault's time
        row, page = as_summary.expand(faults["addr"].to_numpy(np.uint64),
                                      as_summary.bitmaps(faults))
        fx = _seconds(faults["ts"].to_numpy(np.uint64)[row], t0)
        fy = axis(np.where(as_summary.bitmaps(faults)[row] != 0, page,
                           faults["addr"].to_numpy(np.uint64)[row]).astype(np.float64))
        if len(fx) <= SCATTER_MAX:
            sc = ax.scatter(fx, fy, s=2, c="black", alpha=0.35, linewidths=0)
        else:
            sc = ax.hexbin(fx, fy, gridsize=(160, 80), bins="log", mincnt=1, cmap="Greys",
                           alpha=0.8)
        sc.set_gid("faults")
    ax.set_xlim(0, max(_seconds(t1, t0), 1e-6))
    ax.set_ylim(0, axis.base[-1] + axis.height[-1])
    pos, labels = axis.ticks()
    ax.set_yticks(pos, labels, fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("address (gaps between mapped runs compressed)")
    ax.set_title(f"address space of {pid}: each mapping a bar over its lifetime; "
                 f"faults in black ({int(faults['count'].sum()):,})", fontsize=10)
    present = [k for k in KIND_COLOURS if k in set(kinds)]
    ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in present],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def memory_figure(t, pid: int):
    tl = t.timeline(pid)
    t0 = int(t.events["ts"].min())
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    if tl.empty:
        return fig
    x = _seconds(tl.index.to_numpy(np.uint64), t0)
    series = [("mapped", "mapped (virtual)", "#1f77b4"), ("mapped_anon", "mapped anon", "#aec7e8"),
              ("mapped_file", "mapped file", "#98df8a"), ("heap", "heap (break - start)", "#d62728")]
    for col, label, colour in series:
        y = tl[col].astype("Float64").ffill().fillna(0).to_numpy(np.float64) / MiB
        (line,) = ax.step(x, y, where="post", label=label, color=colour)
        line.set_gid(col)
    # resident (anon + file + shmem) where all three are known: a gap where
    # not (e.g. after -p, until a counter changes); none with --no-rss
    rss = tl["rss_total"].astype("Float64") if "rss_total" in tl else None
    if rss is not None and rss.notna().any():
        (line,) = ax.step(x, rss.to_numpy(np.float64, na_value=np.nan) / MiB, where="post",
                          label="resident", color="#ff7f0e")
        line.set_gid("rss_total")
    touched = tl["pages_touched"].astype("Float64").ffill().fillna(0).to_numpy(np.float64)
    (line,) = ax.step(x, touched * 4096 / MiB, where="post", label="pages touched",
                      color="#2ca02c", linestyle="--")
    line.set_gid("pages_touched")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title(f"memory of {pid} over time", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def fault_rate_figure(t, pid: int, bins: int = 200):
    f = t.faults[t.faults["pid"] == pid]
    t0, t1 = int(t.events["ts"].min()), int(t.events["ts"].max())
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    span = max(_seconds(t1, t0), 1e-6)
    edges = np.linspace(0, span, bins + 1)
    width = edges[1] - edges[0]
    x = _seconds(f["ts"].to_numpy(np.uint64), t0)
    # a summary row's faults spread over its first to last fault
    last = _seconds(f["last_ts"].to_numpy(np.float64, na_value=np.nan), t0) \
        if "last_ts" in f else None
    n = f["count"].to_numpy(np.int64)
    major = f["major"].fillna(False).to_numpy(bool)
    access = f["access"].astype(str).to_numpy()
    for gid, label, mask, style in (
            ("minor", "minor", ~major, "-"), ("major", "major", major, "-"),
            ("read", "read", access == "read", ":"), ("write", "write", access == "write", ":"),
            ("exec", "exec", access == "exec", ":")):
        counts = as_summary.spread(x[mask], None if last is None else last[mask], n[mask],
                                   edges)
        (line,) = ax.plot(edges[:-1], counts / width, style, label=label)
        line.set_gid(gid)
    ax.set_xlabel("seconds")
    ax.set_ylabel("faults per second")
    ax.set_title(f"fault rate of {pid} (bins of {width * 1e3:.3g} ms)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


FIGURES = {"address_space": address_space_figure, "memory": memory_figure,
           "faults": fault_rate_figure}


def write(t, outdir: Path, text: str, pid: int | None = None) -> dict[str, Path]:
    """Writes NAME.png and NAME.svg for each figure and report.html (the
    text report and the SVGs inline). Returns the paths by name."""
    outdir.mkdir(parents=True, exist_ok=True)
    pid = busiest_pid(t) if pid is None else pid
    paths: dict[str, Path] = {}
    svgs = []
    for name, make in FIGURES.items():
        fig = make(t, pid)
        for ext in ("png", "svg"):
            p = outdir / f"{name}.{ext}"
            fig.savefig(p)
            paths[f"{name}.{ext}"] = p
        plt.close(fig)
        svg = paths[f"{name}.svg"].read_text()
        svgs.append(svg[svg.index("<svg"):])
    page = outdir / "report.html"
    page.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>memtrace report: {html.escape(str(t.path))}</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}"
        "svg{max-width:100%;height:auto}</style></head><body>"
        f"<h1>memtrace report</h1><pre>{html.escape(text)}</pre>"
        + "".join(f"<div>{s}</div>" for s in svgs) + "</body></html>\n")
    paths["report.html"] = page
    return paths
