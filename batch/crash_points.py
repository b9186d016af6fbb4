"""Named points where a crash drill kills the batch job with SIGKILL.

`LAKEHOUSE_CRASH_AT=<point>` makes the job kill its own process with SIGKILL when it reaches that
point: no exception, no `finally`, no flush — what the OOM killer or a lost node does. The points
are the start and end of every step (`ingest:start` ... `score:end`, see batch/job.py) and the
commits in between (`silver:quarantined`, `run_log:append`, `run_log:appended`). The crash tests
(tests/test_crash.py) use them to reach every step; a drill can also kill at random times from
outside. Unset (always, in production), a point costs one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal

ENVIRONMENT_VARIABLE = "LAKEHOUSE_CRASH_AT"
log = logging.getLogger(__name__)


def crash_point(name: str) -> None:
    if os.environ.get(ENVIRONMENT_VARIABLE) == name:
        log.warning("crash point %s reached: SIGKILL", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
