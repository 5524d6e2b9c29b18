"""Ring records -> Arrow rows (tracer.trace_rows), without a kernel: the
residency and stack columns of faults and syscalls, and the causes of rss
rows."""
import numpy as np

from tracer import layout, trace_rows

C = layout.C


def _faults(n: int) -> np.ndarray:
    f = np.zeros(n, layout.FAULT)
    f["ts"] = np.arange(n) + 1
    f["pid"] = f["tid"] = 7
    f["error_code"] = 6
    f["rss_anon"] = 1
    f["alloc"] = [1, 0, 4][:n]
    f["stack_id"] = [-1, 3, -1][:n]
    f["flags"][n - 1] = C["MT_FAULT_NO_ENTRY"]
    return f


def test_fault_rows_carry_allocations_and_sampled_stacks():
    rows = trace_rows.fault_batch(_faults(3), trace_rows.CommTable()).to_pydict()
    assert rows["alloc"] == [1, 0, None]          # no entry seen: unknown
    assert rows["stack_id"] == [None, 3, None]
    assert rows["rss_anon"] == [1, 1, 1]


def test_without_residency_the_resident_columns_are_null():
    rows = trace_rows.fault_batch(_faults(3), trace_rows.CommTable(), residency=False).to_pydict()
    for col in ("rss_anon", "rss_file", "rss_shmem", "rss_swap", "alloc"):
        assert rows[col] == [None] * 3, col
    assert rows["error_code"] == [6, 6, None]


def test_long_reads_keep_every_field_and_thread_name():
    # more records than one copy block; threads in runs (a lookup per run)
    # and interleaved (per fault); thread 9 never named
    n = 3 * trace_rows._BLOCK + 5
    rng = np.random.default_rng(1)
    f = np.zeros(n, layout.FAULT)
    f["ts"] = np.arange(n) + 1
    f["addr"] = rng.integers(0, 2**47, n, dtype=np.uint64)
    f["rss_file"] = rng.integers(-2, 3, n)
    f["latency"] = rng.integers(0, 10**6, n)
    comms = trace_rows.CommTable()
    comms.update([5, 6], ["five", "six"])
    for tids in (np.repeat([5, 6, 9, 5], n // 4 + 1)[:n], rng.choice([5, 6, 9], n)):
        f["pid"] = f["tid"] = tids
        rows = trace_rows.fault_batch(f, comms).to_pydict()
        assert rows["comm"] == [{5: "five", 6: "six"}.get(t) for t in tids.tolist()]
        for col in ("ts", "addr", "tid", "rss_file", "latency"):
            assert rows[col] == f[col].tolist(), col


def _events(kinds_flags: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(kind, flags, aux, args[2]) per record."""
    e = np.zeros(len(kinds_flags), layout.EVENT)
    for i, (kind, flags, aux, a2) in enumerate(kinds_flags):
        e[i]["kind"], e[i]["flags"], e[i]["aux"] = kind, flags, aux
        e[i]["args"][2] = a2
        e[i]["ts"], e[i]["pid"], e[i]["tid"] = i + 1, 7, 7
    return e


def test_rss_causes_and_syscall_stacks():
    rss, mmap = C["MT_EV_RSS"], C["MT_EV_MMAP"]
    rec = _events([
        (rss, C["MT_RSS_BASELINE"] | C["MT_RSS_NEW_MM"], 1, 0),     # a new mm's value
        (rss, C["MT_RSS_BASELINE"], 0, 0),                         # a first value seen
        (rss, 0, 1, C["MT_EV_MUNMAP"]),                            # during munmap
        (rss, C["MT_RSS_OTHER_TASK"], 1, 0),                       # reclaim
        (rss, 0, 1, 0),                                            # the kernel's
        (mmap, 0, 5, 0),                                           # stack 5
        (mmap, 0, -1, 0),                                          # no stack
    ])
    rows = trace_rows.event_batch(rec, trace_rows.CommTable()).to_pydict()
    assert rows["cause"][:5] == ["new_mm", None, "munmap", "other_task", None]
    assert rows["rss_delta"][:2] == [None, None]
    assert rows["stack_id"] == [None] * 5 + [5, None]
    assert rows["member"][:5] == [1, 0, 1, 1, 1]
