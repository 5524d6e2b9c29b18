"""memtrace's errors; each carries a one-line message and a process exit code.

Exit codes of the ``memtrace`` command:

    0  success
    1  MemtraceError: any other memtrace failure
    2  UsageError: bad command-line input
    3  SetupError: environment not ready (not root, no bcc, no kernel
       headers, no tracefs)
    4  NoSuchProcess: a process to trace (or read) does not exist
    5  TraceFileError: trace file unreadable, corrupt, foreign or newer
    6  OutputError: cannot write the output
    7  events were lost and --fail-on-loss was given
    8  a budget limit was broken (memtrace --budget FILE, memtrace check;
       tracer.budget.EXIT_BUDGET): it wins over CMD's status and over 7
   10  memtrace diff --fail-above: a figure changed by more than the threshold

``memtrace -- CMD`` exits with CMD's own status when tracing itself went well.
Ctrl-C while tracing ends tracing normally (the trace is written) once CMD
has exited (tracer.cmd_stop); Ctrl-C before tracing starts exits with 130.
"""

from __future__ import annotations


class MemtraceError(Exception):
    """Base of memtrace's errors; ``str(e)`` is one line for the user."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # One line: the CLI prints it as "memtrace: <message>".
        super().__init__(" ".join(str(message).split()))


class UsageError(MemtraceError):
    """Bad command-line input."""

    exit_code = 2


class SetupError(MemtraceError):
    """The environment is not ready; the message names the fix."""

    exit_code = 3


class NoSuchProcess(MemtraceError):
    """The process does not exist (or has gone)."""

    exit_code = 4

    def __init__(self, pid: int, message: str | None = None) -> None:
        self.pid = pid
        super().__init__(message or f"no such process: {pid}")

    def __reduce__(self):  # keep pid through pickling (multiprocessing)
        return (type(self), (self.pid, str(self)))


class TraceFileError(MemtraceError):
    """A trace file is unreadable, corrupt, foreign or from a newer memtrace."""

    exit_code = 5


class OutputError(MemtraceError):
    """The output cannot be written."""

    exit_code = 6
