"""A capture's files beside its spill: a stale trace at PATH removed before
the run, the spill of a run that failed before tracing discarded (nothing
left behind), and output files given to the user who ran sudo.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tracer import writer
from tracer.errors import OutputError


def discard_spill(spill: writer.Spill) -> None:
    """The spill of a run that failed before tracing: closed and removed."""
    try:
        spill.abandon()
        spill.close()
    except Exception:
        pass
    try:
        os.unlink(spill.path)
    except FileNotFoundError:
        pass


def remove_stale(output: Path) -> None:
    """A trace left at PATH by an earlier run would be taken for this run's
    if this one is cut short (tracer.load prefers PATH to PATH.partial)."""
    for p in (output, Path(str(output) + ".meta.json")):
        try:
            if p.is_file():
                p.unlink()
        except OSError as e:
            raise OutputError(f"cannot replace {p}: {e.strerror or e}") from None


def chown(path: Path, owner: tuple[int, int] | None, say: Callable[[str], None]) -> None:
    """Gives an output file to `owner` (uid, gid): the user who ran sudo."""
    if owner is None:
        return
    try:
        os.chown(path, *owner)
    except OSError as e:
        say(f"cannot give {path} to uid {owner[0]}: {e.strerror or e}")
