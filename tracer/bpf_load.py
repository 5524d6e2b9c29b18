"""The loader: a `Spec` (tracer/bpf_spec.py) into the kernel, and out again.

Every load, from a fresh compile or from the cache, goes through the same
`load`: there is one way programs reach the kernel. It creates the maps,
writes their file descriptors into the instructions that refer to them,
loads the programs and attaches them as bcc does. Before, it checks the
tracepoints' format files against the spec; after each program's load, its
kernel tag (a hash of the instructions with the map references zeroed)
against the tag recorded at compile time.

Detaching is the slow part of the end: the kernel releases a tracepoint's
perf event with an RCU grace period under a global mutex, about 80 ms each
here (kernel/trace/trace_event_perf.c, perf_trace_event_unreg), so 20
tracepoints take well over a second. `release` hands the attachment file
descriptors to a helper process that closes them (by exiting) after this
process has dropped its own copies; the caller goes on at once.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable

from tracer.bpf_spec import CacheError, Spec, format_hash, patch
from tracer.bpf_syscall import (LoadError, Map, map_create, map_info, online_cpus, prog_info,
                                prog_load)

_bcc_bpf: ct.CDLL | None = None


def _attach_lib() -> ct.CDLL:
    """bcc's libbpf part (no LLVM: 2 ms to open where libbcc.so takes 30)."""
    global _bcc_bpf
    if _bcc_bpf is None:
        for name in ("libbcc_bpf.so.0", "libbcc.so.0"):
            try:
                lib = ct.CDLL(name, use_errno=True)
                break
            except OSError:
                continue
        else:
            raise LoadError(errno.ENOENT, "neither libbcc_bpf.so.0 nor libbcc.so.0 found")
        lib.bpf_attach_tracepoint.restype = ct.c_int
        lib.bpf_attach_tracepoint.argtypes = [ct.c_int, ct.c_char_p, ct.c_char_p]
        lib.bpf_attach_raw_tracepoint.restype = ct.c_int
        lib.bpf_attach_raw_tracepoint.argtypes = [ct.c_int, ct.c_char_p]
        lib.bpf_attach_perf_event.restype = ct.c_int
        lib.bpf_attach_perf_event.argtypes = [ct.c_int, ct.c_uint32, ct.c_uint32, ct.c_uint64,
                                              ct.c_uint64, ct.c_int, ct.c_int, ct.c_int]
        _bcc_bpf = lib
    return _bcc_bpf


@dataclass
class Loaded:
    """Maps, programs and attachments in the kernel, by file descriptor."""
    maps: dict[str, Map] = field(default_factory=dict)
    progs: dict[str, int] = field(default_factory=dict)
    links: list[int] = field(default_factory=list)
    prog_ids: list[int] = field(default_factory=list)
    map_ids: list[int] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def fds(self) -> list[int]:
        return self.links + list(self.progs.values()) + [m.fd for m in self.maps.values()]


def load(spec: Spec, check_tags: bool = True, attach: bool = True,
         skip: frozenset[str] = frozenset()) -> Loaded:
    """Creates the maps, loads and (with `attach`) attaches the programs of
    `spec`, but those named in `skip` (loaded, not attached). On any failure
    everything made so far is released and LoadError or CacheError raised."""
    stale = [tp for tp, h in spec.formats.items() if format_hash(tp) != h]
    if stale:
        raise CacheError(f"tracepoint format changed: {', '.join(sorted(stale))}")
    out = Loaded()
    t0 = time.monotonic()
    try:
        # a map of maps after the map that is its template
        for d in sorted(spec.maps, key=lambda d: bool(d.inner)):
            fd = map_create(d.type, d.key_size, d.value_size, d.max_entries, d.flags, d.name,
                            out.maps[d.inner].fd if d.inner else 0)
            out.maps[d.name] = Map(fd, d)
            out.map_ids.append(map_info(fd)[1])
        fds = {name: m.fd for name, m in out.maps.items()}
        for p in spec.progs:
            fd = prog_load(p.type, patch(p.insns, p.relocs, fds), spec.license, p.kname,
                           spec.kern_version)
            out.progs[p.name] = fd
            info = prog_info(fd)
            out.prog_ids.append(info["id"])
            if check_tags and p.tag and info["tag"] != p.tag:
                raise CacheError(f"program {p.name}: kernel tag {info['tag']}, expected {p.tag}")
            p.tag = p.tag or info["tag"]
        t1 = time.monotonic()
        lib = _attach_lib()
        cpus = online_cpus()
        for p in spec.progs if attach else []:
            if p.name in skip:
                continue
            fd = out.progs[p.name]
            for a in p.attach:
                if a.kind == "tracepoint":
                    cat, _, name = a.target.partition(":")
                    links = [lib.bpf_attach_tracepoint(fd, cat.encode(), name.encode())]
                elif a.kind == "raw_tracepoint":
                    links = [lib.bpf_attach_raw_tracepoint(fd, a.target.encode())]
                elif a.kind == "perf_event":
                    links = [lib.bpf_attach_perf_event(fd, a.ev_type, a.ev_config, a.sample_period,
                                                       0, -1, cpu, -1) for cpu in cpus]
                else:
                    raise CacheError(f"program {p.name}: unknown attachment {a.kind}")
                out.links.extend(x for x in links if x >= 0)
                if any(x < 0 for x in links):
                    raise LoadError(errno.EINVAL, f"cannot attach {p.name} to {a.kind} {a.target}")
        out.timing = {"load": t1 - t0, "attach": time.monotonic() - t1}
    except BaseException:
        release(out.fds())
        raise
    return out


def release(fds: Iterable[int], background: bool = True, close_own=None) -> None:
    """Closes `fds` (this process's copies; or calls `close_own`, which
    closes them). With `background`, the expensive part, the kernel's release
    of the attachments, happens in a helper process: it inherits the fds and
    exits (closing them) when the pipe it reads is closed, which is after
    this process has closed its copies: the last reference is the helper's."""
    fds = [fd for fd in dict.fromkeys(fds) if fd >= 0]
    helper = _holder(fds) if background and fds else None
    if close_own is not None:
        close_own()
    else:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    if helper is not None:
        helper[1].close()      # EOF: the helper exits and the kernel detaches


def _holder(fds: list[int]):
    cat = shutil.which("cat") or "/bin/cat"
    cmd = [cat] if os.access(cat, os.X_OK) else [sys.executable, "-S", "-c",
                                                 "import sys; sys.stdin.buffer.read()"]
    try:
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(cmd, stdin=r, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, pass_fds=fds,
                                    start_new_session=True)
        finally:
            os.close(r)
    except OSError:
        return None            # closes them here, slowly
    _HELPERS.append(proc)
    return proc, os.fdopen(w, "wb")


_HELPERS: list[subprocess.Popen] = []  # reaped by subprocess's own bookkeeping
