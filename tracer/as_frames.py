"""The model's frames: the version table (vmas), the attributed faults, the
coverage, and the per-process views (timeline, maps_at) made on demand."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracer import as_faults, maps_text
from tracer import vma_kinds as vk

_CLASS = {"heap": "anon", "anon": "anon", "stack": "anon", "thread_stack": "anon",
          "guard": "anon", "file": "file", "shm": "shm", "vdso": None}
_FAULT_COLS = ["ts", "pid", "tid", "comm", "addr", "ip", "major", "error_code", "latency",
               "rss_anon", "rss_file", "rss_shmem", "rss_swap"]


@dataclass
class Coverage:
    """How many faults the model attributed to a mapping."""
    faults: int
    attributed: int
    unattributed: dict[str, int] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.attributed / self.faults if self.faults else 1.0

    def __repr__(self) -> str:
        miss = ", ".join(f"{k}: {v}" for k, v in self.unattributed.items())
        return (f"<Coverage {self.attributed}/{self.faults} faults attributed "
                f"({self.fraction:.2%}){'; ' + miss if miss else ''}>")


def _nullable(values: list, dtype: str) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype=dtype)


def _fill_by_lineage(lin: np.ndarray, file: np.ndarray, values: list) -> list:
    """A name learnt for one version of a mapping (from a snapshot) holds for
    all versions of it: same lineage (one mmap, its splits and moves)."""
    known = {}
    for ln, f, v in zip(lin.tolist(), file.tolist(), values):
        if f and v is not None and ln not in known:
            known[ln] = v
    if not known:
        return values
    return [known.get(ln, v) if f and v is None else v
            for ln, f, v in zip(lin.tolist(), file.tolist(), values)]


class AddressSpaces:
    """The mappings of every traced process over time (see tracer.address_space)."""

    def __init__(self, vmas: pd.DataFrame, faults: pd.DataFrame, coverage: Coverage,
                 bnd: np.ndarray, dbnd: np.ndarray, f_key: np.ndarray, brk_log: list,
                 lineage_of: np.ndarray, page_size: int) -> None:
        self.vmas = vmas
        self.faults = faults
        self.coverage = coverage
        self._bnd, self._dbnd, self._fkey = bnd, dbnd, f_key
        self._brk = pd.DataFrame(brk_log, columns=["pid", "pos", "ts", "heap"])
        self._lineage_of = lineage_of
        self._page = page_size

    def __repr__(self) -> str:
        return (f"<AddressSpaces {self.vmas['pid'].nunique()} processes, "
                f"{len(self.vmas)} mapping versions, {self.coverage!r}>")

    def maps_at(self, pid: int, ts: int, merge: bool = False) -> pd.DataFrame:
        """The mappings of pid alive at ts (after every event of that ts), in
        /proc/PID/maps shape sorted by start; merge=True joins neighbours the
        kernel would show as one VMA (maps_text.merge)."""
        v = self.vmas
        d = v["destroyed"]
        sel = (v["pid"] == pid) & (v["created"] <= ts) & (d.isna() | (d > ts)).fillna(True)
        m = v.loc[sel.to_numpy(bool)].sort_values("start")
        out = pd.DataFrame({
            "start": m["start"].to_numpy(), "end": m["end"].to_numpy(),
            "perms": m["perms"].to_numpy(),
            "offset": np.where(m["file"].to_numpy(), m["offset"].to_numpy(), 0).astype(np.uint64),
            "dev": "00:00", "inode": m["inode"].array, "path": m["path"].array,
            "vma_id": m["vma_id"].to_numpy(), "kind": m["kind"].array,
            "prot": m["prot"].to_numpy(), "shared": m["shared"].to_numpy(),
            "file": m["file"].to_numpy(), "fd": m["fd"].array})
        if not merge or len(out) < 2:
            return out.reset_index(drop=True)
        entries = maps_text.entries_of(out)
        groups, last = [], None
        for k, e in enumerate(entries):
            if last is not None and vk.mergeable(last, e):
                groups[-1].append(k)
                last = maps_text.Entry(last.start, e.end, last.prot, last.shared,
                                       last.path or e.path, last.off, last.inode, last.file, last.fd)
            else:
                groups.append([k])
                last = e
        paths = out["path"].tolist()
        res = out.iloc[[g[0] for g in groups]].reset_index(drop=True)
        res["end"] = out["end"].to_numpy()[[g[-1] for g in groups]]
        names = []
        for g in groups:
            ps = [paths[k] for k in g if isinstance(paths[k], str)]
            names.append(vk.HEAP if vk.HEAP in ps else (ps[0] if ps else None))
        res["path"] = pd.array(names, dtype=out["path"].dtype)
        return res

    @property
    def heap_log(self) -> pd.DataFrame:
        """The heap size (break - heap start) after each change of it, per
        process, in trace order: pid, pos (row position), ts, heap (bytes;
        missing: unknown)."""
        return self._brk

    def locate(self, pid: np.ndarray, addr: np.ndarray, key: np.ndarray) -> np.ndarray:
        """vma_id of the mapping that held each address in its process (-1:
        none) at boundary `key`: 2 * pos + 1 is just after the event at row
        position pos (what its fault saw), 2 * pos just before it."""
        key = np.asarray(key, np.int64)
        order = np.argsort(key, kind="stable")
        v = self.vmas
        found = as_faults.attribute(
            v["pid"].to_numpy(np.int32), v["start"].to_numpy(np.uint64),
            v["end"].to_numpy(np.uint64), self._bnd, self._dbnd,
            np.asarray(pid, np.int32)[order], np.asarray(addr, np.uint64)[order], key[order],
            self._page)
        out = np.empty(len(key), np.int64)
        out[order] = found
        return out

    def maps_text(self, pid: int, ts: int, merge: bool = True) -> list[str]:
        """maps_at as /proc/PID/maps text lines."""
        return maps_text.render(self.maps_at(pid, ts, merge=merge))

    def compare(self, pid: int, ts: int, kernel_lines) -> list[str]:
        return maps_text.compare_maps(self.maps_at(pid, ts), kernel_lines)

    def timeline(self, pid: int) -> pd.DataFrame:
        """pid's memory over time, one row per event that changed it, indexed
        by ts: mapped bytes (all, and by class: anon = heap, anonymous,
        stacks, guards; file; shm), heap bytes (break - heap start),
        cumulative minor and major faults, and pages touched (first faults
        of a page within a mapping and its splits: a page counts again once
        it was unmapped and mapped anew)."""
        v = self.vmas
        sel = np.flatnonzero(v["pid"].to_numpy() == pid)
        size = v["size"].to_numpy()[sel].astype(np.int64)
        cls = v["kind"].iloc[sel].map(_CLASS).to_numpy(dtype=object)
        dts = v["destroyed"].iloc[sel]
        dead = dts.notna().to_numpy()
        born = pd.DataFrame({"key": self._bnd[sel], "ts": v["created"].to_numpy()[sel],
                             "mapped": size})
        for c in ("anon", "file", "shm"):
            born["mapped_" + c] = np.where(cls == c, size, 0)
        died = born[dead].copy()
        died["key"] = self._dbnd[sel][dead]
        died["ts"] = dts.to_numpy(np.uint64, na_value=0)[dead]
        for c in ("mapped", "mapped_anon", "mapped_file", "mapped_shm"):
            died[c] = -died[c]
        parts = [born, died]
        f = self.faults
        fsel = np.flatnonzero(f["pid"].to_numpy() == pid)
        if len(fsel):
            major = f["major"].to_numpy(dtype=bool, na_value=False)[fsel]
            vid = f["vma_id"].to_numpy(dtype=np.int64, na_value=-1)[fsel]
            page = f["addr"].to_numpy(np.uint64)[fsel] // np.uint64(self._page)
            lin = np.where(vid >= 0, self._lineage_of[np.maximum(vid, 0)], -1)
            new = ~pd.DataFrame({"l": lin, "p": page}).duplicated().to_numpy() & (vid >= 0)
            parts.append(pd.DataFrame({"key": self._fkey[fsel],
                                       "ts": f["ts"].to_numpy(np.uint64)[fsel],
                                       "minor_faults": (~major).astype(np.int64),
                                       "major_faults": major.astype(np.int64),
                                       "pages_touched": new.astype(np.int64)}))
        b = self._brk[self._brk["pid"] == pid]
        if len(b):
            parts.append(pd.DataFrame({"key": 2 * b["pos"].to_numpy(np.int64) + 1,
                                       "ts": b["ts"].to_numpy(np.uint64),
                                       # -1: unknown from here on (ffill keeps NaN gaps)
                                       "heap": b["heap"].to_numpy(np.float64, na_value=-1)}))
        t = pd.concat(parts, ignore_index=True).sort_values("key", kind="stable")
        cols = ["mapped", "mapped_anon", "mapped_file", "mapped_shm",
                "minor_faults", "major_faults", "pages_touched"]
        for col in cols:
            t[col] = t[col].fillna(0).astype(np.int64).cumsum() if col in t else 0
        t["heap"] = t["heap"].ffill().replace(-1.0, np.nan) if "heap" in t else np.nan
        t["row"] = t["key"].to_numpy() >> 1      # one row per event (growth + its fault)
        t = t.drop_duplicates("row", keep="last")
        t = t.set_index(t["ts"].astype(np.uint64).rename("ts"))
        return t[cols[:4] + ["heap"] + cols[4:]]


def assemble(events: pd.DataFrame, M, fidx: np.ndarray, f_pid: np.ndarray,
             f_addr: np.ndarray, f_key: np.ndarray, page_size: int,
             retry: tuple[np.ndarray, np.ndarray] | None = None) -> AddressSpaces:
    """The frames from the model M and the faults (row positions fidx);
    retry: (fault indices, keys) to attribute again at another time if the
    first attribution found nothing (the faults inside execve)."""
    v = M.columns()
    nv = len(v["pid"])
    pid = np.array(v["pid"], np.int32)
    start, end = np.array(v["start"], np.uint64), np.array(v["end"], np.uint64)
    prot = np.array(v["prot"], np.int32)
    shared, file = np.array(v["shared"], bool), np.array(v["file"], bool)
    lin = np.array(v["lin"], np.int64)
    path = _fill_by_lineage(lin, file, v["path"])
    inode = _fill_by_lineage(lin, file, v["inode"])
    tstack = np.isin(lin, np.fromiter(M.tstack_lin, np.int64, len(M.tstack_lin)))
    kind = vk.classify(path, prot, shared, file, tstack)
    bnd = np.array(v["bnd"], np.int64)
    dbnd = np.array([as_faults.ALIVE if x is None else x for x in v["d_bnd"]], np.int64)

    vid = as_faults.attribute(pid, start, end, bnd, dbnd, f_pid, f_addr, f_key, page_size)
    if retry is not None and len(retry[0]):
        ri, rk = retry
        keep = vid[ri] < 0
        ri, rk = ri[keep], rk[keep]
        o = np.argsort(rk, kind="stable")
        ri, rk = ri[o], rk[o]
        vid[ri] = as_faults.attribute(pid, start, end, bnd, dbnd, f_pid[ri], f_addr[ri], rk,
                                      page_size)
    hit = vid >= 0
    hv = vid[hit]
    ev_f = events[as_faults_cols(events)].iloc[fidx]
    major = ev_f["major"].to_numpy(dtype=bool, na_value=False)
    ec = ev_f["error_code"].to_numpy(dtype=np.int64, na_value=-1)
    acc = np.where(ec < 0, -1, vk.access_codes(np.maximum(ec, 0))).astype(np.int8)
    rss = sum(ev_f[c].to_numpy(dtype=np.int64, na_value=0) for c in
              ("rss_anon", "rss_file", "rss_shmem"))

    def count(mask=None, weights=None):
        sel = hv if mask is None else vid[hit & mask]
        w = None if weights is None else weights[hit]
        return np.bincount(sel, weights=w, minlength=nv).astype(np.int64)[:nv]
    shift = page_size.bit_length() - 1
    fpage = (f_addr >> np.uint64(shift)).astype(np.int64)
    spage = (start >> np.uint64(shift)).astype(np.int64)
    npages = (end >> np.uint64(shift)).astype(np.int64) - spage
    base = np.concatenate([[0], np.cumsum(npages)[:-1]]) if nv else np.zeros(0, np.int64)
    first = np.zeros(len(vid), bool)
    if hit.any():
        first[hit] = as_faults.first_touch(base[hv] + fpage[hit] - spage[hv])

    cause = events.index.to_numpy()[np.array(v["cause"], np.int64)] if nv else []
    d_by = np.array(v["d_by"], np.int8)
    vmas = pd.DataFrame({
        "vma_id": np.arange(nv, dtype=np.int64), "pid": pid, "start": start, "end": end,
        "size": end - start, "prot": prot, "perms": vk.perms_array(prot, shared),
        "shared": shared, "kind": kind, "path": pd.array(path, dtype="str"),
        "offset": np.array(v["off"], np.uint64), "inode": _nullable(inode, "UInt64"),
        "fd": _nullable(v["fd"], "Int32"), "file": file,
        "created": np.array(v["ts"], np.uint64),
        "destroyed": _nullable(v["d_ts"], "UInt64"),
        "created_by": pd.Categorical.from_codes(np.array(v["by"], np.int8),
                                                dtype=vk.CREATED_DTYPE),
        "cause_event": pd.array(cause, dtype="Int64"),
        "parent_vma": _nullable(v["parent"], "Int64"),
        "destroyed_by": pd.Categorical.from_codes(d_by, dtype=vk.DESTROYED_DTYPE),
        "lineage": lin,
        "faults": count(), "minor": count(~major), "major": count(major),
        "read": count(acc == 0), "write": count(acc == 1), "exec": count(acc == 2),
        "pages_touched": count(first), "rss_pages": count(weights=rss.astype(np.float64)),
    })

    faults = ev_f
    faults["vma_id"] = pd.arrays.IntegerArray(np.maximum(vid, 0), ~hit)
    kc = np.where(hit, kind.codes[np.maximum(vid, 0)] if nv else -1, -1)
    faults["vma_kind"] = pd.Categorical.from_codes(kc, dtype=vk.KIND_DTYPE)
    pcodes, pcats = pd.factorize(pd.Series(path, dtype=object))
    fp = np.where(hit, pcodes[np.maximum(vid, 0)] if nv else -1, -1)
    faults["path"] = pd.Categorical.from_codes(fp, categories=pcats.astype(str))
    isfile = hit & (kc == vk.KINDS.index("file"))
    fo = np.zeros(len(vid), np.uint64)
    if isfile.any():
        w = vid[isfile]
        fo[isfile] = (np.array(v["off"], np.uint64)[w] + ((f_addr[isfile] >> np.uint64(shift))
                      << np.uint64(shift)) - start[w])
    faults["file_offset"] = pd.arrays.IntegerArray(fo, ~isfile)
    faults["access"] = pd.Categorical.from_codes(acc, dtype=vk.ACCESS_DTYPE)
    rc = as_faults.reasons(vid, f_pid, f_addr, f_key, M.state_log)
    faults["reason"] = pd.Categorical.from_codes(rc, categories=as_faults.REASONS)
    # the code mapping the faulting instruction was in (user-mode ips only):
    # what tracer.symbols turns into module + symbol + offset
    ip = ev_f["ip"].to_numpy(dtype=np.uint64, na_value=0)
    user = (ip > 0) & (ip < np.uint64(as_faults.KERNEL_SPACE))
    ip_vid = np.full(len(vid), as_faults.NO_VMA, np.int64)
    if user.any():
        ip_vid[user] = as_faults.attribute(pid, start, end, bnd, dbnd, f_pid[user], ip[user],
                                           f_key[user], page_size)
    faults["ip_vma"] = pd.arrays.IntegerArray(np.maximum(ip_vid, 0), ip_vid < 0)

    counts = np.bincount(rc[rc >= 0], minlength=len(as_faults.REASONS))
    cov = Coverage(len(vid), int(hit.sum()),
                   {r: int(n) for r, n in zip(as_faults.REASONS, counts) if n})
    return AddressSpaces(vmas, faults, cov, bnd, dbnd, f_key, M.brk_log, lin, page_size)


def as_faults_cols(ev: pd.DataFrame) -> list[str]:
    return [c for c in _FAULT_COLS if c in ev.columns]
