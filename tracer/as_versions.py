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

_FIELDS = (("pid", np.int64, 0), ("start", np.uint64, 0), ("end", np.uint64, 0),
           ("prot", np.int64, 0), ("shared", bool, False), ("file", bool, False),
           ("off", np.uint64, 0), ("fd", np.int64, -1), ("fd_ok", bool, False),
           ("lin", np.int64, -1), ("ts", np.uint64, 0), ("bnd", np.int64, 0),
           ("by", np.int64, 0), ("cause", np.int64, 0), ("parent", np.int64, -1),
           ("d_ts", np.uint64, 0), ("d_bnd", np.int64, as_faults.ALIVE),
           ("d_by", np.int64, -1))


def merge(M, chains) -> dict[str, np.ndarray]:
    """Every version, sorted by vma_id: the _FIELDS plus path and inode
    (object arrays), dead (has an end), bulk (made by a fast path, so
    attributed by as_faults.attribute_windows) and mmap_lin (lineage per
    provisional mmap lineage, see lineage_map)."""
    nl, nc = M.nv, len(chains.v.get("pid", ()))
    nv = nl + nc
    col = {name: np.full(nv, na, dt) for name, dt, na in _FIELDS}
    bulk = np.zeros(nv, bool)
    if M.rows:
        rows = list(zip(*M.rows))
        vid = np.array(rows[0], np.int64)
        for k, name in enumerate(("pid", "start", "end", "prot", "shared", "file", "off")):
            col[name][vid] = rows[k + 1]
        fd = rows[8]
        col["fd_ok"][vid] = [x is not None for x in fd]
        col["fd"][vid] = [-1 if x is None else x for x in fd]
        for k, name in enumerate(("lin", "ts", "bnd", "by", "cause"), 9):
            col[name][vid] = rows[k]
        col["parent"][vid] = [-1 if x is None else x for x in rows[14]]
    if M.dead:
        dv = np.fromiter(M.dead.keys(), np.int64, len(M.dead))
        d = list(zip(*M.dead.values()))
        col["d_ts"][dv], col["d_bnd"][dv], col["d_by"][dv] = d[0], d[1], d[2]
    for b in M.blocks:
        vid = b["vid"]
        for name, _, _ in _FIELDS:
            col[name][vid] = b[name]
        bulk[vid] = True
    path = np.empty(nv, object)
    inode = np.empty(nv, object)
    path[:nl] = M.vpath
    inode[:nl] = M.vinode
    n_lin = len(M.lin_bnd)
    if nc:
        v = chains.v
        sl = slice(nl, nv)
        for name, _, _ in _FIELDS:
            if name in v:
                col[name][sl] = v[name]
        col["lin"][sl] = n_lin + v["chain"]
        col["parent"][sl] = np.where(v["parent"] >= 0, nl + v["parent"], -1)
        path[sl] = v["path"]
        bulk[sl] = True
    order = np.lexsort((np.arange(nv), col["bnd"]))
    rank = np.empty(nv, np.int64)
    rank[order] = np.arange(nv)
    out = {name: a[order] for name, a in col.items()}
    out["parent"] = np.where(out["parent"] >= 0, rank[np.maximum(out["parent"], 0)], -1)
    # lineages: by the bnd of their first version (chains: their mmap's)
    birth = np.concatenate([np.array(M.lin_bnd, np.int64),
                            np.asarray(chains.v["bnd"][chains.v["parent"] < 0], np.int64)
                            if nc else np.zeros(0, np.int64)])
    lorder = np.lexsort((np.arange(len(birth)), birth))
    lrank = np.empty(len(birth), np.int64)
    lrank[lorder] = np.arange(len(birth))
    out["lin"] = lrank[out["lin"]] if nv else out["lin"]
    out["lin_rank"] = lrank
    out["path"], out["inode"] = path[order], inode[order]
    out["dead"] = out["d_bnd"] != as_faults.ALIVE
    out["bulk"] = bulk[order]
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
