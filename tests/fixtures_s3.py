"""Session fixture for the local S3 server (S3Proxy), loaded through conftest.py's pytest_plugins."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from lakehouse.services.s3 import S3Server

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    started_here = server.pid() is None
    began = time.monotonic()
    server.start(wait=True)
    log.info("S3 ready on %s after %.1fs (started here: %s)", server.address, time.monotonic() - began, started_here)
    try:
        yield server
    finally:
        if started_here and os.environ.get("LAKEHOUSE_TEST_KEEP_SERVICES") != "1":
            server.stop()
