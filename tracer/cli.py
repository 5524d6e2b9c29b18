"""memtrace's command line: `main(argv=None) -> int`, one module per
subcommand, errors turned into one line on stderr and an exit code."""
from __future__ import annotations

import os
import sys
import traceback

from tracer.errors import MemtraceError

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
