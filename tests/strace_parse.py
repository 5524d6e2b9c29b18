"""Test helper: strace's view of the memory syscalls, to compare with memtrace's.

`parse_strace(text)` reads the output of

    strace -f -qq -X raw -e trace=brk,mmap,munmap,mremap,mprotect,madvise -o FILE CMD

into `Call`s (tid, name, args, ret), joining `<unfinished ...>` /
`<... NAME resumed>` pairs. `-X raw` makes strace print flags and protections
as numbers (strace >= 5.x; 6.1 has it); symbolic flags are decoded too
(`PROT_READ|PROT_WRITE`, `MAP_PRIVATE|MAP_ANONYMOUS`, `MADV_DONTNEED`, ...),
so output without `-X raw` parses as well. Errors (`= -1 ENOMEM (...)`)
become the negative errno, as the kernel returns it and memtrace records it.

`calls_from_events(df)` turns memtrace's syscall rows into the same `Call`s,
and `normalize` makes both sides comparable (mremap's new_addr only when a
flag uses it, fd as an int). `compare(strace_calls, memtrace_calls)` lists
the differences, per tid, in words.
"""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field

MEMORY_SYSCALLS = ("brk", "mmap", "munmap", "mremap", "mprotect", "madvise")

# <sys/mman.h>, x86_64 (<asm-generic/mman-common.h>, <asm/mman.h>, <linux/mman.h>)
SYMBOLS = {
    "NULL": 0,
    "PROT_NONE": 0x0, "PROT_READ": 0x1, "PROT_WRITE": 0x2, "PROT_EXEC": 0x4,
    "PROT_SEM": 0x8, "PROT_GROWSDOWN": 0x01000000, "PROT_GROWSUP": 0x02000000,
    "MAP_SHARED": 0x01, "MAP_PRIVATE": 0x02, "MAP_SHARED_VALIDATE": 0x03,
    "MAP_FIXED": 0x10, "MAP_ANONYMOUS": 0x20, "MAP_ANON": 0x20, "MAP_32BIT": 0x40,
    "MAP_GROWSDOWN": 0x0100, "MAP_DENYWRITE": 0x0800, "MAP_EXECUTABLE": 0x1000,
    "MAP_LOCKED": 0x2000, "MAP_NORESERVE": 0x4000, "MAP_POPULATE": 0x8000,
    "MAP_NONBLOCK": 0x10000, "MAP_STACK": 0x20000, "MAP_HUGETLB": 0x40000,
    "MAP_SYNC": 0x80000, "MAP_FIXED_NOREPLACE": 0x100000,
    "MAP_UNINITIALIZED": 0x4000000,
    "MREMAP_MAYMOVE": 1, "MREMAP_FIXED": 2, "MREMAP_DONTUNMAP": 4,
    "MADV_NORMAL": 0, "MADV_RANDOM": 1, "MADV_SEQUENTIAL": 2, "MADV_WILLNEED": 3,
    "MADV_DONTNEED": 4, "MADV_FREE": 8, "MADV_REMOVE": 9, "MADV_DONTFORK": 10,
    "MADV_DOFORK": 11, "MADV_MERGEABLE": 12, "MADV_UNMERGEABLE": 13,
    "MADV_HUGEPAGE": 14, "MADV_NOHUGEPAGE": 15, "MADV_DONTDUMP": 16,
    "MADV_DODUMP": 17, "MADV_WIPEONFORK": 18, "MADV_KEEPONFORK": 19,
    "MADV_COLD": 20, "MADV_PAGEOUT": 21, "MADV_POPULATE_READ": 22,
    "MADV_POPULATE_WRITE": 23, "MADV_DONTNEED_LOCKED": 24, "MADV_COLLAPSE": 25,
    "MADV_HWPOISON": 100, "MADV_SOFT_OFFLINE": 101,
}

MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4


@dataclass(frozen=True)
class Call:
    tid: int
    name: str
    args: tuple[int, ...]
    ret: int | None                       # negative errno on error; None: strace printed '?'
    where: str = field(default="", compare=False)  # 'strace.txt:12' / 'row 345', for messages

    def __str__(self) -> str:
        args = ", ".join(hex(a) if a > 9 else str(a) for a in self.args)
        ret = "?" if self.ret is None else (hex(self.ret) if self.ret > 9 else str(self.ret))
        return f"{self.name}({args}) = {ret}"


class StraceParseError(ValueError):
    pass


_PID = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*?)\s*$")
_UNFINISHED = re.compile(r"^(\w+)\((.*?)\s*<unfinished \.\.\.>\s*$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>\s*(.*)\)\s+=\s+(.*?)\s*$")
_RET = re.compile(r"^(-?(?:0x[0-9a-fA-F]+|\d+)|\?)(?:\s+([A-Z][A-Z0-9_]*)\b.*)?")


def parse_value(text: str) -> int:
    """An argument as strace prints it: 0x1f, 42, -1, NULL, PROT_READ|PROT_WRITE,
    MAP_PRIVATE|MAP_ANONYMOUS|0x40000, or a raw number."""
    text = text.strip()
    if not text:
        raise StraceParseError("empty argument")
    value = 0
    for part in text.split("|"):
        part = part.strip()
        if part in SYMBOLS:
            value |= SYMBOLS[part]
            continue
        try:
            value |= int(part, 0)
        except ValueError:
            raise StraceParseError(f"cannot read argument {text!r}") from None
    return value


def _split_args(text: str) -> list[str]:
    """Top-level comma split (strace's raw memory-syscall arguments have no
    nesting, but be safe with brackets and quotes)."""
    out, depth, cur, quote = [], 0, [], False
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == '"':
                quote = False
            continue
        if ch == '"':
            quote = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return [a.strip() for a in out]


def parse_ret(text: str) -> int | None:
    """'0x7f..' / '0' / '-1 ENOMEM (Cannot allocate memory)' / '?'."""
    m = _RET.match(text.strip())
    if not m:
        raise StraceParseError(f"cannot read return value {text!r}")
    if m.group(1) == "?":
        return None
    value = int(m.group(1), 0)
    name = m.group(2)
    if value == -1 and name:
        code = getattr(errno, name, None)
        if code is None:
            raise StraceParseError(f"unknown errno {name} in {text!r}")
        return -code
    return value


def parse_strace(text: str, names: tuple[str, ...] | None = MEMORY_SYSCALLS,
                 source: str = "strace") -> list[Call]:
    """All the calls in strace's output, in the order strace printed their end
    (for a tid: the order it made them). Lines without a pid prefix (strace
    without -f) get tid 0. Signals, exits and other syscalls (if `names` is
    not None) are skipped."""
    calls: list[Call] = []
    pending: dict[int, tuple[str, str, int]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip():
            continue
        m = _PID.match(line)
        if m:
            tid, rest = int(m.group(1)), m.group(2)
        else:
            tid, rest = 0, line.strip()
        if rest.startswith(("---", "+++", "strace:")) or rest.startswith("???"):
            continue
        where = f"{source}:{lineno}"
        if rest.startswith("<..."):
            m = _RESUMED.match(rest)
            if not m:
                if rest.endswith("= ?") or "resumed>" in rest:
                    # e.g. '<... exit resumed>' of a thread that died mid-call
                    pending.pop(tid, None)
                    continue
                raise StraceParseError(f"{where}: cannot read {raw!r}")
            name, tail, ret = m.groups()
            if tid not in pending or pending[tid][0] != name:
                raise StraceParseError(f"{where}: resumed {name} without its start")
            _, head, start = pending.pop(tid)
            argtext = head + tail
            where = f"{source}:{start}"
        else:
            m = _UNFINISHED.match(rest)
            if m:
                pending[tid] = (m.group(1), m.group(2), lineno)
                continue
            m = _CALL.match(rest)
            if not m:
                raise StraceParseError(f"{where}: cannot read {raw!r}")
            name, argtext, ret = m.groups()
        if names is not None and name not in names:
            continue
        args = tuple(parse_value(a) for a in _split_args(argtext))
        calls.append(Call(tid, name, args, parse_ret(ret), where))
    return calls


def by_tid(calls: list[Call]) -> dict[int, list[Call]]:
    out: dict[int, list[Call]] = {}
    for c in calls:
        out.setdefault(c.tid, []).append(c)
    return out


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _u64(v: int) -> int:
    return v & 0xFFFFFFFFFFFFFFFF


def normalize(call: Call) -> Call:
    """The arguments that the kernel uses, in a common form: addresses and
    lengths as unsigned 64-bit, mmap's fd as a 32-bit int, mremap's new_addr
    only with MREMAP_FIXED or MREMAP_DONTUNMAP (else it is whatever was in the
    register), ret as signed."""
    a = list(call.args)
    name = call.name
    if name == "brk":
        a = [_u64(a[0])]
    elif name == "mmap":
        a = [_u64(a[0]), _u64(a[1]), _int32(a[2]), _u64(a[3]) & 0xFFFFFFFF, _int32(a[4]), _u64(a[5])]
    elif name == "munmap":
        a = [_u64(a[0]), _u64(a[1])]
    elif name == "mremap":
        flags = _u64(a[3])
        a = [_u64(a[0]), _u64(a[1]), _u64(a[2]), flags]
        if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP):
            a.append(_u64(call.args[4]) if len(call.args) > 4 else 0)
    elif name == "mprotect":
        a = [_u64(a[0]), _u64(a[1]), _int32(a[2])]
    elif name == "madvise":
        a = [_u64(a[0]), _u64(a[1]), _int32(a[2])]
    ret = call.ret
    if ret is not None:
        ret = _u64(ret)
        ret = ret - (1 << 64) if ret & (1 << 63) else ret
    return Call(call.tid, name, tuple(a), ret, call.where)


def calls_from_events(df) -> list[Call]:
    """memtrace's syscall rows (docs/format.md) as `Call`s, in row order.
    Rows of other kinds are ignored."""
    out: list[Call] = []
    kinds = df["kind"].astype(str)
    rows = df[kinds.isin(MEMORY_SYSCALLS)]

    def g(row, col: str) -> int:
        v = row[col]
        try:
            return int(v)
        except (TypeError, ValueError):
            return 0  # null: an argument the kind does not have

    for idx, row in rows.iterrows():
        name = str(row["kind"])
        if name == "brk":
            args = (g(row, "addr"),)
        elif name == "mmap":
            args = (g(row, "addr"), g(row, "len"), g(row, "prot"), g(row, "flags"),
                    g(row, "fd"), g(row, "off"))
        elif name == "munmap":
            args = (g(row, "addr"), g(row, "len"))
        elif name == "mremap":
            args = (g(row, "addr"), g(row, "len"), g(row, "new_len"), g(row, "flags"),
                    g(row, "new_addr"))
        elif name == "mprotect":
            args = (g(row, "addr"), g(row, "len"), g(row, "prot"))
        else:  # madvise
            args = (g(row, "addr"), g(row, "len"), g(row, "flags"))
        out.append(Call(int(row["tid"]), name, args, g(row, "ret"), f"row {idx}"))
    return out


def compare(expected: list[Call], got: list[Call], *, expected_name: str = "strace",
            got_name: str = "memtrace", limit: int = 20) -> list[str]:
    """Differences between two call lists, per tid, after `normalize`: an
    empty list when, for every tid, both have the same calls in the same
    order with the same arguments and return values."""
    exp = by_tid([normalize(c) for c in expected])
    act = by_tid([normalize(c) for c in got])
    problems: list[str] = []
    for tid in sorted(set(exp) | set(act)):
        e, a = exp.get(tid, []), act.get(tid, [])
        if not e or not a:
            problems.append(f"tid {tid}: {len(e)} calls in {expected_name}, {len(a)} in {got_name}")
            continue
        for i, (ce, ca) in enumerate(zip(e, a)):
            if ce != ca:
                problems.append(
                    f"tid {tid}: call #{i} differs: {expected_name} {ce} ({ce.where})"
                    f" vs {got_name} {ca} ({ca.where})")
                break
        else:
            if len(e) != len(a):
                longer, name = (e, expected_name) if len(e) > len(a) else (a, got_name)
                extra = longer[min(len(e), len(a))]
                problems.append(
                    f"tid {tid}: {len(e)} calls in {expected_name}, {len(a)} in {got_name};"
                    f" first extra in {name}: {extra} ({extra.where})")
        if len(problems) >= limit:
            problems.append("...")
            break
    return problems


def summary(calls: list[Call]) -> dict[str, int]:
    """Number of calls by syscall name."""
    out: dict[str, int] = {}
    for c in calls:
        out[c.name] = out.get(c.name, 0) + 1
    return out
