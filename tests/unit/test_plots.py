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
