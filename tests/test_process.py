"""The entry points' ending (lakehouse/process.py), in real interpreter processes.

`run_then_exit` skips the native teardown that can abort after a Delta read, so what the
interpreter would have done at exit must still happen: the exit code sys.exit would give, the
message, the traceback, atexit handlers, buffered output and non-daemon threads.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]


def _run(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(
        """
        import atexit, sys, threading, time
        from lakehouse import process
        atexit.register(lambda: print("atexit ran", flush=True))
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=_ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("main", "code", "stderr"),
    [
        ("lambda: None", 0, ""),
        ("lambda: sys.exit(3)", 3, ""),
        ("lambda: sys.exit('bad input: line 4')", 1, "bad input: line 4"),
        ("lambda: 1 / 0", 1, "ZeroDivisionError"),
    ],
)
def test_exit_code_message_and_atexit_as_the_interpreter_gives_them(main, code, stderr):
    done = _run(f"print('buffered', end='')\nprocess.run_then_exit({main})\n")
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith("buffered")
    assert "atexit ran" in done.stdout
    assert stderr in done.stderr


def test_waits_for_non_daemon_threads():
    done = _run(
        """
        def work():
            time.sleep(0.5)
            print("thread finished", flush=True)
        process.run_then_exit(lambda: threading.Thread(target=work).start())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.index("thread finished") < done.stdout.index("atexit ran")
