"""Fault rows that stand for several faults (`--faults=summary`,
docs/format.md): their weights, the pages they touched, and their split
across mappings.

A `fault` row stands for `count` faults: 1 in a full trace (and where the
column is missing or null: traces written before it); a summary row for
every fault of one process, access, major flag and 64 KiB block in one
time slot with no layout change between its first and last fault. Its
`pages` bitmap says which of the block's 16 pages (4 KiB each) took at
least one of them; a row without one (a full trace's) touched the page of
its address only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BLOCK_SHIFT = 16                     # 64 KiB blocks (bpf/memtrace.h MT_SUMMARY_BLOCK_SHIFT)
BLOCK_PAGE = 4096                    # a bitmap bit is a 4 KiB page
BLOCK_PAGES = 16
_BLOCK_MASK = np.uint64(~((1 << BLOCK_SHIFT) - 1) & ((1 << 64) - 1))
_BITS = np.arange(BLOCK_PAGES, dtype=np.int64)


def counts(frame: pd.DataFrame) -> np.ndarray:
    """The faults each row stands for (int64): `count`, 1 where it is null
    or the frame has no such column."""
    if "count" not in frame:
        return np.ones(len(frame), np.int64)
    return frame["count"].to_numpy(dtype=np.int64, na_value=1)


def bitmaps(frame: pd.DataFrame) -> np.ndarray:
    """Each row's `pages` bitmap (int64; 0: none, the row touched its
    address's page only)."""
    if "pages" not in frame:
        return np.zeros(len(frame), np.int64)
    return frame["pages"].to_numpy(dtype=np.int64, na_value=0)


def user_mode(frame: pd.DataFrame) -> np.ndarray:
    """Each fault row's mode: a user-space ip, or where the row has none (a
    summary row of major faults), its error code's user bit."""
    ip = frame["ip"]
    user = ip.to_numpy(dtype=np.uint64, na_value=0) < np.uint64(1 << 63)
    none = ip.isna().to_numpy()
    if none.any() and "error_code" in frame:
        ec = frame["error_code"].to_numpy(dtype=np.int64, na_value=4)
        user[none] = (ec[none] & 4) != 0
    return user


def block_of(addr: np.ndarray) -> np.ndarray:
    return np.asarray(addr, np.uint64) & _BLOCK_MASK


def popcount(bits: np.ndarray) -> np.ndarray:
    """Bits set in each value (< 2**16)."""
    b = np.asarray(bits, np.int64)
    return ((b[:, None] >> _BITS) & 1).sum(axis=1) if len(b) else np.zeros(0, np.int64)


def expand(addr: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, page address) of every page each row touched, in row order and
    by address within a row: its bitmap's pages, or its address's page where
    it has none (bits 0). A page's address is its 4 KiB start."""
    addr = np.asarray(addr, np.uint64)
    bits = np.asarray(bits, np.int64)
    single = np.flatnonzero(bits == 0)
    multi = np.flatnonzero(bits != 0)
    on = ((bits[multi, None] >> _BITS) & 1).astype(bool)
    mr, mb = np.nonzero(on)                   # row-major: rows in order, bits ascending
    rows = np.concatenate([single, multi[mr]])
    pages = np.concatenate([
        addr[single] & ~np.uint64(BLOCK_PAGE - 1),
        block_of(addr[multi[mr]]) + mb.astype(np.uint64) * np.uint64(BLOCK_PAGE)])
    order = np.argsort(rows, kind="stable")
    return rows[order], pages[order]


def lowest_page(addr: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The lowest address each row faulted at: its address, or its bitmap's
    lowest page if below (a row whose faults grew a stack downwards: the
    model grows it that far)."""
    addr = np.asarray(addr, np.uint64)
    bits = np.asarray(bits, np.int64)
    low = np.flatnonzero(bits != 0)
    if not len(low):
        return addr
    b = bits[low]
    first = np.argmax(((b[:, None] >> _BITS) & 1).astype(bool), axis=1).astype(np.uint64)
    out = addr.copy()
    out[low] = np.minimum(addr[low], block_of(addr[low]) + first * np.uint64(BLOCK_PAGE))
    return out


@dataclass
class Parts:
    """Fault rows as parts, one per (row, mapping): `row` (the fault row
    each part comes from, ascending), `vid` (its mapping, -1 none), `addr`
    (the row's address for its main part, the part's lowest page for the
    others), `count`, `bits` (its pages' bitmap; 0 for a row without one),
    `main` (the part holding the row's address)."""
    row: np.ndarray
    vid: np.ndarray
    addr: np.ndarray
    count: np.ndarray
    bits: np.ndarray
    main: np.ndarray

    @property
    def split(self) -> bool:
        """True if some row has more than one part."""
        return not self.main.all()


def split(vid: np.ndarray, pid: np.ndarray, addr: np.ndarray, key: np.ndarray,
          count: np.ndarray, bits: np.ndarray, v_start: np.ndarray, v_end: np.ndarray,
          locate) -> Parts:
    """The rows (attributed to `vid` at boundary `key`) split per mapping.

    A summary row's pages may fall in two or more mappings inside its 64 KiB
    block (the layout was the same for all its faults, so each page is in
    the mapping that held it at the row's first fault). Such a row becomes
    one part per mapping (no mapping: one part too, vid -1): a part's count
    is the popcount of its pages; what the bitmap does not place (count -
    popcount: pages that faulted more than once) stays with the part holding
    the row's address, the main part, which keeps the row's address
    (_allocate: a bitmap naming more pages than faults). All
    vectorised: the pages of the rows that leave their mapping are located
    at once with locate(pid, addr, key) -> vid (keys in any order); a row
    whose pages all lie in its own mapping is not looked at."""
    n = len(vid)
    vid = np.asarray(vid, np.int64)
    addr = np.asarray(addr, np.uint64)
    bits = np.asarray(bits, np.int64)
    one = Parts(np.arange(n), vid, addr, np.asarray(count, np.int64), bits, np.ones(n, bool))
    cand = np.flatnonzero(bits != 0)
    if not len(cand):
        return one
    # the bitmap's pages inside the row's own mapping: a mask of bits
    block = block_of(addr[cand]).astype(np.int64)
    hv = vid[cand]
    ok = hv >= 0
    lo = np.where(ok, v_start[np.maximum(hv, 0)].astype(np.int64) - block, 0)
    hi = np.where(ok, v_end[np.maximum(hv, 0)].astype(np.int64) - block, 0)
    lo_i = np.clip((lo + BLOCK_PAGE - 1) // BLOCK_PAGE, 0, BLOCK_PAGES)
    hi_i = np.clip(hi // BLOCK_PAGE, 0, BLOCK_PAGES)
    inside = np.where(hi_i > lo_i, ((1 << hi_i) - 1) & ~((1 << lo_i) - 1), 0)
    own = 1 << ((addr[cand].astype(np.int64) - block) // BLOCK_PAGE)
    inside = np.where(ok, inside, own)       # no mapping: the address's own page
    cand = cand[(bits[cand] & ~inside) != 0]
    if not len(cand):
        return one
    rows, pages = expand(addr[cand], bits[cand])
    r = cand[rows]
    pv = np.asarray(locate(np.asarray(pid)[r], pages, np.asarray(key)[r]), np.int64)
    other = pv != vid[r]
    r, pages, pv = r[other], pages[other], pv[other]
    bit = 1 << ((pages - block_of(pages)).astype(np.int64) // BLOCK_PAGE)
    # one extra part per (row, mapping): its pages' bits, popcount, lowest page
    gkey = np.stack([r, pv])
    uniq, first, inv = np.unique(gkey, axis=1, return_index=True, return_inverse=True)
    inv = inv.ravel()
    g_bits = np.zeros(uniq.shape[1], np.int64)
    np.bitwise_or.at(g_bits, inv, bit)
    g_pop = np.bincount(inv, minlength=uniq.shape[1]).astype(np.int64)
    g_row, g_vid, g_addr = uniq[0], uniq[1], pages[first]     # pages ascend within a row
    o = np.lexsort((g_addr, g_row))                 # a row's parts by address
    g_row, g_vid, g_addr, g_bits, g_pop = g_row[o], g_vid[o], g_addr[o], g_bits[o], g_pop[o]
    m_bits = bits.copy()
    np.bitwise_and.at(m_bits, g_row, ~g_bits)
    m_count, g_count = _allocate(one.count, popcount(m_bits), g_row, g_pop)
    row = np.concatenate([np.arange(n), g_row])
    order = np.argsort(row, kind="stable")     # each row's main part, then its others
    return Parts(row[order], np.concatenate([vid, g_vid])[order],
                 np.concatenate([addr, g_addr])[order],
                 np.concatenate([m_count, g_count])[order],
                 np.concatenate([m_bits, g_bits])[order],
                 np.concatenate([np.ones(n, bool), np.zeros(len(g_row), bool)])[order])


def _allocate(count: np.ndarray, main_pop: np.ndarray, g_row: np.ndarray,
              g_pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The counts of the main parts (one per row) and of the extra parts
    (g_row: their rows, ascending; g_pop: their popcounts): each part at
    most its popcount, the main part first, then the others in turn, the
    rest (faults beyond one per page) to the main part; the parts of a row
    add up to its count. A bitmap can name more pages than the row has
    faults (a fault counted at its entry and moved to a major row at its
    end leaves its bit): the parts beyond the count (in address order)
    then get none."""
    cs = np.cumsum(g_pop)
    start = np.flatnonzero(np.r_[True, g_row[1:] != g_row[:-1]]) if len(g_row) else g_row
    run = np.repeat(start, np.diff(np.r_[start, len(g_row)]))
    before = cs - g_pop - (cs - g_pop)[run]        # popcounts of the row's earlier extras
    c, p0 = count[g_row], main_pop[g_row]
    g_count = np.clip(c - np.minimum(p0, c) - before, 0, g_pop)
    extra = np.bincount(g_row, weights=g_count, minlength=len(count)).astype(np.int64)
    return count - extra, g_count


def spread(ts: np.ndarray, last_ts: np.ndarray | None, count: np.ndarray,
           edges: np.ndarray) -> np.ndarray:
    """Faults per bin of `edges` (as np.histogram's bins, same units as
    ts): a row without last_ts (NaN), or with last_ts == ts, counts at ts as
    np.histogram would; a summary row's count is spread evenly over
    [ts, last_ts] (when in that slot its faults came is not recorded)."""
    ts = np.asarray(ts, np.float64)
    w = np.asarray(count, np.float64)
    end = ts.copy() if last_ts is None else np.where(np.isnan(last_ts), ts, last_ts)
    point = end <= ts
    out, _ = np.histogram(ts[point], edges, weights=w[point])
    span = ~point
    if span.any():
        a, b, c = ts[span], end[span], w[span]
        # the faults of a row before x: c * clip((x - a) / (b - a), 0, 1);
        # summed over the rows for every edge x with sorted cumulative sums
        rate = c / (b - a)

        def before(x: np.ndarray) -> np.ndarray:
            oa, ob = np.argsort(a), np.argsort(b)
            ca = lambda v: np.concatenate([[0.0], np.cumsum(v[oa])])   # noqa: E731
            cb = lambda v: np.concatenate([[0.0], np.cumsum(v[ob])])   # noqa: E731
            ia, ib = np.searchsorted(a[oa], x, "right"), np.searchsorted(b[ob], x, "right")
            done = cb(c)[ib]                                   # rows ended by x
            r = ca(rate)[ia] - cb(rate)[ib]                    # rows under way at x
            ra = ca(rate * a)[ia] - cb(rate * a)[ib]
            return done + x * r - ra
        out = out + np.diff(before(np.asarray(edges, np.float64)))
    return out
