"""The speed-layer pipeline: events -> validate -> features -> score -> hot Delta table.

Run it as `lakehouse speed run`, or directly with any Beam runner's options:
    python -m speed.pipeline --dataset sensor_events --input 'replay/*.jsonl' --runner DirectRunner

This session's source is a file replay (JSON lines); the Kafka source is the speed-layer issue's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

import schemas
from lakehouse.errors import ConfigurationError
from lakehouse.settings import Settings, get_settings
from speed import tables
from speed.transforms import DEAD_LETTER, VALID, ScoreEvents, UpsertHotScores, WriteDeadLetters

log = logging.getLogger(__name__)

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


class SpeedOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # Not `required`: Beam parses every registered options class for any pipeline, so a
        # required flag here would break unrelated pipelines; run() checks them instead.
        parser.add_argument("--dataset", help="dataset declared in schemas/")
        parser.add_argument("--input", help="JSON-lines file or glob to replay")
        parser.add_argument("--max_batch_size", type=int, default=1000, help="events per scoring batch and per Delta commit")
        parser.add_argument("--model_reload_seconds", type=float, default=30.0, help="how often to look for new models")


@dataclass(frozen=True)
class SpeedResult:
    scored: int
    dead_letters: int
    committed: int
    anomalies: int
    unknown_entity: int


def build(pipeline: beam.Pipeline, options: SpeedOptions, settings: Settings) -> None:
    """Wire the pipeline: read -> ScoreEvents -> hot table and quarantine."""
    dataset = schemas.load(options.dataset)
    outputs = (
        pipeline
        | "ReadReplay" >> beam.io.ReadFromTextWithFilename(options.input)
        | "ScoreEvents" >> ScoreEvents(dataset, settings, max_batch_size=options.max_batch_size, reload_seconds=options.model_reload_seconds)
    )
    (
        outputs[VALID]
        | "BatchForCommit" >> beam.BatchElements(min_batch_size=1, max_batch_size=options.max_batch_size)
        | "UpsertHotScores" >> beam.ParDo(UpsertHotScores(dataset, settings))
    )
    (
        outputs[DEAD_LETTER]
        | "BatchDeadLetters" >> beam.BatchElements(min_batch_size=1, max_batch_size=options.max_batch_size)
        | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(settings))
    )


def _counter(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    counters = result.metrics().query(MetricsFilter().with_namespace("speed").with_name(name))["counters"]
    return int(sum(counter.committed or counter.attempted or 0 for counter in counters))


def run(argv: list[str] | None = None, *, settings: Settings | None = None) -> SpeedResult:
    """Entry point: builds and runs the pipeline, waits for it (bounded replay) and returns its counts."""
    settings = settings or get_settings()
    options = PipelineOptions(argv or [])
    speed_options = options.view_as(SpeedOptions)
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner") and not standard.streaming:
        # Beam 2.77's DirectRunner first downloads the Prism binary (impossible offline) and then
        # falls back to its in-process FnApiRunner; go to that engine directly.
        standard.runner = LOCAL_RUNNER
    options.view_as(SetupOptions).save_main_session = False
    missing = [flag for flag in ("dataset", "input") if not getattr(speed_options, flag)]
    if missing:
        raise ConfigurationError(f"speed pipeline needs {', '.join('--' + flag for flag in missing)}")
    dataset = schemas.load(speed_options.dataset)
    # Created here, once, so that parallel workers never race to create a table.
    tables.ensure_table(tables.hot_table_uri(settings, dataset), tables.hot_schema(dataset))
    tables.ensure_table(tables.quarantine_uri(settings), tables.QUARANTINE_SCHEMA)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, speed_options, settings)
    result = pipeline.run()
    result.wait_until_finish()
    counts = SpeedResult(
        scored=_counter(result, "scored"),
        dead_letters=_counter(result, "dead_letters") + _counter(result, "unknown_entity"),
        committed=_counter(result, "hot_rows_committed"),
        anomalies=_counter(result, "anomalies"),
        unknown_entity=_counter(result, "unknown_entity"),
    )
    log.info("speed run finished: %s", counts)
    return counts


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run())
