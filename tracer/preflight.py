"""Checks memtrace runs before tracing; each failure is a SetupError whose one
line names the fix. ``say`` receives short notes about what was changed (the
caller prints them unless quiet)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType
from typing import Callable

from tracer.errors import SetupError

Say = Callable[[str], None]

TRACING_DIR = "/sys/kernel/tracing"
MODULES_DIR = "/lib/modules"
# Made by scripts/setup: the distribution's header tree, merged into one
# directory of symlinks, with the header version in VERSION_FILE inside.
SUBSTITUTE_DIR = "/var/lib/memtrace/kernel-headers"
VERSION_FILE = "MEMTRACE_HEADERS_VERSION"
# Kernels built with CONFIG_IKHEADERS carry their own headers; bcc unpacks
# this itself (bcc src/cc/frontends/clang/loader.cc, get_proc_kheaders).
KHEADERS_PATH = "/sys/kernel/kheaders.tar.xz"


def check_root() -> None:
    if os.geteuid() != 0:
        raise SetupError("memtrace needs root (BPF): run it with sudo")


def _bcc_missing(why: object) -> SetupError:
    # bcc is not on PyPI (the PyPI "bcc" is an unrelated package): it comes
    # from the distribution's python3-bpfcc, built for the system python only,
    # so a venv sees it only if made from /usr/bin/python3 with
    # --system-site-packages.
    return SetupError(
        f"cannot import bcc in {sys.executable} ({why}): install python3-bpfcc"
        " and run memtrace from the venv scripts/setup makes"
        " (/usr/bin/python3 -m venv --system-site-packages .venv)")


def check_bcc() -> None:
    """bcc is there, not imported: a run whose programs come from the
    compiled-program cache (tracer/bpfcache.py) never needs it, and its
    import maps LLVM into memtrace (about 60 MB more resident here)."""
    try:
        found = importlib.util.find_spec("bcc") is not None
    except (ImportError, ValueError) as e:
        raise _bcc_missing(e) from None
    if not found:
        raise _bcc_missing("No module named 'bcc'")


def import_bcc() -> ModuleType:
    """bcc, imported where it is needed (to compile: a cache miss). OSError:
    the module is there but libbcc.so.0 is not."""
    try:
        import bcc
    except (ImportError, OSError) as e:
        raise _bcc_missing(e) from None
    return bcc


def ensure_tracefs(say: Say) -> None:
    """bcc attaches tracepoints through tracefs, which a fresh machine may not
    have mounted (bcc/__init__.py uses /sys/kernel/tracing when debugfs's
    tracing/ is absent)."""
    if os.path.isdir(os.path.join(TRACING_DIR, "events")):
        return
    command = f"mount -t tracefs nodev {TRACING_DIR}"
    if os.geteuid() != 0:
        raise SetupError(f"tracefs is not mounted: run sudo {command}")
    try:
        r = subprocess.run(command.split(), capture_output=True, text=True)
        detail = " ".join(r.stderr.split()) or f"exit status {r.returncode}"
    except OSError as e:        # no mount binary
        detail = str(e)
    if not os.path.isdir(os.path.join(TRACING_DIR, "events")):
        raise SetupError(f"tracefs is not mounted and mounting it failed"
                         f" ({detail}): run {command}")
    say(f"mounted tracefs on {TRACING_DIR}")


def substitute_version(directory: str = "") -> str:
    """Header version scripts/setup recorded in the substitute tree."""
    path = os.path.join(directory or SUBSTITUTE_DIR, VERSION_FILE)
    try:
        with open(path) as f:
            return (f.readline().strip() or "unknown")
    except OSError:
        return "unknown"


def ensure_kernel_headers(say: Say) -> None:
    """bcc compiles the BPF C against a kernel header tree: BCC_KERNEL_SOURCE,
    else /lib/modules/RELEASE/build (bcc loader.cc). Kernels without packaged
    headers get the distribution's generic ones, which is safe because
    memtrace's BPF code reads no kernel structs (bpf/memtrace.bpf.c)."""
    release = os.uname().release
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        if os.path.isdir(env):
            return
        # bcc would use it anyway and fail with a confusing compile error.
        raise SetupError(f"BCC_KERNEL_SOURCE={env} is not a directory: unset it"
                         " or point it at a kernel header tree")
    if os.path.isdir(os.path.join(MODULES_DIR, release, "build")):
        return
    if os.path.exists(KHEADERS_PATH):
        return
    if os.path.isdir(SUBSTITUTE_DIR):
        # putenv through os.environ: bcc reads it (getenv) when compiling.
        os.environ["BCC_KERNEL_SOURCE"] = SUBSTITUTE_DIR
        say(f"using substitute kernel headers {substitute_version()} for kernel"
            f" {release} (memtrace reads no kernel structs)")
        return
    raise SetupError(f"no kernel headers for {release}: run scripts/setup"
                     " (it installs the distribution's headers)")


def check_all(say: Say) -> None:
    check_root()
    check_bcc()
    ensure_tracefs(say)
    ensure_kernel_headers(say)
