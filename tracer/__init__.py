"""memtrace: how a Linux process gets its memory, traced with eBPF.

    >>> import tracer
    >>> t = tracer.load("trace.parquet")
    >>> t.events        # every memory syscall, page fault and process event
    >>> ds = tracer.load_dataset("runs/")   # memtrace -o runs/ --dataset
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Trace", "load", "load_dataset", "__version__"]


def __getattr__(name: str):
    # The analysis side (pandas: 0.3 s, 46 MB) loads on first use, so the
    # recorder, which never needs it, starts without it.
    if name in ("Trace", "load"):
        from tracer import trace
        return getattr(trace, name)
    if name == "load_dataset":
        from tracer import dataset
        return dataset.load_dataset
    if name == "symbols":
        import importlib
        return importlib.import_module("tracer.symbols")
    raise AttributeError(f"module 'tracer' has no attribute {name!r}")
