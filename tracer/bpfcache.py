"""memtrace's BPF programs without clang at every start.

bcc compiles bpf/memtrace.bpf.c in about 1.6 s, nearly all of it clang
parsing the kernel headers; loading and attaching the result takes a few
milliseconds. So memtrace compiles once with bcc and keeps what bcc would
have handed the kernel (tracer/bpf_spec.py): each program's instructions,
the maps' definitions, and which instructions refer to which map. At the
next start the loader (tracer/bpf_load.py) creates the maps, writes their
file descriptors into those instructions, loads the programs and attaches
them as bcc does. This module is the store of compiled specs.

A cache entry is a JSON file named by a hash of everything that can change
the compiled code (`cache_key`): the BPF sources, cflags, the kernel
(release, build, machine), the header tree bcc compiles against, bcc's
library, the attach plan and the entry format. Loading also checks the
tracepoints' format files (bcc builds the argument structs from them) and,
after each program's load, its kernel tag (a hash of the instructions with
the map references zeroed) against the tag recorded at compile time.

Entries live in /var/cache/memtrace/bpf (root), else in
/tmp/memtrace-bpf-UID; a directory or entry not owned by this user, or
writable by others, is never read (a planted entry would be bytecode loaded
by root). MEMTRACE_BPF_CACHE=DIR overrides the place, MEMTRACE_BPF_CACHE=off
disables the cache (compile at every start), MEMTRACE_BPF_CACHE=bcc loads
with bcc's own loader (tracer/probes.py: the last resort, and the reference
the tests compare with).
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from tracer.bpf_spec import FORMAT, CacheError, Spec

DEFAULT_DIR = Path("/var/cache/memtrace/bpf")
ENV = "MEMTRACE_BPF_CACHE"
KEEP_ENTRIES = 16


def cache_key(source_dir: Path, cflags: list[str], extra: str = "") -> str:
    """A hash of everything the compiled code depends on."""
    h = hashlib.sha256()

    def put(label: str, value: object) -> None:
        h.update(f"{label}={value!r}\n".encode())

    put("format", FORMAT)
    for p in sorted(source_dir.iterdir()):
        if p.suffix in (".c", ".h") and p.is_file():
            put("source", p.name)
            h.update(p.read_bytes())
    put("cflags", list(cflags))
    u = os.uname()
    put("kernel", (u.release, u.version, u.machine))
    put("headers", _headers_identity())
    put("bcc", _file_identity("libbcc.so.0"))
    put("extra", extra)
    return h.hexdigest()[:32]


def _stat_id(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def _headers_identity() -> tuple:
    """The header tree bcc compiles against (its loader's order: the
    BCC_KERNEL_SOURCE variable, /lib/modules/RELEASE/build, the kernel's own
    kheaders)."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    rel = os.uname().release
    parts: tuple = ("env", env)
    if env:
        ver = os.path.join(env, "MEMTRACE_HEADERS_VERSION")
        try:
            with open(ver) as f:
                parts += (f.read().strip(),)
        except OSError:
            pass
        parts += (_stat_id(env), _stat_id(os.path.join(env, "include")))
    parts += (_stat_id(f"/lib/modules/{rel}/build"), _stat_id("/sys/kernel/kheaders.tar.xz"))
    return parts


def _file_identity(soname: str) -> tuple:
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
              "/usr/lib", "/usr/local/lib"):
        p = os.path.join(d, soname)
        if os.path.exists(p):
            return _stat_id(p)
    return (soname, None)


def _safe_dir(d: Path, create: bool) -> str | None:
    """None if `d` is a directory this user owns and no one else may write
    (made if `create`), else why not."""
    try:
        if create:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        return f"{d}: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{d}: not a directory"
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return f"{d}: owned by uid {st.st_uid} or writable by others"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"{d}: not writable"
    return None


class Cache:
    """The directory of entries. `dir` None: caching is off (`why`)."""

    def __init__(self, where: str | Path | None = None) -> None:
        self.why = ""
        self.dir: Path | None = None
        setting = str(where) if where is not None else os.environ.get(ENV)
        if setting is not None and setting.strip().lower() in ("", "0", "off", "no", "none"):
            self.why = f"off ({ENV}={setting})" if where is None else "off"
            return
        candidates = [Path(setting)] if setting else \
            [DEFAULT_DIR, Path(tempfile.gettempdir()) / f"memtrace-bpf-{os.geteuid()}"]
        reasons = []
        for d in candidates:
            bad = _safe_dir(d, create=True)
            if bad is None:
                self.dir = d
                return
            reasons.append(bad)
        self.why = "no usable directory: " + "; ".join(reasons)

    def path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{key}.json"

    def get(self, key: str) -> Spec:
        """The entry for `key`; CacheError (with the reason) if none is usable."""
        if self.dir is None:
            raise CacheError(self.why)
        why = self.uncacheable(key)
        if why is not None:
            raise CacheError(f"marked not cacheable: {why}")
        p = self.path(key)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CacheError("no entry") from None
        except OSError as e:
            raise CacheError(f"{p}: {e.strerror or e}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
                raise CacheError(f"{p}: not a regular file of uid {os.geteuid()} writable by it alone")
            spec = Spec.from_json(f.read().decode())
        if spec.key != key:
            raise CacheError(f"{p}: entry is for key {spec.key}")
        if not all(p.tag for p in spec.progs):
            raise CacheError(f"{p}: a program has no recorded tag")
        return spec

    def put(self, key: str, spec: Spec) -> str | None:
        """Stores `spec` (atomically); None, or why it was not stored."""
        if self.dir is None:
            return self.why
        spec.key = key
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{key}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(spec.to_json())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path(key))
        except OSError as e:
            return f"{self.dir}: {e.strerror or e}"
        self._prune()
        return None

    def uncacheable(self, key: str) -> str | None:
        """Why `key` was marked not cacheable (bcc's loader is used), or None."""
        if self.dir is None:
            return None
        try:
            return (self.dir / f"{key}.nocache").read_text().strip() or "marked"
        except OSError:
            return None

    def mark_uncacheable(self, key: str, why: str) -> None:
        if self.dir is None:
            return
        try:
            (self.dir / f"{key}.nocache").write_text(why + "\n")
        except OSError:
            pass

    def _prune(self) -> None:
        assert self.dir is not None
        try:
            entries = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
            for p in entries[KEEP_ENTRIES:]:
                p.unlink(missing_ok=True)
                p.with_suffix(".nocache").unlink(missing_ok=True)
        except OSError:
            pass
