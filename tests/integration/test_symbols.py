"""Fault call sites named from the traced program's own symbols."""
import pytest

from memtrace_helpers import exec_pid, run_memtrace
from tracer import symbols

pytestmark = pytest.mark.live


def test_fault_sites_name_the_faulting_function(workloads, tmp_path):
    # faults.c touches every page in main's loop: one instruction, every fault
    _, t = run_memtrace(["--", workloads["faults"], 16, 1], tmp_path)
    pid = exec_pid(t.events, "faults")
    sites = symbols.fault_sites(t)
    mine = sites[(t.faults["pid"] == pid).to_numpy()]
    top = mine["ip_site"].value_counts()
    assert top.index[0].startswith("main+0x"), top.head()
    assert top.iloc[0] >= 16 * 256                       # the 4096 touches of 16 MiB
    assert mine["ip_module"].dropna().str.endswith("/faults").sum() >= 16 * 256
    assert (sites["ip_site"] == "[kernel]").sum() == (t.faults["ip"] >= 2**63).sum()
