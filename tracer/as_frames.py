"""The model's frames: the version table (vmas), the attributed faults, the
coverage, and the per-process views (timeline, maps_at) made on demand."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracer import as_faults, as_summary, maps_text
from tracer import vma_kinds as vk

_CLASS = {"heap": "anon", "anon": "anon", "stack": "anon", "thread_stack": "anon",
          "guard": "anon", "file": "file", "shm": "shm", "vdso": None}
# kind code -> 0 anon, 1 file, 2 shm, -1 none (vma_kinds.KINDS order)
_CLASS_CODE = np.array([{"anon": 0, "file": 1, "shm": 2}.get(_CLASS[k], -1) for k in vk.KINDS])
_TIMELINE_COLS = ["mapped", "mapped_anon", "mapped_file", "mapped_shm", "heap",
                  "minor_faults", "major_faults", "pages_touched"]
_FAULT_COLS = ["ts", "pid", "tid", "comm", "addr", "ip", "major", "error_code", "latency",
               "rss_anon", "rss_file", "rss_shmem", "rss_swap", "count", "last_ts", "pages"]


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


def _first_of_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True where the pair (a, b) (a >= -1, b >= 0) appears for the first time."""
    if len(a) and int(a.max()) < (1 << 20) and int(b.max()) < (1 << 42):
        key = ((a.astype(np.int64) + 1) << np.int64(42)) | b.astype(np.int64)
        return ~pd.Series(key, copy=False).duplicated().to_numpy()
    return ~pd.DataFrame({"a": a, "b": b}).duplicated().to_numpy()


def _fill_by_lineage(lin: np.ndarray, file: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A name learnt for one version of a mapping (from a snapshot) holds for
    all versions of it: same lineage (one mmap, its splits and moves). The
    first version (by vma_id) of a file lineage with a value gives it."""
    missing = pd.isna(values)
    known = np.flatnonzero(file & ~missing)
    if not len(known):
        return values
    lins, first = np.unique(lin[known], return_index=True)
    need = np.flatnonzero(file & missing)
    k = np.searchsorted(lins, lin[need])
    k = np.minimum(k, len(lins) - 1)
    hit = lins[k] == lin[need]
    out = values.copy()
    out[need[hit]] = values[known[first[k[hit]]]]
    return out


def _nullable_int(values: np.ndarray, missing: np.ndarray,
                  dtype) -> pd.api.extensions.ExtensionArray:
    return pd.arrays.IntegerArray(np.where(missing, 0, values).astype(dtype), missing)


class AddressSpaces:
    """The mappings of every traced process over time (see tracer.address_space)."""

    def __init__(self, vmas: pd.DataFrame, faults: pd.DataFrame, coverage: Coverage,
                 bnd: np.ndarray, dbnd: np.ndarray, f_key: np.ndarray, heap: pd.DataFrame,
                 lineage_of: np.ndarray, page_size: int) -> None:
        self.vmas = vmas
        self.faults = faults
        self.coverage = coverage
        self._bnd, self._dbnd, self._fkey = bnd, dbnd, f_key
        self._brk = heap                   # tracer.as_versions.heap_log
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
        it was unmapped and mapped anew). A summary fault row counts all its
        faults and pages at its first fault's time (ts)."""
        v = self.vmas
        sel = np.flatnonzero(v["pid"].to_numpy() == pid)
        size = v["size"].to_numpy()[sel].astype(np.int64)
        codes = v["kind"].array.codes[sel]
        cls = np.where(codes >= 0, _CLASS_CODE[np.maximum(codes, 0)], -1)
        dts = v["destroyed"].array[sel]
        dead = ~dts.isna()
        # the events that change pid's memory: births (+size, in bnd order),
        # deaths (-size), faults, heap changes; one output row per event
        b_key = self._bnd[sel]
        d_o = np.argsort(self._dbnd[sel][dead], kind="stable")
        d_key = self._dbnd[sel][dead][d_o]
        keys = [b_key, d_key]
        ts = [v["created"].to_numpy()[sel].astype(np.uint64),
              dts.to_numpy(np.uint64, na_value=0)[dead][d_o]]
        f = self.faults
        fsel = np.flatnonzero(f["pid"].to_numpy() == pid)
        f_key = self._fkey[fsel]
        keys.append(f_key)
        ts.append(f["ts"].to_numpy(np.uint64)[fsel])
        hb = self._brk[self._brk["pid"].to_numpy() == pid]
        h_key = 2 * hb["pos"].to_numpy(np.int64) + 1
        keys.append(h_key)
        ts.append(hb["ts"].to_numpy(np.uint64))
        key = np.concatenate(keys)
        o = np.argsort(key, kind="stable")
        row = key[o] >> 1                         # one row per event (growth + its fault)
        last = np.ones(len(row), bool)
        last[:-1] = row[1:] != row[:-1]

        # per source: how many of its events (sorted by key) each row includes
        src = np.repeat(np.arange(4, dtype=np.int8), [len(k) for k in keys])[o]
        n_b, n_d, n_f, n_h = (np.cumsum(src == k, dtype=np.int64)[last] for k in range(4))

        def total(n: np.ndarray, delta: np.ndarray) -> np.ndarray:
            """Sum of delta over a source's first n events, per row."""
            return np.concatenate([[0], np.cumsum(delta)])[n]
        out = {"mapped": total(n_b, size) - total(n_d, size[dead][d_o])}
        for k, c in enumerate(("anon", "file", "shm")):
            d = np.where(cls == k, size, 0)
            out["mapped_" + c] = total(n_b, d) - total(n_d, d[dead][d_o])
        if len(fsel):
            fs = f[[c for c in ("major", "vma_id", "addr", "count", "pages") if c in f]]
            fs = fs.iloc[fsel]
            major = fs["major"].to_numpy(dtype=bool, na_value=False)
            cnt = as_summary.counts(fs)
            vid = fs["vma_id"].to_numpy(dtype=np.int64, na_value=-1)
            # every page of a fault row (a summary row's bitmap), first
            # touches per lineage counted on the row
            prow, ppage = as_summary.expand(fs["addr"].to_numpy(np.uint64),
                                            as_summary.bitmaps(fs))
            page = ppage // np.uint64(self._page)
            lin = np.where(vid >= 0, self._lineage_of[np.maximum(vid, 0)], -1)[prow]
            new = _first_of_pairs(lin, page) & (lin >= 0)
            new = np.bincount(prow, weights=new, minlength=len(fsel)).astype(np.int64)
        else:
            major, cnt, new = np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64)
        out["minor_faults"] = total(n_f, np.where(major, 0, cnt))
        out["major_faults"] = total(n_f, np.where(major, cnt, 0))
        out["pages_touched"] = total(n_f, new)
        # heap: the last change's value (-1 there: unknown from then on)
        h = np.concatenate([[np.nan], hb["heap"].to_numpy(np.float64, na_value=-1)])
        h = h[n_h]
        h[h == -1.0] = np.nan
        out["heap"] = h
        index = pd.Index(np.concatenate(ts)[o][last], dtype=np.uint64, name="ts")
        return pd.DataFrame({c: out[c] for c in _TIMELINE_COLS}, index=index)


def assemble(events: pd.DataFrame, at: np.ndarray | None, V: dict, tstack_lin: np.ndarray,
             heap: pd.DataFrame, state_log: list, fidx: np.ndarray, f_pid: np.ndarray,
             f_addr: np.ndarray, f_key: np.ndarray, page_size: int,
             retry: tuple[np.ndarray, np.ndarray] | None = None,
             join: bool = True) -> AddressSpaces:
    """The frames from the versions V (tracer.as_versions.merge) and the
    faults (positions fidx in ts order; at: ts order -> events' rows, None
    if the same); join: the lifetime join of the attribution
    (as_faults.attributor); retry: (fault indices, keys) to attribute again
    at another time if the first attribution found nothing (the faults
    inside execve)."""
    nv = len(V["pid"])
    pid = V["pid"].astype(np.int32)
    start, end = V["start"], V["end"]
    prot = V["prot"].astype(np.int32)
    shared, file = V["shared"], V["file"]
    lin = V["lin"]
    path = _fill_by_lineage(lin, file, V["path"])
    inode = _fill_by_lineage(lin, file, V["inode"])
    tstack = np.isin(lin, tstack_lin)
    pcodes, pcats = pd.factorize(pd.Series(path, dtype=object))
    kind = vk.classify(path, prot, shared, file, tstack, (pcodes, pcats))
    bnd, dbnd = V["bnd"], V["d_bnd"]
    attribute = as_faults.attributor(V, page_size, f_pid, f_key, join)

    vid = attribute(f_pid, f_addr, f_key, main=True)
    akey = f_key                          # the boundary each fault was attributed at
    if retry is not None and len(retry[0]):
        ri, rk = retry
        keep = vid[ri] < 0
        ri, rk = ri[keep], rk[keep]
        o = np.argsort(rk, kind="stable")
        ri, rk = ri[o], rk[o]
        vid[ri] = attribute(f_pid[ri], f_addr[ri], rk)
        akey = f_key.copy()
        akey[ri[vid[ri] >= 0]] = rk[vid[ri] >= 0]
    ev_f = events[as_faults_cols(events)].iloc[fidx if at is None else at[fidx]]
    # a summary row whose pages fall in several mappings: one part per mapping
    P = as_summary.split(vid, f_pid, f_addr, akey, as_summary.counts(ev_f),
                         as_summary.bitmaps(ev_f), start, end,
                         lambda p, a, k: _locate(attribute, p, a, k))
    if P.split:
        ev_f, f_pid, f_key = _parts(ev_f, P), f_pid[P.row], f_key[P.row]
        f_addr, vid = P.addr, P.vid
    cnt = P.count
    hit = vid >= 0
    hv = vid[hit]
    major = ev_f["major"].to_numpy(dtype=bool, na_value=False)
    ec = ev_f["error_code"].to_numpy(dtype=np.int64, na_value=-1)
    acc = np.where(ec < 0, -1, vk.access_codes(np.maximum(ec, 0))).astype(np.int8)
    rss = sum(ev_f[c].to_numpy(dtype=np.int64, na_value=0) for c in
              ("rss_anon", "rss_file", "rss_shmem"))

    def count(mask=None, weights=cnt):
        """Per version: the faults (or weights) of the parts where mask."""
        m = hit if mask is None else hit & mask
        return np.bincount(vid[m], weights=weights[m], minlength=nv).astype(np.int64)[:nv]
    shift = page_size.bit_length() - 1
    spage = (start >> np.uint64(shift)).astype(np.int64)
    npages = (end >> np.uint64(shift)).astype(np.int64) - spage
    base = np.concatenate([[0], np.cumsum(npages)[:-1]]) if nv else np.zeros(0, np.int64)
    # distinct pages per version: every page of each part (its bitmap's, or
    # its address's)
    prow, ppage = as_summary.expand(f_addr, P.bits)
    pv = vid[prow]
    ph = pv >= 0
    fpage = (ppage[ph] >> np.uint64(shift)).astype(np.int64)
    first = as_faults.first_touch(base[pv[ph]] + fpage - spage[pv[ph]]) if ph.any() \
        else np.zeros(0, bool)
    touched = np.bincount(pv[ph][first], minlength=nv).astype(np.int64)[:nv]

    cause = events.index.to_numpy()[V["cause"] if at is None else at[V["cause"]]] \
        if nv else []
    dead = V["dead"]
    # path as strings: the distinct names converted once (also the faults' path)
    path_str = pd.array(np.asarray(pcats, dtype=object), dtype="str").take(pcodes,
                                                                          allow_fill=True)
    parent = V["parent"]
    vmas = pd.DataFrame({
        "vma_id": np.arange(nv, dtype=np.int64), "pid": pid, "start": start, "end": end,
        "size": end - start, "prot": prot, "perms": vk.perms_array(prot, shared),
        "shared": shared, "kind": kind, "path": path_str,
        "offset": V["off"], "inode": _nullable_int(inode, pd.isna(inode), np.uint64),
        "fd": _nullable_int(V["fd"], ~V["fd_ok"], np.int32), "file": file,
        "created": V["ts"],
        "destroyed": _nullable_int(V["d_ts"], ~dead, np.uint64),
        "created_by": pd.Categorical.from_codes(V["by"].astype(np.int8),
                                                dtype=vk.CREATED_DTYPE),
        "cause_event": pd.array(cause, dtype="Int64"),
        "parent_vma": _nullable_int(parent, parent < 0, np.int64),
        "destroyed_by": pd.Categorical.from_codes(V["d_by"].astype(np.int8),
                                                  dtype=vk.DESTROYED_DTYPE),
        "lineage": lin,
        "faults": count(), "minor": count(~major), "major": count(major),
        "read": count(acc == 0), "write": count(acc == 1), "exec": count(acc == 2),
        "pages_touched": touched, "rss_pages": count(weights=rss),
    }, copy=False)

    faults = ev_f
    faults["count"] = cnt
    faults["vma_id"] = pd.arrays.IntegerArray(np.maximum(vid, 0), ~hit)
    kc = np.where(hit, kind.codes[np.maximum(vid, 0)] if nv else -1, -1)
    faults["vma_kind"] = pd.Categorical.from_codes(kc, dtype=vk.KIND_DTYPE)
    fp = np.where(hit, pcodes[np.maximum(vid, 0)] if nv else -1, -1)
    faults["path"] = pd.Categorical.from_codes(fp, categories=pcats.astype(str))
    isfile = hit & (kc == vk.KINDS.index("file"))
    fo = np.zeros(len(vid), np.uint64)
    if isfile.any():
        w = vid[isfile]
        fo[isfile] = (V["off"][w] + ((f_addr[isfile] >> np.uint64(shift))
                      << np.uint64(shift)) - start[w])
    faults["file_offset"] = pd.arrays.IntegerArray(fo, ~isfile)
    faults["access"] = pd.Categorical.from_codes(acc, dtype=vk.ACCESS_DTYPE)
    rc = as_faults.reasons(vid, f_pid, f_addr, f_key, state_log)
    faults["reason"] = pd.Categorical.from_codes(rc, categories=as_faults.REASONS)
    # the code mapping the faulting instruction was in (user-mode ips only):
    # what tracer.symbols turns into module + symbol + offset
    ip = ev_f["ip"].to_numpy(dtype=np.uint64, na_value=0)
    user = (ip > 0) & (ip < np.uint64(as_faults.KERNEL_SPACE))
    ip_vid = np.full(len(vid), as_faults.NO_VMA, np.int64)
    if user.any():
        ip_vid[user] = attribute(f_pid[user], ip[user], f_key[user])
    faults["ip_vma"] = pd.arrays.IntegerArray(np.maximum(ip_vid, 0), ip_vid < 0)

    miss = rc >= 0
    counts = np.bincount(rc[miss], weights=cnt[miss], minlength=len(as_faults.REASONS))
    cov = Coverage(int(cnt.sum()), int(cnt[hit].sum()),
                   {r: int(n) for r, n in zip(as_faults.REASONS, counts) if n})
    return AddressSpaces(vmas, faults, cov, bnd, dbnd, f_key, heap, lin, page_size)


def _locate(attribute, pid: np.ndarray, addr: np.ndarray, key: np.ndarray) -> np.ndarray:
    """attribute() for points whose keys are in any order."""
    o = np.argsort(key, kind="stable")
    out = np.empty(len(key), np.int64)
    out[o] = attribute(pid[o], addr[o], key[o])
    return out


def _parts(ev_f: pd.DataFrame, P: as_summary.Parts) -> pd.DataFrame:
    """The fault rows as the parts P (tracer.as_summary.split): a row split
    across mappings repeats with the label of its event; a part other than
    the main one has its own address, count and pages, and null resident
    changes and allocations (unknown per page: all go with the main part,
    which keeps the row's)."""
    out = ev_f.iloc[P.row].copy()
    extra = ~P.main
    out["addr"] = pd.arrays.IntegerArray(P.addr.astype(np.uint64),
                                         out["addr"].isna().to_numpy() & P.main)
    if "pages" in out:
        out["pages"] = pd.arrays.IntegerArray(P.bits.astype(np.uint16),
                                              out["pages"].isna().to_numpy())
    for c in ("rss_anon", "rss_file", "rss_shmem", "rss_swap", "alloc"):
        if c in out:
            a = out[c].array.copy()
            a[extra] = pd.NA
            out[c] = a
    return out


def as_faults_cols(ev: pd.DataFrame) -> list[str]:
    return [c for c in _FAULT_COLS if c in ev.columns]
