"""The speed pipeline's graph: read (file replay, Kafka range or followed topic) -> validate ->
features -> score -> alert flags -> sinks, every step labelled. Running it is speed/pipeline.py's.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

import schemas
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from speed import kafka_stream
from speed.alerts import PublishAlerts
from speed.coding import Records
from speed.kafka_source import ReadKafkaRange
from speed.options import SpeedOptions, consumer_group, kafka_bootstrap, landing_enabled
from speed.replay_source import ReadReplay
from speed.shard_step import ScoreShard
from speed.sinks import UpsertHotScores, WriteDeadLetters, WriteLanding
from speed.stateful_features import shard_of
from speed.validate import DEAD_LETTER, ParseAndValidate

VALID = "valid"
LANDING = "landing"


def build(pipeline: beam.Pipeline, options: SpeedOptions, settings: Settings, kafka_ranges=None, *, unbounded=False) -> None:
    """Wire the pipeline: read (file replay, Kafka range or followed topic) -> ScoreEvents -> sinks.

    `unbounded`: follow the topic from `kafka_ranges`' starts, and commit offsets behind the sinks.
    """
    dataset = schemas.load(options.dataset)
    bootstrap = kafka_bootstrap(options, settings)
    gaps = None
    if unbounded:
        followed = pipeline | "FollowKafka" >> kafka_stream.FollowKafka(
            bootstrap, consumer_group(options), kafka_ranges, max_messages=options.max_batch_size
        )
        source, gaps = followed[kafka_stream.MESSAGES], followed[kafka_stream.GAPS]
    elif options.kafka_topic:
        source = pipeline | "ReadKafka" >> ReadKafkaRange(bootstrap, consumer_group(options), kafka_ranges, options.max_batch_size)
    else:
        source = pipeline | "ReadReplay" >> ReadReplay(options.input, options.max_batch_size)
    outputs = source | "ScoreEvents" >> ScoreEvents(
        dataset,
        settings,
        state_shards=options.state_shards,
        reload_seconds=options.model_reload_seconds,
        state_ttl_seconds=options.state_ttl_seconds,
    )
    streaming = pipeline.options.view_as(StandardOptions).streaming
    acks = [
        outputs[VALID]
        | "BatchForCommit" >> _CommitBatches(options, streaming)
        # Streaming: one writer gets the rows in state's order, so an event's first row is appended.
        | "UpsertHotScores" >> beam.ParDo(UpsertHotScores(dataset, settings, append_new=streaming and options.hot_appends == "auto",
                                                         compact_in_background=unbounded and options.hot_appends == "auto")),
        outputs[DEAD_LETTER]
        | "BatchDeadLetters" >> _CommitBatches(options, streaming)
        | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(settings)),
    ]
    if landing_enabled(options):
        acks.append(
            outputs[LANDING]
            | "BatchForLanding" >> _CommitBatches(options, streaming)
            | "WriteLanding" >> beam.ParDo(WriteLanding(dataset, settings))
        )
    alerts = bool(options.alerts_topic)
    if alerts:
        # An acknowledged output too: a record's offset moves only once its alerts are on the broker.
        acks.append(
            outputs[VALID]
            | "BatchForAlerts" >> _CommitBatches(options, streaming)
            | "PublishAlerts" >> beam.ParDo(PublishAlerts(dataset, bootstrap, options.alerts_topic))
        )
    if unbounded:
        (
            (*acks, gaps)
            | "AllAcks" >> beam.Flatten()
            | "CommitOffsets" >> kafka_stream.CommitOffsets(
                bootstrap, consumer_group(options), kafka_ranges, landing_enabled(options), alerts
            )
        )
    elif kafka_ranges is not None:
        # A bounded range: every offset of it must be done, by one outcome, before the driver
        # commits the range (speed/pipeline.py checks the counts against the range).
        acks | "AllAcks" >> beam.Flatten() | "AccountRanges" >> kafka_stream.AccountRanges(
            kafka_ranges, landing_enabled(options), alerts
        )


class _CommitBatches(beam.PTransform):
    """Lists of rows -> lists of rows, one Delta commit each.

    Streaming: every list of a table goes through one key, so one worker commits to each table.
    Parallel MERGEs into one unpartitioned table conflict nearly always (each may match rows in
    the files the other adds) and retry with back-off, which costs more latency than one writer.
    A commit takes the lists that arrived within `--commit_seconds` of its first one: at a high
    rate a commit grows rather than the commits falling behind.
    Bounded runs batch per bundle, up to `--commit_rows` rows, in parallel: their runners give
    one worker per stage here.
    """

    def __init__(self, options: SpeedOptions, streaming: bool) -> None:
        super().__init__()
        self.max_batch_size = options.max_batch_size
        self.commit_rows = options.commit_rows
        self.commit_seconds = options.commit_seconds
        self.streaming = streaming

    def expand(self, lists):
        if not self.streaming:
            batches = lists | "Batch" >> beam.BatchElements(
                min_batch_size=1, max_batch_size=self.commit_rows, element_size_fn=len
            ).with_output_types(list[Records])
        else:
            batches = (
                lists
                | "OneWriter" >> beam.Map(lambda rows: (0, rows)).with_output_types(tuple[int, Records])
                | "Batch" >> beam.GroupIntoBatches(self.max_batch_size, max_buffering_duration_secs=self.commit_seconds)
                | "Lists" >> beam.Map(lambda keyed: list(keyed[1])).with_output_types(list[Records])
            )
        return batches | "Rows" >> beam.Map(lambda many: [row for rows in many for row in rows]).with_output_types(Records)


def shard_batch(records: list[dict], entity: str, shards: int):
    """A batch of valid records -> (shard, its records) per state shard present (arrival order kept)."""
    by_shard: dict[int, list[dict]] = {}
    for record in records:
        by_shard.setdefault(shard_of(record[entity], shards), []).append(record)
    yield from by_shard.items()


class ScoreEvents(beam.PTransform):
    """Lists of (source, JSON text[, arrival]) -> lists of scored rows (main output) and lists of
    dead letters (tag `dead_letter`); valid records as lists too (tag `landing`)."""

    def __init__(
        self,
        dataset: Dataset,
        settings: Settings,
        *,
        state_shards: int = 8,
        reload_seconds: float = 30.0,
        state_ttl_seconds: float = 0.0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.settings = settings
        self.state_shards = state_shards
        self.reload_seconds = reload_seconds
        self.state_ttl_seconds = state_ttl_seconds

    def expand(self, batches):
        dataset = self.dataset
        parsed = batches | "ParseAndValidate" >> beam.ParDo(ParseAndValidate(dataset)).with_output_types(Records).with_outputs(
            DEAD_LETTER, main=VALID
        )
        # Features, scores and alert flags of a shard in one keyed step (speed/shard_step.py).
        scored = (
            parsed[VALID]
            | "ShardByEntity" >> beam.FlatMap(shard_batch, dataset.entity, self.state_shards).with_output_types(tuple[int, Records])
            | "ScoreShard" >> beam.ParDo(ScoreShard(dataset, self.settings, reload_seconds=self.reload_seconds,
                                                    state_ttl_seconds=self.state_ttl_seconds))
            .with_output_types(Records).with_outputs(DEAD_LETTER, main=VALID)
        )
        dead_letters = (parsed[DEAD_LETTER], scored[DEAD_LETTER]) | "AllDeadLetters" >> beam.Flatten()
        return {VALID: scored[VALID], DEAD_LETTER: dead_letters, LANDING: parsed[VALID]}
