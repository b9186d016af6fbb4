"""How the entry points end: everything Python would do at exit, then no native teardown.

Arrow (which deltalake reads through) can leave a thread-pool worker alive at interpreter exit;
that worker's `std::thread` destructor then calls `std::terminate`, and the process aborts with
SIGABRT (exit -6) after its work is done and its output printed (apache/arrow#34314,
delta-io/delta-rs#2184). Measured here with deltalake 1.6.6 and pyarrow 25: 3 exits in 16
aborted after one `DeltaTable(...).to_pandas()`; every earlier deltalake 1.x loads the same Arrow.

A scheduler reads that exit code, so the entry points (`lakehouse`, `python -m batch.job`,
`python -m speed.pipeline`) end through `run_then_exit`: it waits for non-daemon threads, runs the
atexit handlers (log handlers flush, Spark stops), flushes stdout and stderr, and leaves with
`os._exit`. Only the native finalisers are skipped; nothing they do is durable.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def run_then_exit(main: Callable[[], object]) -> NoReturn:
    """Call `main`, then end the process with its exit code as `sys.exit` would give it."""
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:
        code = 130  # what a shell reports for Ctrl-C
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then exit 1
        sys.excepthook(*sys.exc_info())
        code = 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 - the interpreter's own exit step, without finalisation
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be written
            pass
    os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1
