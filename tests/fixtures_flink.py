"""Session fixture for the Beam Flink job server (embedded Flink), loaded through conftest.py."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from lakehouse.services.flink import FlinkJobServer

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def flink_job_server() -> Iterator[FlinkJobServer]:
    server = FlinkJobServer()
    started_here = server.pid() is None
    began = time.monotonic()
    server.start(wait=True)
    log.info("Flink job server ready on %s after %.1fs", server.address, time.monotonic() - began)
    try:
        yield server
    finally:
        if started_here and os.environ.get("LAKEHOUSE_TEST_KEEP_SERVICES") != "1":
            server.stop()
