"""Call sites from the user stacks of `memtrace --stacks`, named offline.

Each frame of a recorded stack (docs/format.md: `stack_id`, metadata
`stacks`) is located in the mapping that held it in that process at the
event's time (the address-space model: a process that later exec'd is named
against its old image), turned into a file offset, and named from the ELF
file's symbols (tracer.symbols) as "function+0xoff". The work is done once
per distinct (process, stack, address-space state), not per event row.

What a frame-pointer walk gives (bpf_get_stackid, BPF_F_USER_STACK): the
instruction pointer, then the return address of each frame record linked
from the frame-pointer register. A function that pushes no frame record is
skipped by that walk, and not only itself: the walk starts from the frame
record of its caller, so the next address seen is the *caller's* return
address, and the caller is missing too. That is what happens for a syscall
made through glibc's wrappers (mmap, munmap, brk: no frame of their own,
glibc is built without frame pointers) and for a fault in a leaf function
(gcc 12 at -O1 gives leaves no frame even with -fno-omit-frame-pointer).
Such a gap is filled when the return address after it follows a direct call
(x86-64 E8 rel32): the callee is the outermost function the walk skipped,
added as an `inferred` frame. Inside code without frame pointers the
frame-pointer register holds other data: the walk stops, or returns
addresses that are not code; a stack is cut at its first frame outside
executable code.

The call site of a row is its first frame outside the C library and the
dynamic loader (RUNTIME: their wrappers are not what a reader looks for);
a stack entirely inside them (malloc's own calls of mmap and brk, whose
callers the walk loses) is attributed to its innermost frame: the wrapper
that made the syscall, or the instruction that faulted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracer import as_summary, symbols
from tracer import vma_kinds as vk

# the C library and the dynamic loader (glibc, musl), by file name
RUNTIME = re.compile(r"^((libc|libpthread|libdl)([.-].*)?|ld-.*)\.so(\..*)?$")
# events after which a frame's address may be in another mapping
_CHANGES = ("brk", "mmap", "munmap", "mremap", "mprotect", "fork", "exec", "exit", "map")
UNKNOWN = "[unknown]"


@dataclass
class Stacks:
    """The recorded stacks of a trace, resolved (see the module's doc).

    frames: one row per frame of each resolved stack `group`, innermost
    first: depth, addr (the instruction pointer or return address; missing
    for an inferred frame), module (file path, [vdso], ...), function, site
    ("function+0xoff", "module+0xoff" if unnamed; an inferred frame is the
    function alone), inferred, runtime (in the C library or the loader).
    rows: per event row with a stack (index: the row's label in t.events):
    group, call_site, call_module, caller (the frame after the call site).
    sample: N of --stacks N (a fault with a stack stands for N faults)."""
    frames: pd.DataFrame
    rows: pd.DataFrame
    sample: int

    def frames_of(self, row) -> pd.DataFrame:
        """The named frames of one event row (its label in t.events)."""
        g = self.rows.at[row, "group"]
        return self.frames[self.frames["group"].to_numpy() == g].reset_index(drop=True)

    def per_row(self) -> pd.DataFrame:
        """Every row's frames: the columns of `frames` with `row` (the event's
        label) in place of `group`; one line per (row, frame)."""
        f = self.frames
        sizes = np.bincount(f["group"].to_numpy(), minlength=_ngroups(self.rows))
        g = self.rows["group"].to_numpy()
        order = np.argsort(f["group"].to_numpy(), kind="stable")
        begin = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        n = sizes[g]
        take = order[np.repeat(begin[g], n) + _ranks(n)]
        out = f.iloc[take].drop(columns="group").reset_index(drop=True)
        out.insert(0, "row", np.repeat(self.rows.index.to_numpy(), n))
        return out


def _ngroups(rows: pd.DataFrame) -> int:
    return int(rows["group"].max()) + 1 if len(rows) else 0


def _ranks(n: np.ndarray) -> np.ndarray:
    """0..n[i]-1 for each i, concatenated."""
    return np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)


def sample_period(meta: dict) -> int:
    """N of --stacks N: `stack_sample` in the metadata, or read back from
    memtrace's own command line (traces written before that key)."""
    n = meta.get("stack_sample")
    if isinstance(n, int) and n > 0:
        return n
    argv = list(meta.get("argv") or [])
    argv = argv[:argv.index("--")] if "--" in argv else argv
    for k, a in enumerate(argv):
        if a.startswith("--stacks="):
            return int(a.split("=", 1)[1])
        if a == "--stacks":
            nxt = argv[k + 1] if k + 1 < len(argv) else ""
            return int(nxt) if nxt.isdigit() else 64     # record.STACK_SAMPLE
    return 1


def _sorted(ev: pd.DataFrame) -> pd.DataFrame:
    """The events in the model's order (tracer.address_space.build)."""
    if len(ev) and not ev["ts"].is_monotonic_increasing:
        return ev.iloc[np.argsort(ev["ts"].to_numpy(), kind="stable")]
    return ev


def resolve(t) -> Stacks:
    """The stacks of trace t resolved and named (usually via `t.stacks`)."""
    ev = _sorted(t.events)
    table = {int(k): v for k, v in (t.meta.get("stacks") or {}).items()}
    sid = (ev["stack_id"].to_numpy(np.int64, na_value=-1) if "stack_id" in ev
           else np.full(len(ev), -1, np.int64))
    sids = np.array(sorted(table), np.int64)
    pos = np.flatnonzero(np.isin(sid, sids))
    change = ev["kind"].isin(_CHANGES).to_numpy(bool)
    fault = (ev["kind"] == "fault").to_numpy(bool)
    # rows of one process with one stack between two changes of any address
    # space resolve alike: one group, located at its first row's boundary
    epoch = (np.cumsum(change) - change)[pos]
    pid = ev["pid"].to_numpy(np.int64)[pos]
    key = 2 * pos.astype(np.int64) + fault[pos]
    gid = pd.DataFrame({"p": pid, "s": sid[pos], "e": epoch}).groupby(
        ["p", "s", "e"], sort=False).ngroup().to_numpy(np.int64)
    ng = int(gid.max()) + 1 if len(gid) else 0
    first = np.unique(gid, return_index=True)[1] if ng else np.zeros(0, np.int64)
    gkey = np.full(ng, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(gkey, gid, key)
    if not ng:      # nothing to locate: no need of the model
        return Stacks(_no_frames(), pd.DataFrame(
            {"group": np.zeros(0, np.int64), "call_site": [], "call_module": [], "caller": []},
            index=ev.index[pos]), sample_period(t.meta))
    frames = _frames(t, pid[first], sid[pos][first], gkey, sids, table)
    sites = _call_sites(frames, ng)
    rows = sites.iloc[gid].reset_index(drop=True)
    rows.insert(0, "group", gid)
    rows.index = ev.index[pos]
    return Stacks(frames, rows, sample_period(t.meta))


def _no_frames() -> pd.DataFrame:
    return pd.DataFrame({"group": np.zeros(0, np.int64), "depth": np.zeros(0, np.int64),
                         "addr": pd.array([], "UInt64"), "module": [], "function": [],
                         "site": [], "inferred": np.zeros(0, bool),
                         "runtime": np.zeros(0, bool)})


def _frames(t, gpid, gsid, gkey, sids, table) -> pd.DataFrame:
    lens = np.array([len(table[s]) for s in sids.tolist()], np.int64)
    flat = np.array([ip for s in sids.tolist() for ip in table[s]], np.uint64)
    begin = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    si = np.searchsorted(sids, gsid)
    n = lens[si]
    group = np.repeat(np.arange(len(gsid)), n)
    depth = _ranks(n)
    addr = flat[np.repeat(begin[si], n) + depth] if len(flat) else np.zeros(0, np.uint64)
    vid = t.model.locate(gpid[group], addr, gkey[group])
    v = t.vmas
    vv = np.maximum(vid, 0)
    located = vid >= 0
    code = located & ((v["prot"].to_numpy(np.int64)[vv] & vk.PROT_EXEC) != 0)
    # a walk that left the frame records returns data, not code: cut there
    bad = ~code & (depth > 0)
    c = np.cumsum(bad)
    start = np.repeat(np.cumsum(n) - n, n)
    keep = (c - (c[start] - bad[start]) if len(c) else c) == 0
    group, depth, addr, vid, vv, located = (a[keep] for a in (group, depth, addr, vid, vv,
                                                               located))
    path = v["path"].to_numpy(dtype=object, na_value=None)[vv]
    path = np.where(located, path, None)
    isfile = located & v["file"].to_numpy(bool)[vv]
    off = (v["offset"].to_numpy(np.uint64)[vv] + addr - v["start"].to_numpy(np.uint64)[vv])
    names = _Names()
    cols = [names.frame(p, int(o), int(a - s), d > 0, f, loc) for p, o, a, s, d, f, loc in zip(
        path.tolist(), off.tolist(), addr.tolist(), v["start"].to_numpy(np.uint64)[vv].tolist(),
        depth.tolist(), isfile.tolist(), located.tolist())] if len(addr) else []
    fn = [c[0] for c in cols]
    site = [c[1] for c in cols]
    look, fstart, cstart, csize = (np.array([c[i] for c in cols], np.int64) for i in (2, 3, 5, 6))
    cname = [c[4] for c in cols]
    # a gap: frame k+1 follows a direct call of a function frame k is not in
    nxt = np.flatnonzero(np.diff(group) == 0) if len(group) else np.zeros(0, np.int64)
    same_mod = np.array([path[k] == path[k + 1] for k in nxt.tolist()], bool)
    cs, ce = cstart[nxt + 1], cstart[nxt + 1] + csize[nxt + 1]
    inside = same_mod & ((fstart[nxt] == cs) | ((look[nxt] >= cs) & (look[nxt] < ce)))
    gap = nxt[(cs >= 0) & located[nxt] & ~inside]
    out = pd.DataFrame({
        "group": np.concatenate([group, group[gap]]),
        "order": np.concatenate([2 * depth, 2 * depth[gap] + 1]),
        "addr": pd.array(np.concatenate([addr, np.zeros(len(gap), np.uint64)]), "UInt64"),
        "module": list(path) + [path[k + 1] for k in gap.tolist()],
        "function": fn + [cname[k + 1] for k in gap.tolist()],
        "site": site + [cname[k + 1] for k in gap.tolist()],
        "inferred": np.concatenate([np.zeros(len(group), bool), np.ones(len(gap), bool)]),
    })
    out.loc[out["inferred"].to_numpy(), "addr"] = pd.NA
    out = out.sort_values(["group", "order"], kind="stable").reset_index(drop=True)
    out["order"] = _ranks(np.bincount(out["group"].to_numpy(), minlength=len(gsid)))
    out = out.rename(columns={"order": "depth"})
    base = out["module"].map(lambda p: p.rsplit("/", 1)[-1] if isinstance(p, str) else "")
    out["runtime"] = base.map(lambda b: bool(RUNTIME.match(b))).astype(bool)
    for col in ("module", "function", "site"):
        out[col] = out[col].astype("category")
    return out


class _Names:
    """Frame names, one ELF look-up per distinct (file, offset)."""

    def __init__(self) -> None:
        self.cache: dict[tuple, tuple] = {}

    def frame(self, path, off: int, rel: int, ret: bool, isfile: bool, located: bool) -> tuple:
        """(function, site, looked-up vaddr, function start, callee name,
        callee start, callee size) of one frame (-1, None: not known); rel
        is its address minus its mapping's start."""
        if not located:
            return (None, UNKNOWN, -1, -1, None, -1, -1)
        if not isfile or not isinstance(path, str) or not path.startswith("/"):
            label = path if isinstance(path, str) else "[anon]"
            return (None, f"{label}+0x{rel:x}", -1, -1, None, -1, -1)
        k = (path, off, ret)
        if k not in self.cache:
            self.cache[k] = self._lookup(path, off, ret)
        return self.cache[k]

    @staticmethod
    def _lookup(path: str, off: int, ret: bool) -> tuple:
        syms = symbols.symbols_of(path)
        va = syms.vaddr(off) if syms is not None else None
        unnamed = f"{path.rsplit('/', 1)[-1]}+0x{off:x}"
        if va is None:
            return (None, unnamed, -1, -1, None, -1, -1)
        # a return address may be just past a call that ends its function
        look = va - 1 if ret else va
        i = syms.index(look)
        fn, fstart = (syms.names[i], int(syms.addrs[i])) if i >= 0 else (None, -1)
        site = f"{fn}+0x{va - fstart:x}" if i >= 0 else unnamed
        j = syms.direct_callee(off) if ret else -1
        if j < 0:
            return (fn, site, look, fstart, None, -1, -1)
        return (fn, site, look, fstart, syms.names[j], int(syms.addrs[j]), int(syms.sizes[j]))


def _call_sites(frames: pd.DataFrame, ng: int) -> pd.DataFrame:
    """Per group: call_site, call_module, caller."""
    g = frames["group"].to_numpy()
    site = frames["site"].astype(object).to_numpy()
    module = frames["module"].astype(object).to_numpy()
    ok = frames["inferred"].to_numpy() | (site != UNKNOWN)
    cand = np.flatnonzero(ok & ~frames["runtime"].to_numpy())
    pick = np.full(ng, -1, np.int64)
    if len(g):
        first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        pick[g[first]] = first                     # the innermost frame
    ug, fi = np.unique(g[cand], return_index=True)
    pick[ug] = cand[fi]                            # first outside the runtime
    has = pick >= 0
    p = np.maximum(pick, 0)
    after = np.minimum(p + 1, max(len(g) - 1, 0))
    follows = has & (p + 1 < len(g)) & (g[after] == g[p] if len(g) else False)
    out = pd.DataFrame({
        "call_site": np.where(has, site[p] if len(g) else UNKNOWN, UNKNOWN),
        "call_module": np.where(has, module[p] if len(g) else None, None),
        "caller": np.where(follows, _label(site[after], module[after]) if len(g) else "", ""),
    })
    return out.astype({"call_site": "category", "call_module": "category", "caller": "category"})


def _label(site: np.ndarray, module: np.ndarray) -> np.ndarray:
    """"site (module)", the module's file name added when the site does not
    start with it."""
    out = []
    for s, m in zip(site.tolist(), module.tolist()):
        b = m.rsplit("/", 1)[-1] if isinstance(m, str) else ""
        out.append(f"{s} ({b})" if b and isinstance(s, str) and not s.startswith(b) else str(s))
    return np.array(out, dtype=object)


MEASURES = ("bytes_mapped", "faults")


def bytes_mapped(t) -> pd.Series:
    """Bytes each memory syscall mapped (index: the row's label; rows that
    mapped nothing left out): a successful mmap its length, a brk the growth
    of the break and an mremap the growth of the mapping, page-aligned as the
    kernel maps them. The break before a brk is the model's
    (tracer.address_space: across fork and exec)."""
    ev = _sorted(t.events)
    page = int(t.meta.get("page_size", 4096))
    kind = ev["kind"]

    def aligned(col: pd.Series) -> np.ndarray:
        n = col.to_numpy(np.uint64, na_value=0)
        return ((n + np.uint64(page - 1)) // np.uint64(page) * np.uint64(page)).astype(np.int64)
    parts = []
    for k in ("mmap", "mremap"):
        sub = ev[(kind == k).to_numpy(bool)]
        ok = sub["ret"].to_numpy(np.int64, na_value=-1) >= 0
        grown = aligned(sub["len"] if k == "mmap" else sub["new_len"])
        if k == "mremap":
            grown = grown - aligned(sub["len"])
        parts.append(pd.Series(np.where(ok, grown, 0), index=sub.index))
    log = t.model.heap_log
    if len(log):
        heap = pd.to_numeric(log["heap"], errors="coerce").to_numpy(np.float64)
        pid = log["pid"].to_numpy(np.int64)
        before = pd.Series(heap).groupby(pid).shift(1).to_numpy(np.float64)
        up = np.ceil(heap / page) * page - np.ceil(before / page) * page
        pos = log["pos"].to_numpy(np.int64)
        brk = (kind == "brk").to_numpy(bool)[pos] & np.isfinite(up)
        parts.append(pd.Series(up[brk].astype(np.int64), index=ev.index[pos[brk]]))
    out = pd.concat(parts) if parts else pd.Series(dtype=np.int64)
    return out[out > 0].astype(np.int64)


def top_call_sites(t, by: str = "bytes_mapped", n: int = 10) -> pd.DataFrame:
    """The call sites (tracer.stacks: the first frame outside the C library
    and the loader) with the most bytes mapped (mmap length, brk and mremap
    growth; see bytes_mapped) or the most faults, from the stacks recorded
    with --stacks. Columns: call_site, call_module, caller (the call site's
    own caller, the one with the most of the measure), the measure
    (`bytes_mapped` or `faults`), `calls` (rows), and for faults `major`.

    Faults: only user-mode faults have stacks, one in N per CPU with
    --stacks N; each stands for N (`faults` and `major` are the sampled
    counts times N: estimates when N > 1; `calls` are the samples).
    attrs: `total` (the measure over the whole trace: bytes mapped, or
    user-mode faults), `with_stack` (the part that has a stack, scaled),
    `sample` (N)."""
    if by not in MEASURES:
        raise ValueError(f"by must be one of {MEASURES}, not {by!r}")
    S = t.stacks
    ev = t.events
    if by == "bytes_mapped":
        w = bytes_mapped(t)
        total = int(w.sum())
        w = w[w.index.isin(S.rows.index)]
        df = S.rows.loc[w.index].assign(bytes_mapped=w.to_numpy(np.int64))
        extra = {}
    else:
        f = ev[(ev["kind"] == "fault").to_numpy(bool)]
        total = int(as_summary.counts(f)[as_summary.user_mode(f)].sum())
        idx = f.index[f.index.isin(S.rows.index)]
        major = f.loc[idx, "major"].to_numpy(bool, na_value=False)
        df = S.rows.loc[idx].assign(faults=np.int64(S.sample), major=major * np.int64(S.sample))
        extra = {"major": ("major", "sum")}
    keys = ["call_site", "call_module"]
    g = df.groupby(keys, observed=True, dropna=False)
    out = g.agg(**{by: (by, "sum"), "calls": (by, "size")}, **extra).reset_index()
    callers = df.groupby(keys + ["caller"], observed=True, dropna=False)[by].sum().reset_index()
    callers = callers.sort_values(by, ascending=False, kind="stable").drop_duplicates(keys)
    out = out.merge(callers[keys + ["caller"]], on=keys, how="left")
    out = out[keys + ["caller", by, "calls"] + list(extra)]
    for c in keys + ["caller"]:
        out[c] = out[c].astype(object)
    out = out.sort_values([by, "call_site"], ascending=[False, True], kind="stable")
    out = out.head(n).reset_index(drop=True)
    out.attrs = {"total": total, "with_stack": int(df[by].sum()), "sample": S.sample}
    return out
