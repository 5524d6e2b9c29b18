"""memtrace's command line: `main(argv=None) -> int`, one module per
subcommand, errors turned into one line on stderr and an exit code."""
from __future__ import annotations

import atexit
import os
import sys
import traceback
from typing import NoReturn

from tracer.errors import MemtraceError


def arrow_system_allocator() -> None:
    """Arrow's C++ default memory pool made the system allocator (malloc),
    as writer._use_system_allocator makes pyarrow's: the Parquet writer's
    encoders and the IPC writer's compression take their buffers from the
    C++ default, and pyarrow lets neither be given a pool. Its mimalloc
    keeps their freed pages: the Parquet encoding of 2M rows grew the
    resident size by 19.5 MB with it, 8.3 MB without. Arrow reads
    ARROW_DEFAULT_MEMORY_POOL when pyarrow is imported: set for that import
    only (the traced programs do not inherit it), never over the user's."""
    if "pyarrow" in sys.modules or "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    try:
        import pyarrow  # noqa: F401
    finally:
        del os.environ["ARROW_DEFAULT_MEMORY_POOL"]


# the variables OpenBLAS reads for its thread count (the first set wins)
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def blas_one_thread() -> None:
    """numpy's OpenBLAS starts a thread per CPU when numpy is imported, and
    each busy-waits before it sleeps: 0.08 s of CPU here (0.036 s within the
    import, 0.043 s in the half second after it), taken from the CPU the
    traced programs share, though memtrace makes no BLAS call. OpenBLAS reads
    its thread count once, when numpy loads it: one thread, set for that
    import only (the traced programs do not inherit it), never over the
    user's."""
    if "numpy" in sys.modules or any(v in os.environ for v in _BLAS_THREADS):
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        del os.environ["OPENBLAS_NUM_THREADS"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    blas_one_thread()
    arrow_system_allocator()
    try:
        if argv[:1] == ["report"]:
            from tracer import report
            return report.main(argv[1:])
        if argv[:1] == ["diff"]:
            from tracer import diff
            return diff.main(argv[1:])
        if argv[:1] == ["query"]:
            from tracer import query
            return query.main(argv[1:])
        if argv[:1] == ["check"]:
            from tracer import check
            return check.main(argv[1:])
        if argv[:1] == ["demo"]:
            from tracer import demo
            return demo.main(argv[1:])
        if argv[:1] == ["record"]:
            argv = argv[1:]
        from tracer import record
        return record.main(argv)
    except MemtraceError as e:
        print(f"memtrace: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("memtrace: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, the traceback on request
        if os.environ.get("MEMTRACE_DEBUG"):
            traceback.print_exc()
        print(f"memtrace: internal error: {type(e).__name__}: {e} (events flushed so far "
              "are in the .partial file; MEMTRACE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def run() -> NoReturn:
    """The console entry (`memtrace`, `python -m tracer`): main's status,
    then out at once, after the atexit handlers and a flush of stdout and
    stderr. The interpreter's own teardown (every module and object freed:
    30-35 ms after a trace of 460k rows here, against 4-5 ms this way:
    docs/benchmarks.md, eleventh session) would come after the last
    traced exit and count in memtrace's end. Every file memtrace writes is
    closed by then; a SystemExit (--help) leaves the usual way."""
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: nothing more to say
            pass
    atexit._run_exitfuncs()   # bcc's cleanup, if a BPF object was made
    os._exit(status)

