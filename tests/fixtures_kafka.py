"""Session fixture for the local Kafka broker; conftest.py imports it (pytest loads only conftest.py).

    from fixtures_kafka import kafka_broker  # noqa: F401

A broker that is already running (pid file and probe) is reused and left running; otherwise the
fixture starts one and stops it when the session ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from lakehouse.services.kafka import KafkaBroker

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    broker = KafkaBroker()
    # A running process that does not answer yet is still starting: wait for it, but it is not ours.
    started_here = broker.pid() is None
    began = time.monotonic()
    broker.start(wait=True)
    if started_here:
        log.info("started Kafka on %s in %.1fs", broker.address, time.monotonic() - began)
    else:
        log.info("reusing the running Kafka on %s (pid %s)", broker.address, broker.pid())
    try:
        yield broker
    finally:
        if started_here:
            broker.stop()
