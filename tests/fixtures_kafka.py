"""Session fixture for the local Kafka broker (loaded through conftest.py's pytest_plugins).

The broker lives in the test environment conftest.py sets up; it is started once per session and
stopped at its end, unless LAKEHOUSE_TEST_KEEP_SERVICES=1 keeps it for the next run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import pytest

from lakehouse.services.kafka import KafkaBroker

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    broker = KafkaBroker()
    started_here = broker.pid() is None
    began = time.monotonic()
    broker.start(wait=True)
    log.info("Kafka ready on %s after %.1fs (started here: %s)", broker.address, time.monotonic() - began, started_here)
    try:
        yield broker
    finally:
        if started_here and os.environ.get("LAKEHOUSE_TEST_KEEP_SERVICES") != "1":
            broker.stop()
