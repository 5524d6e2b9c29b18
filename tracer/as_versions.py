"""The version table in vma_id order, as numpy arrays.

Versions come from three places: the loop of tracer.as_model (rows), its
bulk heap runs (Core.blocks) and the mmap chains (tracer.as_chains). Each
got a provisional id; the vma_id is the rank in (bnd, provisional id) order:
the order in which a loop replaying every change one by one would have made
them. Lineages are numbered the same way, by the bnd of their first version.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tracer import as_faults
from tracer.as_model import ROW_COLS

_FIELDS = (("pid", np.int64, 0), ("start", np.uint64, 0), ("end", np.uint64, 0),
           ("prot", np.int64, 0), ("shared", bool, False), ("file", bool, False),
           ("off", np.uint64, 0), ("fd", np.int64, -1), ("fd_ok", bool, False),
           ("lin", np.int64, -1), ("ts", np.uint64, 0), ("bnd", np.int64, 0),
           ("by", np.int64, 0), ("cause", np.int64, 0), ("parent", np.int64, -1),
           ("d_ts", np.uint64, 0), ("d_bnd", np.int64, as_faults.ALIVE),
           ("d_by", np.int64, -1))


def merge(M, chains) -> dict[str, np.ndarray]:
    """Every version, sorted by vma_id: the _FIELDS plus path and inode
    (object arrays), dead (has an end) and lin_rank (final lineage of each
    provisional one: the loop's, then one per chain)."""
    nl, nc = M.nv, len(chains.v.get("pid", ()))
    nv = nl + nc
    rows = list(zip(*M.rows)) if M.rows else None
    # the final order first: by bnd, ties in provisional id order
    bnd = np.zeros(nv, np.int64)
    if rows:
        bnd[np.array(rows[0], np.int64)] = rows[ROW_COLS.index("bnd")]
    for b in M.blocks:
        bnd[b["vid"]] = b["bnd"]
    if nc:
        bnd[nl:] = chains.v["bnd"]
    order = np.argsort(bnd, kind="stable")
    rank = np.empty(nv, np.int64)
    rank[order] = np.arange(nv)
    out = {name: np.full(nv, na, dt) for name, dt, na in _FIELDS}
    path = np.empty(nv, object)
    inode = np.empty(nv, object)
    if rows:
        at = rank[np.array(rows[0], np.int64)]
        for k, name in enumerate(("pid", "start", "end", "prot", "shared", "file", "off"), 1):
            out[name][at] = rows[k]
        out["fd_ok"][at] = [x is not None for x in rows[8]]
        out["fd"][at] = [-1 if x is None else x for x in rows[8]]
        for k, name in enumerate(("lin", "ts", "bnd", "by", "cause"), 9):
            out[name][at] = rows[k]
        out["parent"][at] = [-1 if x is None else x for x in rows[14]]
    if M.dead:
        at = rank[np.fromiter(M.dead.keys(), np.int64, len(M.dead))]
        d = list(zip(*M.dead.values()))
        out["d_ts"][at], out["d_bnd"][at], out["d_by"][at] = d[0], d[1], d[2]
    for b in M.blocks:
        at = rank[b["vid"]]
        for name, _, _ in _FIELDS:
            out[name][at] = b[name]
    at = rank[:nl]
    path[at] = M.vpath
    inode[at] = M.vinode
    n_lin = len(M.lin_bnd)
    if nc:
        v = chains.v
        at = rank[nl:]
        for name, _, _ in _FIELDS:
            if name in v:
                out[name][at] = v[name]
        out["lin"][at] = n_lin + v["chain"]
        out["parent"][at] = np.where(v["parent"] >= 0, nl + v["parent"], -1)
        path[at] = v["path"]
    par = out["parent"]
    out["parent"] = np.where(par >= 0, rank[np.maximum(par, 0)], -1)
    # lineages: by the bnd of their first version (chains: their mmap's)
    birth = np.concatenate([np.array(M.lin_bnd, np.int64),
                            np.asarray(chains.v["bnd"][chains.v["parent"] < 0], np.int64)
                            if nc else np.zeros(0, np.int64)])
    lorder = np.argsort(birth, kind="stable")
    lrank = np.empty(len(birth), np.int64)
    lrank[lorder] = np.arange(len(birth))
    out["lin"] = lrank[out["lin"]] if nv else out["lin"]
    out["lin_rank"] = lrank
    out["path"], out["inode"] = path, inode
    out["dead"] = out["d_bnd"] != as_faults.ALIVE
    return out


def heap_log(M) -> pd.DataFrame:
    """The heap size (break - heap start) after each change of it, per
    process, in trace order: pid, pos (row), ts, heap (bytes; NaN: unknown)."""
    parts = list(M.brk_blocks)
    if M.brk_log:
        pid, pos, ts, heap = zip(*M.brk_log)
        parts.append((np.array(pid, np.int64), np.array(pos, np.int64), np.array(ts, np.uint64),
                      np.array([np.nan if h is None else h for h in heap], np.float64)))
    if not parts:
        return pd.DataFrame({"pid": np.zeros(0, np.int64), "pos": np.zeros(0, np.int64),
                             "ts": np.zeros(0, np.uint64), "heap": np.zeros(0, np.float64)})
    cols = [np.concatenate(x) for x in zip(*parts)]
    o = np.argsort(cols[1], kind="stable")
    return pd.DataFrame({"pid": cols[0][o], "pos": cols[1][o], "ts": cols[2][o],
                         "heap": cols[3][o]})
