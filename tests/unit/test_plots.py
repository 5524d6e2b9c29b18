"""The compressed address axis of the address-space picture."""
import numpy as np

from tracer.plots import AddressAxis


def test_axis_keeps_order_and_shrinks_gaps():
    starts = np.array([0x400000, 0x7F0000000000, 0x7F0000100000, 0x7FFF00000000], np.uint64)
    ends = np.array([0x401000, 0x7F0000100000, 0x7F0040100000, 0x7FFF00021000], np.uint64)
    axis = AddressAxis(starts, ends)
    y = axis(np.concatenate([starts, ends]).astype(np.float64))
    ys, ye = y[:4], y[4:]
    assert (np.diff(ys) > 0).all() and (ye > ys).all()            # order kept
    assert len(axis.lo) == 3                                      # touching mappings: one run
    # a terabyte gap is drawn as a sliver, a 1 GiB mapping taller than a 4 KiB one
    assert abs((ys[1] - ye[0]) - AddressAxis.GAP) < 1e-9
    assert (ye[2] - ys[1]) > (ye[0] - ys[0])
    assert axis(np.array([0x7F0000100000 + 0x20000000], np.float64))[0] < ye[2]


def test_axis_of_nothing_and_ticks():
    axis = AddressAxis(np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    assert axis(np.array([0.0])).shape == (1,)
    pos, labels = AddressAxis(np.array([4096], np.uint64), np.array([8192], np.uint64)).ticks()
    assert labels == ["1000"] and pos[0] == 0


def _trace(ev, residency: bool = True):
    from tracer.trace import Trace
    t = Trace(None, {"page_size": 4096, "complete": True, "residency": residency}, "mem")
    t.__dict__["events"] = ev                            # the cached_property's slot
    return t


def _memory_events():
    from eventframes import PAGE, Events
    e = Events(pid=100)
    for m, v in ((0, 16 * PAGE), (1, 5 * PAGE), (2, 0), (3, 0)):   # an exec's new image
        e.add("rss", member=m, rss_size=v, rss_delta=None, cause="new_mm")
    e.exec()
    e.mmap(0x7F0000000000, 64 * PAGE)
    for i in range(8):
        e.fault(0x7F0000000000 + i * PAGE, write=True, rss_anon=1)
    e.munmap(0x7F0000000000, 64 * PAGE)
    e.add("rss", member=1, rss_size=5 * PAGE, rss_delta=-8 * PAGE, cause="munmap")
    return e.frame()


def test_memory_figure_draws_virtual_and_resident_on_one_figure():
    import matplotlib.pyplot as plt

    from tracer.plots import memory_figure
    fig = memory_figure(_trace(_memory_events()), 100)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    assert {"mapped", "heap", "pages_touched", "rss_total"} <= set(lines)
    mib = 1 << 20
    resident = lines["rss_total"].get_ydata() * mib / 4096
    # 16 file + 5 anon pages, + 1 per fault, then the munmap's -8
    assert list(resident[-10:]) == [22, 23, 24, 25, 26, 27, 28, 29, 29, 21]
    assert max(lines["mapped"].get_ydata()) * mib == 64 * 4096
    plt.close(fig)


def test_memory_figure_has_no_resident_line_without_residency():
    import matplotlib.pyplot as plt

    from tracer.plots import memory_figure
    fig = memory_figure(_trace(_memory_events(), residency=False), 100)
    gids = {ln.get_gid() for ln in fig.axes[0].get_lines()}
    assert "mapped" in gids and "rss_total" not in gids
    plt.close(fig)
