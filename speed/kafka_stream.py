"""Following a Kafka topic without end, with offsets committed only behind what the sinks hold.

`FollowKafka` is an unbounded splittable DoFn over confluent-kafka: one restriction per
partition, from the consumer group's committed offset to infinity. Each call reads what the broker
has (at most `max_messages`, waiting at most `poll_seconds`), claims the offsets, and hands the rest
of the partition back to the runner (`defer_remainder`), so the runner can checkpoint it, and
downstream work runs in between. Beam's cross-language KafkaIO would be the usual choice; its
expansion service for this SDK is not on the Maven mirror here (see speed/kafka_source.py).

A runner that executes it continuously is needed: Flink (streaming) and Dataflow do. Beam's
in-process FnApiRunner runs the reader but never the stages after a shuffle while the reader has
more to do, so on that runner `--follow` reads in micro-batches instead (speed/pipeline.py).

Exactly once into the tables, after a crash too: the group offset of a partition advances to N
only when every output of every record before N is durable. Each sink yields (source, kind) per
row after its commit (speed/acks.py); `CommitOffsets` keeps, per partition, the offsets
acknowledged beyond the committed frontier and moves the frontier over the contiguous run. A
record is done when it was dead-lettered, or landed (when landing is on) and each of its scored
outputs (its own row, and the rows a late record revised) upserted into the hot table and through
the alerts sink, or dead-lettered for an unknown entity. A killed pipeline restarts from the
frontier; the records after it are read again, the upserts by event id absorb them, and their
alerts carry the same `alert_id`. Offsets with no record (transaction markers, compacted-away
records) are acknowledged by the reader itself.

Accounting: each offset the frontier passes is counted once by its outcome (scored, dead letter,
unknown entity, gap) per partition, as Prometheus counters and Beam metrics; their sum per
partition equals the committed offset minus the start, which Kafka states independently.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import WalltimeWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration
from confluent_kafka import KafkaError, TopicPartition

from lakehouse.errors import ServiceError
from speed import acks, kafka_source, metrics
from speed.coding import Records
from speed.kafka_source import PartitionRange, retrying_coordinator

log = logging.getLogger(__name__)

MESSAGES = "messages"
GAPS = "gaps"
ACK_GAP = acks.GAP
# Offsets run to 2**63 - 1 in Kafka: the restriction of a followed partition never ends.
_END_OF_TIME = 2**63 - 1


def source_of(topic: str, partition: int, offset: int) -> str:
    return f"kafka://{topic}/{partition}@{offset}"


def parse_source(source: str) -> tuple[str, int] | None:
    """("topic/partition", offset) of a Kafka source, None for any other source."""
    if not source.startswith("kafka://"):
        return None
    partition_key, _, offset = source[len("kafka://") :].rpartition("@")
    return partition_key, int(offset)


class _PartitionRestrictions(RestrictionProvider):
    def initial_restriction(self, item: PartitionRange) -> OffsetRange:
        return OffsetRange(item.start, _END_OF_TIME)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, item: PartitionRange, restriction: OffsetRange) -> int:
        # The backlog is unknown without a broker call; one unit keeps partitions equal.
        return 1

    def truncate(self, item: PartitionRange, restriction: OffsetRange) -> None:
        # A drained pipeline stops reading; the group offset says where to go on.
        return None


class _FollowPartition(beam.DoFn):
    def __init__(self, bootstrap: str, group: str, max_messages: int, poll_seconds: float) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.max_messages = max_messages
        self.poll_seconds = poll_seconds
        self.messages = Metrics.counter("speed", "kafka_messages")

    def setup(self) -> None:
        # One consumer per partition this worker reads, kept across calls: a call is one poll.
        self.consumers: dict[tuple[str, int], tuple[object, int]] = {}

    def teardown(self) -> None:
        for consumer, _ in getattr(self, "consumers", {}).values():
            consumer.close()

    def _consumer_at(self, item: PartitionRange, offset: int):
        key = (item.topic, item.partition)
        consumer, position = self.consumers.get(key, (None, None))
        if consumer is None:
            # The broker answers a fetch as soon as it has data, or after 20 ms without: the read
            # side of the latency budget. No end-of-partition events: a followed partition has none.
            consumer = kafka_source.group_consumer(
                self.bootstrap, self.group, {"fetch.wait.max.ms": 20, "enable.partition.eof": False}
            )
        if position != offset:
            # New, or the runner resumed the restriction elsewhere than this consumer stands.
            consumer.assign([TopicPartition(item.topic, item.partition, offset)])
        return consumer

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        item: PartitionRange,
        tracker=beam.DoFn.RestrictionParam(_PartitionRestrictions()),
        watermark=beam.DoFn.WatermarkEstimatorParam(WalltimeWatermarkEstimator.default_provider()),
    ) -> Iterable:
        position = tracker.current_restriction().start
        consumer = self._consumer_at(item, position)
        batch = consumer.consume(num_messages=self.max_messages, timeout=self.poll_seconds)
        partition_key = f"{item.topic}/{item.partition}"
        # One element per poll: the messages as a list (and the offsets without a record as
        # another), since each element costs the runner more than parsing a message.
        messages, gaps = [], []
        stopped = False
        for message in batch:
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise ServiceError("kafka", f"{partition_key}: {message.error()}")
            offset = message.offset()
            if offset < position:
                continue
            if not tracker.try_claim(offset):
                stopped = True
                break
            gaps += [(source_of(item.topic, item.partition, skipped), ACK_GAP) for skipped in range(position, offset)]
            position = offset + 1
            _, timestamp_ms = message.timestamp()
            arrived_at = timestamp_ms / 1000 if timestamp_ms and timestamp_ms > 0 else time.time()
            value = message.value() if message.value() is not None else b""  # decoded by the validator (record.encoding)
            messages.append((source_of(item.topic, item.partition, offset), value, arrived_at))
        if gaps:
            yield beam.pvalue.TaggedOutput(GAPS, gaps)
        if messages:
            if metrics.TRACE_STAGES:
                polled = time.time()
                metrics.STAGE_TIMES.extend(("arrived", source, arrived) for source, _, arrived in messages)
                metrics.STAGE_TIMES.extend(("polled", source, polled) for source, _, _ in messages)
            self.messages.inc(len(messages))
            yield TimestampedValue(messages, messages[0][2])
        if stopped:
            self.consumers.pop((item.topic, item.partition), None)
            consumer.close()
            return
        self.consumers[(item.topic, item.partition)] = (consumer, position)
        _, high = consumer.get_watermark_offsets(_topic_partition(item), cached=True)
        if high is not None and high >= 0:
            metrics.KAFKA_LAG.labels(item.topic, str(item.partition)).set(max(0, high - position))
        # The rest of the partition goes back to the runner; an empty poll already waited.
        tracker.defer_remainder(Duration.of(0))


def _topic_partition(item: PartitionRange):
    return TopicPartition(item.topic, item.partition)


class FollowKafka(beam.PTransform):
    """Unbounded lists of (source, text, arrival), one per poll of a partition, plus lists of gap
    acknowledgements (tag `gaps`)."""

    def __init__(self, bootstrap: str, group: str, starts: list[PartitionRange], *, max_messages: int = 1000,
                 poll_seconds: float = 0.05) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.group = group
        self.starts = starts
        self.max_messages = max_messages
        self.poll_seconds = poll_seconds

    def expand(self, pipeline):
        return (
            pipeline
            | "Partitions" >> beam.Create(self.starts)
            | "FollowPartitions" >> beam.ParDo(
                _FollowPartition(self.bootstrap, self.group, self.max_messages, self.poll_seconds)
            ).with_output_types(Records).with_outputs(GAPS, main=MESSAGES)
        )


def advance(next_offset: int, pending: dict[int, frozenset], received: Iterable[tuple[int, str]], *, lands: bool,
            alerts: bool = False):
    """The new frontier, the pending acknowledgements and the outcomes (outcome -> records) of the
    offsets passed, after `received` (offset, kind) of one partition."""
    pending = dict(pending)
    for offset, kind in received:
        if offset >= next_offset:
            pending[offset] = pending.get(offset, frozenset()) | {kind}
    outcomes: dict[str, int] = {}
    while next_offset in pending and acks.is_done(pending[next_offset], lands=lands, alerts=alerts):
        kinds = pending.pop(next_offset)
        if acks.conflicting(kinds):
            raise ServiceError("speed", f"offset {next_offset} acknowledged as a dead letter and as more: {sorted(kinds)}")
        outcome = acks.outcome(kinds)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        next_offset += 1
    return next_offset, pending, outcomes


class _CommitFrontier(beam.DoFn):
    FRONTIER = ReadModifyWriteStateSpec("frontier", PickleCoder())

    def __init__(self, bootstrap: str, group: str, starts: dict[str, int], lands: bool, alerts: bool) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.starts = starts
        self.lands = lands
        self.alerts = alerts
        self.commits = Metrics.counter("speed", "kafka_offset_commits")

    def setup(self) -> None:
        self.consumer = kafka_source.group_consumer(self.bootstrap, self.group)

    def teardown(self) -> None:
        if getattr(self, "consumer", None) is not None:
            self.consumer.close()

    def process(self, element: tuple[str, list[list[tuple[int, str]]]], frontier=beam.DoFn.StateParam(FRONTIER)) -> None:
        partition_key, lists = element
        received = [ack for acks_of_commit in lists for ack in acks_of_commit]
        state = frontier.read()
        next_offset, pending = state if state is not None else (self.starts[partition_key], {})
        advanced, pending, outcomes = advance(next_offset, pending, received, lands=self.lands, alerts=self.alerts)
        frontier.write((advanced, pending))
        if advanced > next_offset:
            topic, _, partition = partition_key.rpartition("/")
            count_outcomes(topic, partition, outcomes)
            metrics.COMMITTED_OFFSET.labels(topic, partition).set(advanced)
            offsets = [TopicPartition(topic, int(partition), advanced)]
            retrying_coordinator(lambda: self.consumer.commit(offsets=offsets, asynchronous=False), f"commit offsets of {self.group}")
            if metrics.TRACE_STAGES:
                metrics.OFFSET_COMMITS.append((partition_key, next_offset, advanced, time.time()))
            self.commits.inc()
            log.debug("%s: committed offset %d for group %s (%d acknowledged beyond)", partition_key, advanced, self.group, len(pending))


class CommitOffsets(beam.PTransform):
    """Commits each partition's offsets for the group as far as every record before is in its sinks."""

    def __init__(self, bootstrap: str, group: str, starts: list[PartitionRange], lands: bool, alerts: bool = False,
                 flush_seconds: float = 0.5) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.group = group
        self.starts = {f"{item.topic}/{item.partition}": item.start for item in starts}
        self.lands = lands
        self.alerts = alerts
        self.flush_seconds = flush_seconds

    def expand(self, acks):
        return (
            acks
            | "KafkaOnly" >> beam.FlatMap(_keyed_acks).with_output_types(tuple[str, Records])
            # One state update and at most one broker commit per partition per flush.
            | "GroupAcks" >> beam.GroupIntoBatches(100_000, max_buffering_duration_secs=self.flush_seconds)
            | "CommitFrontier" >> beam.ParDo(_CommitFrontier(self.bootstrap, self.group, self.starts, self.lands, self.alerts))
        )


def _keyed_acks(acknowledgements: list[tuple[str, str]]):
    """A commit's acknowledgements of Kafka records, one list per partition: (offset, kind)."""
    by_partition: dict[str, list[tuple[int, str]]] = {}
    for source, kind in acknowledgements:
        parsed = parse_source(source)
        if parsed is not None:
            partition_key, offset = parsed
            by_partition.setdefault(partition_key, []).append((offset, kind))
    yield from by_partition.items()


def count_outcomes(topic: str, partition: str, outcomes: dict[str, int]) -> None:
    """Records done in a partition, by outcome: Prometheus counters and Beam metrics
    (`records_<outcome>/<topic>/<partition>`)."""
    for outcome, count in outcomes.items():
        metrics.RECORDS_DONE.labels(topic, partition, outcome).inc(count)
        Metrics.counter("speed", outcome_counter(topic, partition, outcome)).inc(count)


def outcome_counter(topic: str, partition, outcome: str) -> str:
    return f"records_{outcome}/{topic}/{partition}"


class AccountRanges(beam.PTransform):
    """Bounded Kafka ranges: counts, per partition, the offsets from the range's start whose every
    output is durable, by outcome (Beam metrics `records_<outcome>/<topic>/<partition>`)."""

    def __init__(self, ranges: list[PartitionRange], lands: bool, alerts: bool) -> None:
        super().__init__()
        self.starts = {f"{item.topic}/{item.partition}": item.start for item in ranges}
        self.lands = lands
        self.alerts = alerts

    def expand(self, received):
        starts, lands, alerts = self.starts, self.lands, self.alerts

        def account(element) -> None:
            partition_key, lists = element
            offsets = [ack for acks_of_commit in lists for ack in acks_of_commit]
            _, pending, outcomes = advance(starts[partition_key], {}, offsets, lands=lands, alerts=alerts)
            topic, _, partition = partition_key.rpartition("/")
            count_outcomes(topic, partition, outcomes)
            if pending:
                log.error("%s: %d offsets not done after the run, from %d", partition_key, len(pending), min(pending))

        return (
            received
            | "KafkaOnly" >> beam.FlatMap(_keyed_acks).with_output_types(tuple[str, Records])
            | "ByPartition" >> beam.GroupByKey()
            | "Account" >> beam.Map(account)
        )
