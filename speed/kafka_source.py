"""Reading a Kafka topic as a bounded range, with offsets committed only after the sink commits.

`ReadKafkaRange` reads each partition from the consumer group's committed offset (or the
beginning) up to the end offset seen when the pipeline was built. `commit_offsets` records those
end offsets for the group after the pipeline has finished, that is after every row reached the hot
table. A run that dies midway commits nothing; the next run reads the same range again and the
hot table's upsert by event id absorbs the repeats, so each event lands exactly once.

This is the micro-batch mode that runs on any Beam runner, the local one included. Unbounded
reading through Beam's cross-language KafkaIO on Flink is the speed-layer issue's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from lakehouse.errors import ServiceError
from speed.coding import Records, in_lists

log = logging.getLogger(__name__)

_POLL_SECONDS = 1.0
_EMPTY_POLLS_BEFORE_GIVING_UP = 30


@dataclass(frozen=True)
class PartitionRange:
    topic: str
    partition: int
    start: int  # first offset to read
    end: int  # offset after the last one to read


def group_consumer(bootstrap: str, group: str, overrides: dict | None = None):
    """A consumer of the group that never commits by itself; `overrides` are librdkafka settings."""
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }
    settings.update(overrides or {})
    return Consumer(settings)


def retrying_coordinator(action, what: str, attempts: int = 30):
    """Run a group-coordinator call, retrying while the coordinator is not ready yet.

    A new broker creates its internal offsets topic on the first group request and answers
    NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS for a few seconds meanwhile.
    """

    not_ready = {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
    }
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            retriable = isinstance(kafka_error, KafkaError) and (kafka_error.retriable() or kafka_error.code() in not_ready)
            if not retriable or attempt == attempts:
                raise
            log.info("%s: %s; retrying (%d/%d)", what, kafka_error, attempt, attempts)
            time.sleep(1.0)
    raise AssertionError("unreachable")


def plan_ranges(bootstrap: str, topic: str, group: str, timeout: float = 10.0) -> list[PartitionRange]:
    """What is there to read now: per partition, committed offset (or low watermark) to high watermark."""
    consumer = group_consumer(bootstrap, group)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise ServiceError("kafka", f"topic {topic!r} does not exist on {bootstrap}")
        partitions = sorted(metadata.topics[topic].partitions)
        committed = retrying_coordinator(
            lambda: consumer.committed([TopicPartition(topic, partition) for partition in partitions], timeout=timeout),
            f"committed offsets of {group}",
        )
        ranges = []
        for position in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, position.partition), timeout=timeout)
            start = position.offset if position.offset >= 0 else low
            if start > high:
                # The topic was deleted and created again under the same name: its old offsets mean nothing.
                log.warning("%s/%d: committed offset %d is past the end %d; reading from %d", topic, position.partition, start, high, low)
                start = low
            ranges.append(PartitionRange(topic, position.partition, max(start, low), high))
        return ranges
    except KafkaException as error:
        raise ServiceError("kafka", f"cannot plan reading {topic!r} from {bootstrap}: {error}") from error
    finally:
        consumer.close()


def commit_offsets(bootstrap: str, group: str, ranges: list[PartitionRange]) -> None:
    """Record that everything up to each range's end has been processed."""
    consumer = group_consumer(bootstrap, group)
    try:
        offsets = [TopicPartition(item.topic, item.partition, item.end) for item in ranges if item.end > item.start]
        if offsets:
            retrying_coordinator(lambda: consumer.commit(offsets=offsets, asynchronous=False), f"commit offsets of {group}")
            log.info("committed offsets for group %s: %s", group, {item.partition: item.offset for item in offsets})
    finally:
        consumer.close()


class _ReadPartitionRange(beam.DoFn):
    """A partition range as lists of up to `batch_size` (source, text, arrival)."""

    def __init__(self, bootstrap: str, group: str, batch_size: int = 1000) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.batch_size = batch_size
        self.messages = Metrics.counter("speed", "kafka_messages")

    def process(self, item: PartitionRange) -> Iterable[list[tuple[str, str, float]]]:
        yield from in_lists(self._messages(item), self.batch_size)

    def _messages(self, item: PartitionRange) -> Iterable[tuple[str, str, float]]:
        if item.end <= item.start:
            return
        consumer = group_consumer(self.bootstrap, self.group)
        try:
            consumer.assign([TopicPartition(item.topic, item.partition, item.start)])
            empty_polls = 0
            next_offset = item.start
            while next_offset < item.end:
                message = consumer.poll(_POLL_SECONDS)
                if message is None:
                    empty_polls += 1
                    if empty_polls >= _EMPTY_POLLS_BEFORE_GIVING_UP:
                        raise ServiceError("kafka", f"{item.topic}/{item.partition}: no message at offset {next_offset} "
                                           f"after {empty_polls} polls (expected up to {item.end})")
                    continue
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        break
                    raise ServiceError("kafka", f"{item.topic}/{item.partition}: {message.error()}")
                empty_polls = 0
                next_offset = message.offset() + 1
                if message.offset() >= item.end:
                    break
                self.messages.inc()
                value = message.value() if message.value() is not None else b""  # decoded by the validator (record.encoding)
                # The record's timestamp (producer's create time) is when the event entered the system.
                timestamp_type, timestamp_ms = message.timestamp()
                arrived_at = timestamp_ms / 1000 if timestamp_ms and timestamp_ms > 0 else time.time()
                yield f"kafka://{item.topic}/{item.partition}@{message.offset()}", value, arrived_at
        finally:
            consumer.close()


class ReadKafkaRange(beam.PTransform):
    """Lists of (source, text, arrival) of the given partition ranges; source names topic,
    partition and offset."""

    def __init__(self, bootstrap: str, group: str, ranges: list[PartitionRange], batch_size: int = 1000) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.group = group
        self.ranges = ranges
        self.batch_size = batch_size

    def expand(self, pipeline):
        return (
            pipeline
            | "PartitionRanges" >> beam.Create(self.ranges)
            | "SpreadPartitions" >> beam.Reshuffle()
            | "ReadPartitions" >> beam.ParDo(_ReadPartitionRange(self.bootstrap, self.group, self.batch_size)).with_output_types(Records)
        )
