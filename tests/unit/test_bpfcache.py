"""The compiled-program cache (tracer/bpfcache.py): relocations, entries,
keys and the directory's safety without a kernel; with one (live: root +
bcc), that a program loaded from the cache is the program bcc loads, that
cold and warm starts work and a bad entry is recompiled, and that the
background teardown leaves nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import struct
import time

import pytest

from tracer import bpf_load, bpf_spec, bpf_syscall, bpfcache
from tracer.bpf_spec import Attach, CacheError, NotCacheable, ProgSpec, Spec
from tracer.bpf_syscall import MapDef

INSN = struct.Struct("<BBhi")


def _insn(code, dst=0, src=0, off=0, imm=0) -> bytes:
    return INSN.pack(code, (src << 4) | dst, off, imm)


def _ld_map(dst, fd, src=bpf_spec.PSEUDO_MAP_FD) -> bytes:
    return _insn(0x18, dst, src, 0, fd) + _insn(0, 0, 0, 0, 0)


EXIT = _insn(0x95)
MOV0 = _insn(0xB7, 0, 0, 0, 0)        # r0 = 0


# ---- instructions ----

def test_relocations_find_map_loads_and_skip_constants():
    # a 64-bit constant whose second half looks like a map load must not count
    const = _insn(0x18, 2, 0, 0, 5) + _insn(0, 0, 1, 0, 7)
    code = _ld_map(1, 7) + const + MOV0 + _ld_map(3, 9) + EXIT
    assert bpf_spec.relocations(code, {7: "traced", 9: "config"}) == [(0, "traced"), (5, "config")]


@pytest.mark.parametrize("code,match", [
    (_ld_map(1, 8) + EXIT, "fd 8"),
    (_ld_map(1, 7, src=2) + EXIT, "src_reg 2"),                  # a map value
    (_ld_map(1, 7, src=3) + EXIT, "src_reg 3"),                  # a BTF id
    (_insn(0x85, 0, 2, 1, 1234) + EXIT, "module's kernel function"),  # kfunc of a module
    (_insn(0x85, 0, 3, 0, 1234) + EXIT, "src_reg 3"),            # no such call
    (EXIT[:5], "multiple of 8"),
])
def test_relocations_refuse_what_the_loader_cannot_reproduce(code, match):
    with pytest.raises(NotCacheable, match=match):
        bpf_spec.relocations(code, {7: "traced"})


def test_bpf_to_bpf_calls_are_fine():
    code = _insn(0x85, 0, 1, 0, 1) + EXIT + MOV0 + EXIT
    assert bpf_spec.relocations(code, {}) == []


def test_vmlinux_kfunc_calls_stay_as_linked():
    """A call of a vmlinux kfunc (src_reg 2, off 0) is kept: its BTF id is
    the kernel build's, which the cache key covers."""
    code = _insn(0x85, 0, 2, 0, 64927) + EXIT
    assert bpf_spec.relocations(code, {}) == []


def test_link_turns_marker_calls_into_kfunc_calls():
    """bpf_spec.link: a helper call of a marker becomes a kfunc call of
    its BTF id; other calls, and a 64-bit load whose second slot looks like
    a marker call, are left alone."""
    from tracer import bpf_kfunc
    marker = next(iter(bpf_kfunc.KFUNCS))
    helper = _insn(0x85, 0, 0, 0, 14)
    fake = _insn(0x18, 1, 0, 0, 0) + _insn(0x85, 0, 0, 0, marker)   # ld_imm64's 2nd slot
    code = helper + _insn(0x85, 0, 0, 0, marker) + fake + EXIT
    out = bpf_spec.link(code, {marker: 4242})
    assert out[:8] == helper and out[16:32] == fake and out[32:] == EXIT
    assert out[8:16] == _insn(0x85, 0, 2, 0, 4242)
    assert bpf_spec.link(code, {}) == code


def test_patch_writes_this_process_fds():
    code = MOV0 + _ld_map(1, 7) + _ld_map(2, 9) + EXIT
    relocs = bpf_spec.relocations(code, {7: "a", 9: "b"})
    out = bpf_spec.patch(code, relocs, {"a": 40, "b": 41})
    assert len(out) == len(code)
    assert INSN.unpack_from(out, 8)[3] == 40 and INSN.unpack_from(out, 24)[3] == 41
    # everything else unchanged
    assert out[:8] == code[:8] and out[8:12] == code[8:12] and out[-8:] == code[-8:]
    with pytest.raises(CacheError, match="not a map load"):
        bpf_spec.patch(code, [(0, "a")], {"a": 1})


def test_plan_follows_bcc_naming():
    perf = {"on_fault_min": [(1, 5, 1)]}
    t, (a,) = bpf_spec.plan_of("tracepoint__syscalls__sys_enter_mmap", perf)
    assert (t, a.kind, a.target) == (bpf_syscall.PROG_TRACEPOINT, "tracepoint", "syscalls:sys_enter_mmap")
    t, (a,) = bpf_spec.plan_of("raw_tracepoint__page_fault_user", perf)
    assert (t, a.kind, a.target) == (bpf_syscall.PROG_RAW_TRACEPOINT, "raw_tracepoint", "page_fault_user")
    t, (a,) = bpf_spec.plan_of("on_fault_min", perf)
    assert (t, a.ev_type, a.ev_config, a.sample_period) == (bpf_syscall.PROG_PERF_EVENT, 1, 5, 1)
    assert bpf_spec.plan_of("helper", perf) is None
    with pytest.raises(NotCacheable):
        bpf_spec.plan_of("kprobe__do_exit", perf)
    # bcc's kernel names: prefix dropped, 15 characters
    assert bpf_spec._kernel_name("tracepoint__syscalls__sys_enter_mmap") == "syscalls__sys_e"
    assert bpf_spec._kernel_name("on_fault_min") == "on_fault_min"


# ---- entries ----

def _spec() -> Spec:
    code = _ld_map(1, 7) + MOV0 + EXIT
    return Spec(
        maps=[MapDef("traced", 1, 4, 4, 64, 0), MapDef("faults", 27, 0, 0, 4096 * 16, 0)],
        progs=[ProgSpec("tracepoint__sched__sched_process_exit", "sched__sched_pr", 5, code,
                        [(0, "traced")], [Attach("tracepoint", "sched:sched_process_exit")],
                        tag="0011223344556677")],
        license="GPL", kern_version=0, formats={"sched:sched_process_exit": "ab" * 32})


def test_spec_round_trips_through_json():
    s = _spec()
    s.key = "k"
    back = Spec.from_json(s.to_json())
    assert back == s


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(format=bpf_spec.FORMAT + 1), "entry format"),
    (lambda d: d["progs"][0].update(insns="not base64!"), "unreadable"),
    (lambda d: d.pop("maps"), "unreadable"),
    (lambda d: d["maps"][0].update(colour="red"), "unreadable"),
])
def test_bad_entries_are_refused(mutate, match):
    d = json.loads(_spec().to_json())
    mutate(d)
    with pytest.raises(CacheError, match=match):
        Spec.from_json(json.dumps(d))
    with pytest.raises(CacheError, match="unreadable"):
        Spec.from_json("{truncated")


def test_cache_put_get_and_markers(tmp_path):
    c = bpfcache.Cache(tmp_path / "c")
    assert c.dir == tmp_path / "c" and oct(os.stat(c.dir).st_mode & 0o777) == "0o700"
    with pytest.raises(CacheError, match="no entry"):
        c.get("k1")
    assert c.put("k1", _spec()) is None
    got = c.get("k1")
    assert got.key == "k1" and got.progs[0].insns == _spec().progs[0].insns
    assert oct(os.stat(c.path("k1")).st_mode & 0o777) == "0o600"
    # an entry copied under another key is not trusted
    shutil.copy(c.path("k1"), c.path("k2"))
    with pytest.raises(CacheError, match="for key k1"):
        c.get("k2")
    # a program without its tag cannot be checked after loading
    s = _spec()
    s.progs[0].tag = ""
    c.put("k3", s)
    with pytest.raises(CacheError, match="no recorded tag"):
        c.get("k3")
    assert c.uncacheable("k1") is None
    c.mark_uncacheable("k1", "kprobe__x: not reproduced")
    assert c.uncacheable("k1") == "kprobe__x: not reproduced"
    with pytest.raises(CacheError, match="not cacheable: kprobe__x"):
        c.get("k1")


def test_cache_refuses_entries_others_may_write(tmp_path):
    c = bpfcache.Cache(tmp_path / "c")
    c.put("k", _spec())
    os.chmod(c.path("k"), 0o666)
    with pytest.raises(CacheError, match="writable by it alone"):
        c.get("k")
    os.chmod(c.path("k"), 0o600)
    link = c.dir / "l.json"
    link.symlink_to(c.path("k"))
    with pytest.raises(CacheError):
        c.get("l")


def test_cache_refuses_a_directory_others_may_write(tmp_path, monkeypatch):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    c = bpfcache.Cache(d)
    assert c.dir is None and "writable by others" in c.why
    with pytest.raises(CacheError, match="writable by others"):
        c.get("k")
    assert c.put("k", _spec()) is not None


@pytest.mark.parametrize("setting", ["off", "0", ""])
def test_cache_off(monkeypatch, setting):
    monkeypatch.setenv(bpfcache.ENV, setting)
    c = bpfcache.Cache()
    assert c.dir is None and "off" in c.why


def test_cache_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(bpfcache.ENV, str(tmp_path / "env"))
    assert bpfcache.Cache().dir == tmp_path / "env"


def test_prune_keeps_the_newest(tmp_path):
    c = bpfcache.Cache(tmp_path)
    for i in range(bpfcache.KEEP_ENTRIES + 3):
        c.put(f"k{i:02d}", _spec())
        os.utime(c.path(f"k{i:02d}"), (1000 + i, 1000 + i))
    c._prune()
    left = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert left == [f"k{i:02d}" for i in range(3, bpfcache.KEEP_ENTRIES + 3)]


def test_key_changes_with_what_the_code_depends_on(tmp_path, monkeypatch):
    src = tmp_path / "bpf"
    src.mkdir()
    (src / "a.bpf.c").write_text("int x;\n")
    (src / "a.h").write_text("#define A 1\n")
    (src / "notes.txt").write_text("not compiled\n")
    k = bpfcache.cache_key(src, ["-I."], "plan")
    assert k == bpfcache.cache_key(src, ["-I."], "plan")
    assert k != bpfcache.cache_key(src, ["-I.", "-DFAULT_RING_PAGES=16"], "plan")
    assert k != bpfcache.cache_key(src, ["-I."], "other plan")
    (src / "notes.txt").write_text("still not compiled\n")
    assert k == bpfcache.cache_key(src, ["-I."], "plan")
    (src / "a.h").write_text("#define A 2\n")
    k2 = bpfcache.cache_key(src, ["-I."], "plan")
    assert k2 != k
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    assert bpfcache.cache_key(src, ["-I."], "plan") != k2
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: type(real)((real.sysname, real.nodename,
                                                         real.release + "x", real.version,
                                                         real.machine)))
    assert bpfcache.cache_key(src, ["-I."], "plan") not in (k, k2)


def test_cpu_lists(tmp_path):
    p = tmp_path / "cpus"
    p.write_text("0-3,8,10-11\n")
    assert bpf_syscall._cpu_list(str(p)) == [0, 1, 2, 3, 8, 10, 11]


# ---- live: against the kernel ----

live = pytest.mark.live


@pytest.fixture(scope="module")
def kernel_headers():
    from tracer import preflight
    preflight.ensure_kernel_headers(lambda s: None)


@live
def test_cached_programs_are_the_programs_bcc_loads(kernel_headers):
    """One bcc compile: each program loaded by bcc's own loader
    (bcc_func_load, what BPF.load_func calls) and the same program through
    an entry written and read back and bpf_load.load have the same kernel
    type and tag (the tag hashes the instructions with map references
    zeroed), and the maps the same definitions."""
    from tracer import probes
    cflags = [f"-I{probes.BPF_DIR}", "-Wno-unused-function"]
    lib, module = bpf_spec.bcc_module(probes.SOURCE, cflags)
    ours = None
    bcc_fds = []
    try:
        spec = bpf_spec.spec_of_module(lib, module, probes.PERF_EVENTS, probes.SOURCE)
        spec.key = "k"
        spec = Spec.from_json(spec.to_json())
        assert {p.name for p in spec.progs} >= {"on_fault_min", "on_fault_maj",
                                                "tracepoint__sched__sched_process_exec"}
        bcc_info = {}
        for p in spec.progs:
            name = p.name.encode()
            fd = lib.bcc_func_load(module, p.type, name, lib.bpf_function_start(module, name),
                                   lib.bpf_function_size(module, name),
                                   lib.bpf_module_license(module),
                                   lib.bpf_module_kern_version(module), 0, None, 0, None, -1)
            assert fd >= 0, f"bcc could not load {p.name}"
            bcc_fds.append(fd)
            bcc_info[p.name] = bpf_syscall.prog_info(fd)
        ours = bpf_load.load(spec, attach=False)
        for p in spec.progs:
            mine = bpf_syscall.prog_info(ours.progs[p.name])
            assert (mine["type"], mine["tag"], mine["name"]) == (
                bcc_info[p.name]["type"], bcc_info[p.name]["tag"], bcc_info[p.name]["name"]), p.name
            assert p.tag == mine["tag"]
        for d in spec.maps:
            fd = lib.bpf_table_fd(module, d.name.encode())
            assert bpf_syscall.map_info(fd, d.name)[0] == bpf_syscall.map_info(ours.maps[d.name].fd, d.name)[0]
    finally:
        for fd in bcc_fds:
            os.close(fd)
        if ours is not None:
            bpf_load.release(ours.fds(), background=False)
        lib.bpf_module_destroy(module)


@live
def test_cold_warm_stale_and_teardown(kernel_headers, tmp_path):
    from tracer.probes import Probes
    from tracer.layout import C
    cache = tmp_path / "cache"

    def use(p: Probes) -> None:
        p.set_config(C["MT_CFG_FOLLOW"], 1)
        p.trace_pid(4242)
        assert p.traced_pids() == {4242: C["MT_STATE_TRACED"]}
        assert set(p.counters().values()) == {0}
        # the shared rings and each online CPU's fault and event rings
        cpus = len(bpf_syscall.online_cpus())
        assert not p.cpu_rings_note, p.cpu_rings_note
        assert len(p.ring_fds()) == 3 + 2 * cpus and p.rings["faults"].pending() == 0
        assert p.table("config").lookup(struct.pack("<i", C["MT_CFG_FOLLOW"])) == struct.pack("<Q", 1)

    cold = Probes(cache=cache)
    try:
        assert cold.startup["cache"] == 0 and cold.startup["compile"] > 0
        assert "stored" in cold.cache_status, cold.cache_status
        use(cold)
    finally:
        cold.close()
    entry = next(cache.glob("*.json"))

    t0 = time.monotonic()
    warm = Probes(cache=cache)
    took = time.monotonic() - t0
    try:
        assert warm.startup["cache"] == 1 and warm.startup["compile"] == 0, warm.cache_status
        assert warm.cache_status.startswith("hit"), warm.cache_status
        use(warm)
        ids = warm.ids()
        assert ids["prog"] and ids["map"]
    finally:
        t1 = time.monotonic()
        warm.close()
        closing = time.monotonic() - t1
    # not timings (a busy machine), but what they prove: no compile at a warm
    # start, and close does not wait for the kernel's detach (well over a
    # second for the tracepoints attached, done by the helper process)
    assert warm.startup["compile"] == 0, took
    assert closing < 1.0, f"close took {closing:.2f} s: did it wait for the detach?"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [i for kind in ("prog", "map") for i in ids[kind] if bpf_syscall.object_alive(kind, i)]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"still in the kernel 10 s after close: {alive}"

    # a stale entry (a changed instruction: the tag no longer matches) is recompiled
    d = json.loads(entry.read_text())
    p = next(p for p in d["progs"] if p["name"] == "on_fault_min")
    import base64
    code = bytearray(base64.b64decode(p["insns"]))
    i = next(i for i in range(0, len(code), 8) if code[i] == 0xB7)   # some mov-immediate
    code[i + 4] ^= 1
    p["insns"] = base64.b64encode(bytes(code)).decode()
    entry.write_text(json.dumps(d))
    again = Probes(cache=cache)
    try:
        assert again.startup["cache"] == 0 and "tag" in again.cache_status, again.cache_status
        assert "stored" in again.cache_status
        use(again)
    finally:
        again.close()
    assert Probes.__name__ and json.loads(entry.read_text())["progs"] != d["progs"]


@live
def test_changed_tracepoint_format_is_a_miss(kernel_headers, tmp_path):
    s = _spec()
    s.formats = {"sched:sched_process_exit": "0" * 64}
    with pytest.raises(CacheError, match="format changed: sched:sched_process_exit"):
        bpf_load.load(s)


# ---- ring decoding (tracer/ringbuf.py; here because the ring tests' file is
# another's): a reserved record is not zeroed, so a string BPF read leaves an
# older record's bytes after its NUL once the ring has wrapped ----

def test_decoded_strings_stop_at_their_nul():
    import numpy as np
    from tracer import layout, ringbuf
    slot = ringbuf.record_dtype(layout.EXEC)
    buf = np.zeros(3, slot)
    buf["hdr_len"] = layout.EXEC.itemsize
    buf["rec"]["filename"] = [b"/usr/lib/libc.so.6", b"/a\0stale/bytes/of/an/older/record",
                              b"x" * layout.EXEC["filename"].itemsize]
    buf["rec"]["comm"] = [b"abc\0def", b"", b"0123456789abcdef"]
    out, used = ringbuf.decode(buf.view(np.uint8), 0, buf.nbytes, slot)
    assert used == buf.nbytes
    assert out["filename"].tolist() == [b"/usr/lib/libc.so.6", b"/a",
                                        b"x" * layout.EXEC["filename"].itemsize]
    assert out["comm"].tolist() == [b"abc", b"", b"0123456789abcdef"]
    assert b"stale" not in out.tobytes()
    # and the other fields untouched
    assert (out["ts"] == buf["rec"]["ts"]).all() and (out["kind"] == buf["rec"]["kind"]).all()
