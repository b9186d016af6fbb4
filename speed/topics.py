"""Kafka topic administration against any broker (the local one or a cluster): the speed layer
creates its alerts topic when missing, and `lakehouse speed produce` its events topic."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from lakehouse.errors import ServiceError
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

# Seconds to wait for the broker to create or delete a topic, and for one metadata request.
TOPIC_TIMEOUT = 30.0
PROBE_TIMEOUT = 3.0


def admin_client(settings: Settings):
    return AdminClient(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "socket.timeout.ms": int(PROBE_TIMEOUT * 1000),
            # librdkafka would print every refused connection to stderr.
            "log_level": 0,
        }
    )


def create_topic(name: str, partitions: int = 1, *, settings: Settings) -> bool:
    """Create a topic with one replica; True if created, False if it already existed.

    Returns once the broker serves metadata with a leader for every partition, so a producer can
    write right away. An existing topic is left as it is (even with another partition count).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    admin = admin_client(settings)
    future = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        request_timeout=TOPIC_TIMEOUT,
    )[name]
    created = True
    try:
        future.result()
    except KafkaException as error:
        kafka_error = error.args[0] if error.args else None
        if isinstance(kafka_error, KafkaError) and kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            created = False
        else:
            raise ServiceError("kafka", f"could not create topic {name!r}: {error}") from error
    _wait_for_topic(admin, name, present=True)
    if created:
        log.info("created Kafka topic %s (%d partitions)", name, partitions)
    return created


def delete_topic(name: str, *, settings: Settings) -> bool:
    """Delete a topic; True if deleted, False if it did not exist."""
    admin = admin_client(settings)
    future = admin.delete_topics([name], request_timeout=TOPIC_TIMEOUT)[name]
    try:
        future.result()
    except KafkaException as error:
        kafka_error = error.args[0] if error.args else None
        if isinstance(kafka_error, KafkaError) and kafka_error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return False
        raise ServiceError("kafka", f"could not delete topic {name!r}: {error}") from error
    _wait_for_topic(admin, name, present=False)
    log.info("deleted Kafka topic %s", name)
    return True


def _wait_for_topic(admin, name: str, *, present: bool) -> None:
    deadline = time.monotonic() + TOPIC_TIMEOUT
    while True:
        try:
            topic = admin.list_topics(topic=name, timeout=PROBE_TIMEOUT).topics.get(name)
        except KafkaException:
            topic = None
        if present:
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
            ):
                return
        elif topic is None or topic.error is not None:
            return
        if time.monotonic() > deadline:
            state = "appear" if present else "disappear"
            raise ServiceError("kafka", f"topic {name!r} did not {state} within {TOPIC_TIMEOUT:.0f}s")
        time.sleep(0.1)
