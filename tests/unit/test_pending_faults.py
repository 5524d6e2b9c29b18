"""tracer.pending_faults: the faults BPF still holds open when tracing stops."""
import numpy as np

from tracer import layout, pending_faults
from tracer.layout import C


def _slot(**kw) -> np.ndarray:
    s = np.zeros(1, pending_faults.SLOT)
    s["stack_id"] = -1
    for k, v in kw.items():
        s[k] = v
    return s


def _raw(*slots: np.ndarray, tail: int = 24) -> list[bytes]:
    """As the maps give them: each slot followed by the BPF side's summary key."""
    return [s.tobytes() + bytes(tail) for s in slots]


def test_only_open_faults_of_traced_processes_become_records():
    traced = C["MT_STATE_TRACED"]
    slots = pending_faults._slots(_raw(
        _slot(ts=300, addr=0x7000, ip=0x401000, tid=11, pid=10, state=traced, active=1,
              error_code=6, rss=[0, 1, 0, 0], alloc=1),
        _slot(ts=100, addr=0x9000, tid=12, pid=10, state=traced, active=0),   # sent
        _slot(ts=50, addr=0xa000, tid=20, pid=20, state=0, active=1),         # untraced
        _slot(ts=60, addr=0xb000, tid=13, pid=10, state=traced, active=1, summary=1),
        _slot(ts=200, addr=0xc000, tid=14, pid=10, state=traced, active=1,
              error_code=2),                                                  # kernel mode
    ))
    rec = pending_faults.to_records(slots)
    assert rec.dtype == layout.FAULT
    assert rec["addr"].tolist() == [0xc000, 0x7000]          # in time order
    first, second = rec
    assert second["ts"] == 300 and second["tid"] == 11 and second["pid"] == 10
    assert second["ip"] == 0x401000 and second["error_code"] == 6
    # member order of kmem:rss_stat: file, anon, swap, shmem
    assert (second["rss_anon"], second["rss_file"], second["alloc"]) == (1, 0, 1)
    assert second["flags"] == C["MT_FAULT_NO_END"]
    assert first["flags"] == C["MT_FAULT_NO_END"] | C["MT_FAULT_KERNEL_MODE"]
    assert second["latency"] == 0 and second["stack_id"] == -1


def test_no_slots():
    assert len(pending_faults.to_records(pending_faults._slots([]))) == 0


def test_open_since_is_the_oldest_open_entry(monkeypatch):
    traced = C["MT_STATE_TRACED"]
    values = _raw(_slot(ts=500, state=traced, active=1), _slot(ts=5, state=traced, active=0))

    class Table:
        def __init__(self, per_cpu, items):
            self.per_cpu, self._items = per_cpu, items

        def percpu_values(self, key):
            return list(self.per_cpu)

        def items(self):
            return iter(self._items)

    class Probes:
        def table(self, name):
            if name == "fault_slot":
                return Table(values, [])
            return Table([], [(b"\0" * 4, _raw(_slot(ts=400, state=traced, active=1))[0])])

    assert pending_faults.open_since(Probes()) == 400
    values[:] = _raw(_slot(ts=5, state=traced, active=0))
    # nothing open (the parked one aside): bounded by it
    assert pending_faults.open_since(Probes()) == 400


def test_parked_summary_slots_are_those_of_counted_open_faults():
    def key(slot: int) -> bytes:
        k = np.zeros(1, layout.SUMMARY_KEY)
        k["slot"] = slot
        return k.tobytes()
    traced = C["MT_STATE_TRACED"]
    parked = [_slot(active=1, summary=3, state=traced).tobytes() + key(41),
              _slot(active=1, summary=0, state=traced).tobytes() + key(7),    # events mode
              _slot(active=0, summary=2, state=traced).tobytes() + key(5)]    # closed

    class Probes:
        def table(self, name):
            assert name == "parked"
            return type("T", (), {"items": lambda self: iter([(b"k", v) for v in parked])})()

    assert pending_faults.parked_summary_slots(Probes()).tolist() == [41]
