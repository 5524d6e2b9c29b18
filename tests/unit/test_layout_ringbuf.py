"""The header parser and the ring-buffer decoder, without a kernel."""
import numpy as np
import pytest

from tracer import layout, ringbuf


def test_header_parses_to_fixed_strides():
    assert layout.FAULT.itemsize == 56
    assert layout.EVENT.itemsize % 8 == 0 and layout.EXEC.itemsize % 8 == 0
    assert layout.FAULT.names[:3] == ("ts", "addr", "ip")
    assert layout.EVENT["args"].shape == (6,)
    assert layout.EXEC["filename"].itemsize == layout.C["MT_PATH_LEN"]
    assert layout.KIND_NAMES[layout.C["MT_EV_MMAP"]] == "mmap"
    assert "lost_fault" in layout.COUNTER_NAMES.values()


def test_parser_rejects_implicit_padding_and_unknown_types():
    with pytest.raises(ValueError, match="multiple of 8"):
        layout._parse("struct mt_x {\n\t__u32 a;\n};\n")
    with pytest.raises(ValueError, match="not fixed-width"):
        layout._parse("struct mt_y {\n\tint a;\n\tint b;\n};\n")


def test_parser_nests_structs_defined_before():
    _, st = layout._parse("struct mt_a {\n\t__u32 x;\n\t__u32 y;\n};\n"
                          "struct mt_b {\n\tstruct mt_a a;\n\t__u64 z;\n};\n")
    assert st["mt_b"].names == ("a", "z") and st["mt_b"]["a"] == st["mt_a"]
    assert st["mt_b"].itemsize == 16
    assert layout.SUMMARY_ACC["key"] == layout.SUMMARY_KEY
    assert layout.SUMMARY_ACC["v"] == layout.SUMMARY
    assert layout.SUMMARY_ACC.itemsize % 8 == 0
    with pytest.raises(ValueError, match="not fixed-width"):
        layout._parse("struct mt_c {\n\tstruct mt_later l;\n};\n")


def _ring(records: np.ndarray, hdr_flags: list[int]) -> np.ndarray:
    slot = ringbuf.record_dtype(records.dtype)
    buf = np.zeros(len(records), slot)
    buf["hdr_len"] = np.array(hdr_flags, np.uint32) | np.uint32(records.dtype.itemsize)
    buf["rec"] = records
    return buf.view(np.uint8), slot


def _faults(n: int) -> np.ndarray:
    f = np.zeros(n, layout.FAULT)
    f["ts"] = np.arange(n) + 100
    f["addr"] = np.arange(n) * 4096
    return f


def test_decode_copies_committed_records():
    data, slot = _ring(_faults(5), [0] * 5)
    out, used = ringbuf.decode(data, 0, len(data), slot)
    assert list(out["ts"]) == [100, 101, 102, 103, 104]
    assert used == len(data)


def test_decode_stops_at_busy_and_drops_discarded():
    data, slot = _ring(_faults(5), [0, ringbuf.DISCARD, 0, ringbuf.BUSY, 0])
    out, used = ringbuf.decode(data, 0, len(data), slot)
    assert list(out["ts"]) == [100, 102]          # 101 discarded, stops before busy 103
    assert used == 3 * slot.itemsize              # the discarded slot is consumed too


def test_decode_limit_and_partial_avail():
    data, slot = _ring(_faults(4), [0] * 4)
    out, used = ringbuf.decode(data, 0, 2 * slot.itemsize + 3, slot)
    assert len(out) == 2 and used == 2 * slot.itemsize
    out, used = ringbuf.decode(data, slot.itemsize, len(data), slot, limit=1)
    assert list(out["ts"]) == [101]


def test_decode_rejects_wrong_size():
    data, slot = _ring(_faults(2), [0, 0])
    data.view(slot)["hdr_len"][1] = 40
    with pytest.raises(RuntimeError, match="unexpected size 40"):
        ringbuf.decode(data, 0, len(data), slot)


def test_defines_may_carry_comments():
    c, _ = layout._parse("#define MT_A 4 /* one */\n#define MT_B 8 /* spans\n two lines */\n"
                         "#define MT_C MT_A\n")
    assert c == {"MT_A": 4, "MT_B": 8, "MT_C": 4}
    assert layout.C["MT_RSS_NEW_MM"] == 4 and layout.C["MT_RSS_OTHER_TASK"] == 8
