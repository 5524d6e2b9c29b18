"""Kernel functions linked at compile time (tracer/bpf_kfunc.py): with a
kernel (live: root + bcc), that memtrace's fault and syscall programs read
the saved registers through bpf_rdonly_cast where the kernel has it, with no
bpf_probe_read_kernel left on those paths, and that a kfunc the verifier
refuses makes memtrace compile again without it, not fail. (That the
registers read are the right ones: the capture tests compare the syscalls'
arguments with strace's and the faults' ips with their functions.)"""
from __future__ import annotations

import json
import struct

import pytest

from tracer import bpf_kfunc, bpf_load, bpf_spec

live = pytest.mark.live
PROBE_READ_KERNEL = 113          # include/uapi/linux/bpf.h, BPF_FUNC_probe_read_kernel
INSN = struct.Struct("<BBhi")


@pytest.fixture(scope="module")
def kernel_headers():
    from tracer import preflight
    preflight.ensure_kernel_headers(lambda s: None)


def _calls(insns: bytes) -> list[tuple[int, int]]:
    """(src_reg, imm) of every call instruction."""
    out = []
    for i in range(len(insns) // 8):
        code, regs, _off, imm = INSN.unpack_from(insns, i * 8)
        if code == 0x85:
            out.append((regs >> 4, imm))
    return out


@live
def test_fault_and_syscall_programs_read_registers_in_place(kernel_headers):
    flags, links = bpf_kfunc.resolve()
    if not links:
        pytest.skip("this kernel's BTF has no bpf_rdonly_cast (or no BTF)")
    from tracer import probes
    cflags = [f"-I{probes.BPF_DIR}", "-Wno-unused-function"] + flags
    spec = bpf_spec.compile_spec(probes.SOURCE, cflags, probes.PERF_EVENTS, links)
    progs = {p.name: p for p in spec.progs}
    (kfunc_id,) = links.values()
    for name in ("raw_tracepoint__page_fault_user", "raw_tracepoint__page_fault_kernel",
                 "raw_tracepoint__sys_enter"):
        calls = _calls(progs[name].insns)
        assert (bpf_spec.PSEUDO_KFUNC_CALL, kfunc_id) in calls, name
        assert (0, PROBE_READ_KERNEL) not in calls, name
    assert not any(imm in bpf_kfunc.KFUNCS for p in spec.progs for _src, imm in _calls(p.insns))
    loaded = bpf_load.load(spec, attach=False)      # the verifier takes them
    bpf_load.release(loaded.fds(), background=False)


@live
def test_a_refused_kfunc_is_compiled_without(kernel_headers, tmp_path, monkeypatch):
    """The marker linked to BTF id 1 (a type, no kernel function): the
    verifier refuses the programs, and memtrace compiles them again with
    bpf_probe_read_kernel, loads and stores that."""
    from tracer.probes import Probes
    flags, _links = bpf_kfunc.resolve()
    marker = next(iter(bpf_kfunc.KFUNCS))
    monkeypatch.setattr(bpf_kfunc, "resolve",
                        lambda: (flags or ["-DMT_PT_REGS_BTF_ID=1"], {marker: 1}))
    cache = tmp_path / "cache"
    p = Probes(cache=cache)
    try:
        assert "kfuncs refused" in p.cache_status and "stored" in p.cache_status, p.cache_status
        assert p.bpf is None              # memtrace's own loader, not bcc's
    finally:
        p.close()
    (entry,) = cache.glob("*.json")
    spec = bpf_spec.Spec.from_json(entry.read_text())
    fault = next(q for q in spec.progs if q.name == "raw_tracepoint__page_fault_user")
    calls = _calls(fault.insns)
    assert (0, PROBE_READ_KERNEL) in calls
    assert all(src != bpf_spec.PSEUDO_KFUNC_CALL for src, _imm in calls)
    assert json.loads(entry.read_text())["format"] == bpf_spec.FORMAT
