"""The speed-layer pipeline: events -> validate -> features -> score -> hot Delta table.

Run it as `lakehouse speed run`, or directly with any Beam runner's options:
    python -m speed.pipeline --dataset sensor_events --input 'replay/*.jsonl' --runner DirectRunner

Sources: a file replay (JSON lines), or a Kafka topic. Kafka is read up to its current end, with
the consumer group's offsets committed after the hot table has every row (speed/kafka_source.py),
or, with --follow, without end: on a streaming runner (Flink, Dataflow) by an unbounded reader
whose offsets are committed behind the sinks (speed/kafka_stream.py); on the in-process runner,
which cannot run an unbounded source through a shuffle, by one bounded range after the other.

This module runs the pipeline (once, in micro-batches or unbounded); its graph is wired in
speed/graph.py and its flags are declared in speed/options.py.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import astuple, dataclass, replace

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
)

import schemas
from lakehouse import system_tables
from lakehouse.errors import ConfigurationError, CountMismatchError
from lakehouse.settings import Settings, get_settings
from speed import acks, metrics, tables, topics
from speed.graph import build
from speed.kafka_source import commit_offsets, plan_ranges
from speed.kafka_stream import outcome_counter
from speed.options import SpeedOptions, consumer_group, kafka_bootstrap, landing_enabled

log = logging.getLogger(__name__)

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclass(frozen=True)
class Hooks:
    """What the composition root adds around a run; the speed layer knows neither serving nor the
    local services.

    tables_ready(dataset): called once the run's tables exist, before the job starts (the root
    registers them in Trino so a first run's hot table is queryable at once).
    flink_job_server(): starts a Flink job server for `--runner FlinkRunner` without
    `--flink_master`/`--job_endpoint`, and returns its job endpoint (host:port).
    """

    tables_ready: Callable[[str], None] | None = None
    flink_job_server: Callable[[], str] | None = None


NO_HOOKS = Hooks()


@dataclass(frozen=True)
class SpeedResult:
    """A run's counts. Reading Kafka: `read` is the messages in the ranges read (offsets, as the
    broker states them), checked to equal `scored` + `dead_letters` (unknown entities included)
    + `gaps` partition by partition before any offset is committed (see _check_accounting)."""

    scored: int
    dead_letters: int
    committed: int
    anomalies: int
    unknown_entity: int
    read: int = 0
    gaps: int = 0


def _use_flink_job_server(options: PipelineOptions, hooks: Hooks) -> None:
    """FlinkRunner without a cluster: submit to the job server the composition root starts.

    Beam's own FlinkRunner would fetch a job-server jar of its version at submit time, which this
    machine's Maven mirror lacks (see local_services/flink.py). With --flink_master naming a
    real cluster, or --job_endpoint, the options are left to Beam.
    """
    portable = options.view_as(PortableOptions)
    if portable.job_endpoint or options.view_as(FlinkRunnerOptions).flink_master not in (None, "[auto]", "[local]"):
        return
    if hooks.flink_job_server is None:
        raise ConfigurationError(
            "--runner FlinkRunner needs --flink_master=HOST:PORT or --job_endpoint=HOST:PORT here "
            "(`lakehouse speed run` starts a local Flink job server itself)"
        )
    endpoint = hooks.flink_job_server()
    options.view_as(StandardOptions).runner = "PortableRunner"
    portable.job_endpoint = endpoint
    # The Python workers run in this process: no Docker, and the Prometheus metrics are local.
    portable.environment_type = portable.environment_type or "LOOPBACK"
    log.info("speed: submitting to the Flink job server on %s", endpoint)


def _record_lag(ranges) -> None:
    for item in ranges:
        metrics.KAFKA_LAG.labels(item.topic, str(item.partition)).set(max(0, item.end - item.start))


def _counter(result, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_namespace("speed").with_name(name))["counters"]
    return int(sum(counter.committed or counter.attempted or 0 for counter in counters))


def run(argv: list[str] | None = None, *, settings: Settings | None = None, hooks: Hooks = NO_HOOKS) -> SpeedResult:
    """Entry point: builds and runs the pipeline and returns its counts.

    A replay or a Kafka range runs to its end. `--follow` runs until Ctrl-C or SIGTERM, which
    cancel the job (on Flink) or stop after the current micro-batch (in-process runner).
    Without `settings` (as `python -m speed.pipeline`), they come from the environment.
    """
    settings = settings or get_settings()
    options, unbounded = _configure(argv, settings, hooks)
    speed_options = options.view_as(SpeedOptions)
    _prepare(speed_options, settings)
    if hooks.tables_ready is not None:
        hooks.tables_ready(speed_options.dataset)
    with _stop_on_sigterm():
        if unbounded:
            counts = _run_unbounded(options, settings)
        elif speed_options.follow:
            counts = _run_micro_batches(options, settings)
        else:
            counts = _run_once(options, settings)
    if speed_options.metrics_file:
        metrics.write(speed_options.metrics_file)
    log.info("speed run finished: %s", counts)
    return counts


def _configure(argv: list[str] | None, settings: Settings, hooks: Hooks) -> tuple[PipelineOptions, bool]:
    """The pipeline options as given, completed for this machine; and whether the job is unbounded."""
    argv = list(argv or [])
    if any(argument in ("--follow", "--follow=true") for argument in argv) and not any(argument.startswith("--max_bundle_time_mills") for argument in argv):
        # Flink closes a bundle after 1 s by default, a floor under the latency; a tenth of it
        # costs some throughput. Other runners ignore the flag.
        argv.append("--max_bundle_time_mills=100")
    options = PipelineOptions(argv)
    speed_options = options.view_as(SpeedOptions)
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner") and not standard.streaming:
        # Beam 2.77's DirectRunner first downloads the Prism binary (impossible offline) and then
        # falls back to its in-process FnApiRunner; go to that engine directly.
        standard.runner = LOCAL_RUNNER
    options.view_as(SetupOptions).save_main_session = False
    if speed_options.follow and not speed_options.kafka_topic:
        raise ConfigurationError("--follow needs a Kafka source (--kafka_topic)")
    unbounded = speed_options.follow and standard.runner != LOCAL_RUNNER
    if standard.runner == "FlinkRunner":
        # Flink's batch translation groups each key's events in no particular order, further out
        # of order than per-entity state can repair; its streaming mode keeps each reader's order.
        standard.streaming = True
        _use_flink_job_server(options, hooks)
    if unbounded:
        standard.streaming = True
    else:
        # A bounded source: its state ends with the job, and a pending processing-time timer
        # would keep a streaming job open until it fires (a batch runner fires it at the end,
        # where the shard's timer would set itself again).
        speed_options.state_ttl_seconds = 0.0
    if not speed_options.dataset:
        raise ConfigurationError("speed pipeline needs --dataset")
    if bool(speed_options.input) == bool(speed_options.kafka_topic):
        raise ConfigurationError("speed pipeline needs exactly one source: --input or --kafka_topic")
    return options, unbounded


def follow(argv: list[str], *, settings: Settings, hooks: Hooks = NO_HOOKS):
    """Start an unbounded job (`--follow` on a streaming runner) and return its PipelineResult at
    once, for callers that drive it themselves (the benchmark); `result.cancel()` stops it."""
    options, unbounded = _configure([*argv, "--follow"], settings, hooks)
    if not unbounded:
        raise ConfigurationError("follow() needs a streaming runner, e.g. --runner FlinkRunner")
    _prepare(options.view_as(SpeedOptions), settings)
    return start_following(options, settings)


def _prepare(options: SpeedOptions, settings: Settings) -> None:
    dataset = schemas.load(options.dataset)
    # Created here, once, so that parallel workers never race to create a table.
    tables.ensure_table(tables.hot_table_uri(settings, dataset), system_tables.hot_scores_schema(dataset))
    tables.ensure_table(tables.quarantine_uri(settings), system_tables.QUARANTINE_SCHEMA)
    if landing_enabled(options):
        tables.ensure_table(tables.landing_uri(settings, dataset), tables.landing_schema(dataset))
    if options.alerts_topic:
        topics.create_topic(options.alerts_topic, settings=settings)
    if options.metrics_port:
        metrics.serve(options.metrics_port)


def _plan(options: SpeedOptions, settings: Settings):
    ranges = plan_ranges(kafka_bootstrap(options, settings), options.kafka_topic, consumer_group(options))
    log.info("reading %s: %s", options.kafka_topic, [(r.partition, r.start, r.end) for r in ranges])
    _record_lag(ranges)
    return ranges


def _run_once(options: PipelineOptions, settings: Settings) -> SpeedResult:
    speed_options = options.view_as(SpeedOptions)
    kafka_ranges = _plan(speed_options, settings) if speed_options.kafka_topic else None
    pipeline = beam.Pipeline(options=options)
    build(pipeline, speed_options, settings, kafka_ranges)
    result = pipeline.run()
    result.wait_until_finish()
    counts = _counts(result)
    if kafka_ranges:
        counts = _check_accounting(result, counts, kafka_ranges)
        # Only now is every row of the range in the hot table: a crash before this re-reads it.
        commit_offsets(kafka_bootstrap(speed_options, settings), consumer_group(speed_options), kafka_ranges)
        _record_lag(plan_ranges(kafka_bootstrap(speed_options, settings), speed_options.kafka_topic, consumer_group(speed_options)))
    return counts


def _check_accounting(result, counts: SpeedResult, ranges) -> SpeedResult:
    """Per partition range: offsets in the range (the broker's count) = records scored + dead
    letters + unknown entities + gaps, each counted where its outputs were acknowledged durable
    (speed/kafka_stream.AccountRanges). A mismatch fails the run before its offsets are committed,
    so the range is read again."""
    totals = dict.fromkeys(acks.OUTCOMES, 0)
    mismatched = []
    for item in ranges:
        found = {outcome: _counter(result, outcome_counter(item.topic, item.partition, outcome)) for outcome in acks.OUTCOMES}
        for outcome, count in found.items():
            totals[outcome] += count
        expected = max(0, item.end - item.start)
        if sum(found.values()) != expected:
            mismatched.append(f"{item.topic}/{item.partition} offsets {item.start}..{item.end}: {expected} records, done {found}")
    if mismatched:
        raise CountMismatchError("speed layer: records read differ from what reached the sinks: " + "; ".join(mismatched))
    read = sum(max(0, item.end - item.start) for item in ranges)
    log.info("speed: %d records in the ranges read: %s", read, totals)
    return replace(counts, read=read, gaps=totals[acks.OUTCOME_GAP])


def _run_micro_batches(options: PipelineOptions, settings: Settings) -> SpeedResult:
    """--follow on the in-process runner: one bounded range after the other until stopped."""
    speed_options = options.view_as(SpeedOptions)
    total = SpeedResult(0, 0, 0, 0, 0, 0, 0)
    try:
        while True:
            counts = _run_once(options, settings)
            total = SpeedResult(*(a + b for a, b in zip(astuple(total), astuple(counts))))
            if counts.scored + counts.dead_letters == 0:
                time.sleep(speed_options.poll_seconds)
    except KeyboardInterrupt:
        log.info("speed: stopped following %s", speed_options.kafka_topic)
    return total


def _run_unbounded(options: PipelineOptions, settings: Settings) -> SpeedResult:
    """--follow on a streaming runner: one job that runs until it is cancelled."""
    result = start_following(options, settings)
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        log.info("speed: cancelling the job following %s", options.view_as(SpeedOptions).kafka_topic)
        result.cancel()
    try:
        return _counts(result)
    except Exception as error:  # a cancelled portable job may not report its metrics
        log.info("speed: no job metrics after cancel (%s); see the Prometheus metrics", error)
        return SpeedResult(0, 0, 0, 0, 0)


def start_following(options: PipelineOptions, settings: Settings):
    """Submit the unbounded job (options prepared by run()) and return its PipelineResult at once;
    `result.cancel()` stops it. The benchmark drives it this way."""
    speed_options = options.view_as(SpeedOptions)
    starts = _plan(speed_options, settings)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, speed_options, settings, starts, unbounded=True)
    result = pipeline.run()
    log.info("speed: following %s from offsets %s", speed_options.kafka_topic, {r.partition: r.start for r in starts})
    return result


@contextmanager
def _stop_on_sigterm():
    """SIGTERM (a scheduler or service manager stopping the job) stops it as Ctrl-C does."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals to the caller
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _counts(result) -> SpeedResult:
    return SpeedResult(
        scored=_counter(result, "scored"),
        dead_letters=_counter(result, "dead_letters") + _counter(result, "unknown_entity"),
        committed=_counter(result, "hot_rows_committed"),
        anomalies=_counter(result, "anomalies"),
        unknown_entity=_counter(result, "unknown_entity"),
    )


if __name__ == "__main__":
    from lakehouse import logs, process

    logs.configure(cache_dir=get_settings().cache_dir)
    process.run_then_exit(lambda: print(run(sys.argv[1:])))
