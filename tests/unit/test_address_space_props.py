"""Property tests: random mmap/munmap/mremap/mprotect/brk sequences of one
process, applied to the model and to a page-level reference written here
(a dict page -> what is mapped there); the reference also plays the kernel,
choosing each call's result. At every step the model's maps_at, expanded to
pages, must equal the reference, and faults must land in the mapping the
reference has at their page."""
from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer import address_space as asp

from eventframes import (ANON, DONTUNMAP, FIXED, FIXED_NOREPLACE, MAYMOVE, MREMAP_FIXED,
                         PAGE, PRIVATE, SHARED, Events)

BASE = 0x7f0000000000
NPAGES = 64                  # the arena: pages [0, 64) above BASE
HEAP0 = 40                   # the heap starts at page 40 (inside the arena)
PID = 100


class Ref:
    """Page -> (class, prot, fd, file page) where class is anon, heap, shm, file."""

    def __init__(self) -> None:
        self.pages: dict[int, tuple] = {}
        self.brk = (BASE + HEAP0 * PAGE)

    def free(self, a: int, n: int) -> bool:
        return a >= 0 and a + n <= NPAGES and all(p not in self.pages for p in range(a, a + n))

    def gap(self, n: int, avoid: range = range(0)) -> int | None:
        for a in range(0, NPAGES - n + 1):
            if self.free(a, n) and not (a < avoid.stop and avoid.start < a + n):
                return a
        return None

    def unmap(self, a: int, n: int) -> None:
        for p in range(a, a + n):
            self.pages.pop(p, None)

    @staticmethod
    def shifted(attr: tuple, k: int) -> tuple:
        cls, prot, fd, fpage = attr
        return (cls, prot, fd, None if fpage is None else fpage + k)


def expand(m, ts: int) -> dict[int, tuple]:
    df = m.maps_at(PID, ts)
    out: dict[int, tuple] = {}
    for s, e, kind, prot, fd, off in zip(df["start"], df["end"], df["kind"], df["prot"],
                                         df["fd"], df["offset"]):
        s, e = int(s), int(e)
        if not (BASE <= s < BASE + NPAGES * PAGE):
            continue
        cls = {"guard": "anon", "thread_stack": "anon"}.get(kind, kind)
        for p in range((s - BASE) // PAGE, (e - BASE) // PAGE):
            k = p - (s - BASE) // PAGE
            if cls == "file":
                out[p] = ("file", int(prot), int(fd), int(off) // PAGE + k)
            else:
                out[p] = (cls, int(prot), None, None)
    return out


@st.composite
def scenario(draw):
    ref = Ref()
    e = Events(pid=PID)
    e.snapshot([(0x7ffffffde000, 0x7ffffffff000, "rw-p", 0, "[stack]")], cause="attach")
    e.brk(0, ref.brk)
    expect: list[tuple[int, dict]] = []        # (ts, pages) after each step
    faults: list[tuple[int, int]] = []         # (row, page or -1 if unmapped)
    nsteps = draw(st.integers(1, 30))
    for _ in range(nsteps):
        op = draw(st.sampled_from(["mmap", "mmap", "fixed", "noreplace", "munmap",
                                   "mprotect", "mremap", "brk", "fault", "fault"]))
        prot = draw(st.integers(0, 7))
        n = draw(st.integers(1, 8))
        if op in ("mmap", "fixed", "noreplace"):
            style = draw(st.sampled_from(["anon", "file", "shm", "sfile"]))
            fd = draw(st.integers(3, 5)) if style in ("file", "sfile") else -1
            fpage = draw(st.integers(0, 16)) if fd >= 0 else 0
            flags = {"anon": PRIVATE | ANON, "file": PRIVATE, "shm": SHARED | ANON,
                     "sfile": SHARED}[style]
            cls = {"anon": "anon", "file": "file", "shm": "shm", "sfile": "file"}[style]
            if op == "mmap":
                a = ref.gap(n)
                ret = -12 if a is None else BASE + a * PAGE
            else:
                a = draw(st.integers(0, NPAGES - n))
                flags |= FIXED if op == "fixed" else FIXED_NOREPLACE
                ok = op == "fixed" or ref.free(a, n)
                ret = BASE + a * PAGE if ok else -17
            length = n * PAGE - draw(st.sampled_from([0, 1, PAGE - 1]))
            e.mmap(ret, length, prot=prot, flags=flags, fd=fd, off=fpage * PAGE,
                   addr=0 if op == "mmap" else BASE + a * PAGE)
            if ret >= 0:
                ref.unmap(a, n)
                for k in range(n):
                    ref.pages[a + k] = (cls, prot, fd if cls == "file" else None,
                                        fpage + k if cls == "file" else None)
        elif op == "munmap":
            a = draw(st.integers(0, NPAGES - 1))
            bad = draw(st.booleans()) and draw(st.booleans())
            e.munmap(BASE + a * PAGE + (8 if bad else 0), n * PAGE, ret=-22 if bad else 0)
            if not bad:
                ref.unmap(a, n)
        elif op == "mprotect":
            a = draw(st.integers(0, NPAGES - 1))
            n = min(n, NPAGES - a)
            run = 0
            while run < n and (a + run) in ref.pages:
                run += 1
            e.mprotect(BASE + a * PAGE, n * PAGE, prot, ret=0 if run == n else -12)
            for p in range(a, a + run):
                cls, _, fd, fp = ref.pages[p]
                ref.pages[p] = (cls, prot, fd, fp)
        elif op == "mremap":
            mapped = sorted(ref.pages)
            if not mapped:
                continue
            a = draw(st.sampled_from(mapped))
            old = 1
            while old < 8 and (a + old) in ref.pages and draw(st.booleans()):
                old += 1
            new = draw(st.integers(1, 10))
            mode = draw(st.sampled_from(["auto", "fixed", "dontunmap"]))
            src = [ref.pages[a + k] for k in range(old)]
            grown = [Ref.shifted(src[-1], k - old + 1) for k in range(old, new)]
            moved = (src + grown)[:new]
            flags, target = MAYMOVE, 0
            if mode == "dontunmap" and new == old and all(x[0] == "anon" for x in src):
                t = ref.gap(new, range(a, a + old))
                ret = -12 if t is None else BASE + t * PAGE
                flags |= DONTUNMAP
            elif mode == "fixed":
                t = draw(st.integers(0, NPAGES - new))
                if t < a + old and a < t + new:
                    continue
                ret = target = BASE + t * PAGE
                flags |= MREMAP_FIXED
            elif new <= old or ref.free(a + old, new - old):
                t, ret = a, BASE + a * PAGE
            else:
                t = ref.gap(new, range(a, a + old))
                ret = -12 if t is None else BASE + t * PAGE
            e.mremap(BASE + a * PAGE, old * PAGE, new * PAGE, ret=ret, flags=flags,
                     new_addr=target)
            if ret < 0:
                pass
            elif t == a:
                ref.unmap(a, old)
                for k, attr in enumerate(moved):
                    ref.pages[a + k] = attr
            else:
                if not flags & DONTUNMAP:
                    ref.unmap(a, old)
                ref.unmap(t, new)
                for k, attr in enumerate(moved):
                    ref.pages[t + k] = attr
        elif op == "brk":
            start = BASE + HEAP0 * PAGE
            x = start + draw(st.integers(-2 * PAGE, 24 * PAGE))
            oe = -(-ref.brk // PAGE) * PAGE
            ne = -(-x // PAGE) * PAGE
            ok = x >= start
            if ok and ne > oe:     # mm/mmap.c brk: the new break + a page must be free
                lo, hi = (oe - BASE) // PAGE, (ne - BASE) // PAGE + 1
                ok = all(p not in ref.pages for p in range(lo, hi)) and hi <= NPAGES
            if ok:
                if ne > oe:
                    for p in range((oe - BASE) // PAGE, (ne - BASE) // PAGE):
                        ref.pages[p] = ("heap", 3, None, None)
                elif ne < oe:
                    ref.unmap((ne - BASE) // PAGE, (oe - ne) // PAGE)
                ref.brk = x
            e.brk(x, ref.brk)
        elif op == "fault":
            p = draw(st.integers(0, NPAGES - 1))
            row = e.fault(BASE + p * PAGE + draw(st.integers(0, PAGE - 1)),
                          write=draw(st.booleans()))
            faults.append((row, p if p in ref.pages else -1))
        expect.append((e.t, dict(ref.pages)))
    return e.frame(), expect, faults


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_model_matches_page_reference(sc):
    df, expect, faults = sc
    m = asp.build(df)
    for ts, pages in expect:
        got = expand(m, ts)
        assert got == pages, f"at ts {ts}: model {sorted(set(got.items()) ^ set(pages.items()))[:6]}"
    # faults: attributed exactly where the reference has a page, to a mapping
    # that covers it
    fa = m.faults
    v = m.vmas.set_index("vma_id")
    for row, page in faults:
        vid = fa.loc[row, "vma_id"]
        if page < 0:
            assert pd.isna(vid)
        else:
            assert not pd.isna(vid)
            assert v.loc[vid, "start"] <= fa.loc[row, "addr"] < v.loc[vid, "end"]
    assert m.coverage.attributed == sum(1 for _, p in faults if p >= 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_version_table_invariants(sc):
    df, expect, _ = sc
    m = asp.build(df)
    v = m.vmas
    assert (v["vma_id"].to_numpy() == np.arange(len(v))).all()
    assert (v["end"] > v["start"]).all()
    d = v["destroyed"]
    assert ((d.isna()) | (d.fillna(0).astype("uint64") >= v["created"])).all()
    assert (d.isna() == v["destroyed_by"].isna()).all()
    par = v["parent_vma"].dropna().astype(int)
    assert (par < v.loc[par.index, "vma_id"]).all()
    # alive versions of one instant never overlap
    for ts, _ in expect[:: max(1, len(expect) // 5)]:
        cur = m.maps_at(PID, ts)
        s, e = cur["start"].to_numpy(), cur["end"].to_numpy()
        assert (s[1:] >= e[:-1]).all()
    # every page is accounted for: alive at the end = mapped at the end
    if not expect:   # a scenario whose only step was a no-op has nothing to check here
        return
    last_ts, pages = expect[-1]
    total = sum(int(x) for x in m.maps_at(PID, last_ts)["end"] - m.maps_at(PID, last_ts)["start"])
    assert total == len(pages) * PAGE + 0x21000      # + the stack
