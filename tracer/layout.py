"""The event layout of bpf/memtrace.h as numpy dtypes and constants.

The header is the one definition; this module parses it (it is written to be
parseable: `#define NAME value` and structs of fixed-width fields, or of
structs defined before them, with explicit padding), so the two sides cannot drift apart.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
HEADER = BPF_DIR / "memtrace.h"

_CTYPES = {
    "__u8": "u1", "__u16": "<u2", "__u32": "<u4", "__u64": "<u8",
    "__s8": "i1", "__s16": "<i2", "__s32": "<i4", "__s64": "<i8",
    "char": "S1",
}
_DEFINE = re.compile(r"^#define\s+(MT_\w+)\s+(\w+)\s*$", re.M)
_STRUCT = re.compile(r"struct\s+(mt_\w+)\s*\{(.*?)\};", re.S)
_FIELD = re.compile(r"^\s*(?:struct\s+)?(\w+)\s+(\w+)(?:\[(\w+)\])?\s*;", re.M)


@lru_cache(maxsize=None)
def _parse(text: str) -> tuple[dict[str, int], dict[str, np.dtype]]:
    body_text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)   # comments may follow a value
    consts: dict[str, int] = {}
    for name, value in _DEFINE.findall(body_text):
        consts[name] = int(value, 0) if value[0].isdigit() else consts[value]
    structs: dict[str, np.dtype] = {}
    for name, body in _STRUCT.findall(body_text):
        fields = []
        for ctype, fname, dim in _FIELD.findall(body):
            if ctype in structs and not dim:    # a struct defined above
                fields.append((fname, structs[ctype]))
                continue
            if ctype not in _CTYPES:
                raise ValueError(f"{HEADER.name}: {name}.{fname}: type {ctype} not fixed-width")
            n = (int(dim) if dim.isdigit() else consts[dim]) if dim else 0
            if ctype == "char":
                fields.append((fname, f"S{n or 1}"))
            elif n:
                fields.append((fname, _CTYPES[ctype], (n,)))
            else:
                fields.append((fname, _CTYPES[ctype]))
        dt = np.dtype(fields)
        if dt.itemsize % 8:
            raise ValueError(f"{HEADER.name}: struct {name} is {dt.itemsize} bytes, not a multiple of 8")
        structs[name] = dt
    return consts, structs


def constants() -> dict[str, int]:
    return _parse(HEADER.read_text())[0]


def dtypes() -> dict[str, np.dtype]:
    return _parse(HEADER.read_text())[1]


C = constants()
FAULT = dtypes()["mt_fault"]
EVENT = dtypes()["mt_event"]
EXEC = dtypes()["mt_exec"]
SUMMARY_KEY = dtypes()["mt_summary_key"]
SUMMARY = dtypes()["mt_summary"]
SUMMARY_ACC = dtypes()["mt_summary_acc"]
SUMMARY_RUN = dtypes()["mt_summary_run"]

# MT_EV_* -> the trace's `kind` names
KIND_NAMES = {v: k[len("MT_EV_"):].lower() for k, v in C.items() if k.startswith("MT_EV_")}
SYSCALL_KINDS = ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise")
COUNTER_NAMES = {v: k[len("MT_CNT_"):].lower() for k, v in C.items()
                 if k.startswith("MT_CNT_") and k != "MT_NR_COUNTERS"}
