"""Prometheus metrics of the speed layer: throughput, latency, dead letters, Kafka lag.

The transforms update these in the process that runs them. On the local runner and on Flink with
the LOOPBACK environment that is the process `lakehouse speed run` started, which serves them on
`--metrics_port` (loopback) and can write them to `--metrics_file` (Prometheus text format, for
node_exporter's textfile collector) when it ends. On Dataflow each worker is its own process: the
same numbers are Beam metrics (namespace `speed`), which Dataflow exports to Cloud Monitoring.

Latency is measured from arrival (the Kafka record's timestamp, or the moment a replay line was
read) to the hot-table commit that made the row visible, and separately from the event's own
time, which for replayed history measures the replay, not the system.
"""

from __future__ import annotations

import logging

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "lakehouse_speed_events", "Events read by the speed layer, by outcome.", ["dataset", "outcome"], registry=REGISTRY
)
HOT_ROWS = Counter(
    "lakehouse_speed_hot_rows_committed", "Rows upserted into the hot table.", ["dataset"], registry=REGISTRY
)
ANOMALIES = Counter("lakehouse_speed_anomalies", "Events scored as anomalies.", ["dataset"], registry=REGISTRY)
ALERTS = Counter("lakehouse_speed_alerts_published", "Alerts published to Kafka.", ["dataset"], registry=REGISTRY)
# Sub-10 ms buckets matter: the design target is under 100 ms of processing.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
COMMIT_LATENCY = Histogram(
    "lakehouse_speed_arrival_to_commit_seconds",
    "Seconds from an event's arrival (Kafka timestamp or replay read) to its hot-table commit.",
    ["dataset"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
SCORED_LATENCY = Histogram(
    "lakehouse_speed_arrival_to_scored_seconds",
    "Seconds from an event's arrival (Kafka timestamp or replay read) to its score, before any sink.",
    ["dataset"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVENT_TIME_LAG = Histogram(
    "lakehouse_speed_event_time_to_commit_seconds",
    "Seconds from an event's own time to its hot-table commit.",
    ["dataset"],
    buckets=_LATENCY_BUCKETS + (3600.0, 86400.0),
    registry=REGISTRY,
)
COMMIT_DURATION = Histogram(
    "lakehouse_speed_commit_seconds", "Duration of one hot-table commit.", ["dataset"], buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
KAFKA_LAG = Gauge(
    "lakehouse_speed_kafka_lag_messages",
    "Messages of a partition not yet in the hot table (end offset minus committed offset).",
    ["topic", "partition"],
    registry=REGISTRY,
)
# The accounting of a followed topic: every offset the committed frontier passes, by outcome
# (scored, dead_letter, unknown_entity, gap); per partition their sum is the committed offset
# minus where the job started, which the broker states on its own.
RECORDS_DONE = Counter(
    "lakehouse_speed_records_done",
    "Kafka records whose every output is durable (offset committed past them), by outcome.",
    ["topic", "partition", "outcome"],
    registry=REGISTRY,
)
COMMITTED_OFFSET = Gauge(
    "lakehouse_speed_committed_offset", "The consumer group's committed offset per partition.", ["topic", "partition"], registry=REGISTRY
)
STATE_EXPIRED = Counter(
    "lakehouse_speed_entity_state_expired", "Entities whose feature state expired after inactivity.", ["dataset"], registry=REGISTRY
)
ALERT_STATE_EXPIRED = Counter(
    "lakehouse_speed_alert_state_expired", "Entities whose alert-flag state expired after inactivity.", ["dataset"], registry=REGISTRY
)

# The newest arrival-to-commit latencies, exact, for benchmarks' percentiles; bounded. Each is
# (where the event was read, seconds): a benchmark keeps the samples of its own topic, whatever
# another job in the process still commits.
LATENCY_SAMPLES: deque[tuple[str, float]] = deque(maxlen=500_000)
# The same for arrival-to-scored (the scoring step, before the sinks).
SCORED_LATENCY_SAMPLES: deque[tuple[str, float]] = deque(maxlen=500_000)


# Per-stage wall-clock times of each event, for a benchmark's breakdown of the latency
# (bench/speed_bench.py --only latency): (stage, source, seconds since the epoch), recorded only
# while TRACE_STAGES is on, in the process that runs the steps (LOOPBACK: the caller's).
# Stages: arrived (the Kafka timestamp), polled, validated, featured, scored, sink_in, committed.
TRACE_STAGES = False
STAGE_TIMES: deque[tuple[str, str, float]] = deque(maxlen=2_000_000)
# Kafka offset commits: (partition key "topic/partition", first offset, end offset, time).
OFFSET_COMMITS: deque[tuple[str, int, int, float]] = deque(maxlen=200_000)


def trace(stage: str, rows, source_key: str, at: float | None = None) -> None:
    """Record `stage` at `at` (now) for each row (dict with the source under `source_key`)."""
    if not TRACE_STAGES:
        return
    import time

    at = time.time() if at is None else at
    STAGE_TIMES.extend((stage, row.get(source_key), at) for row in rows)


def samples_of(samples, topic: str) -> list[float]:
    """The latencies (seconds) of the events read from a Kafka topic."""
    prefix = f"kafka://{topic}/"
    return [latency for source, latency in list(samples) if source and source.startswith(prefix)]

_server_started: set[int] = set()


def serve(port: int) -> None:
    """Serve /metrics on 127.0.0.1:port (once per process and port)."""
    if port in _server_started:
        return
    start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    _server_started.add(port)
    log.info("speed metrics on http://127.0.0.1:%d/metrics", port)


def scrape(port: int, name: str, **labels) -> float:
    """The sum of the samples named `name` with these labels that a job serves on
    127.0.0.1:port/metrics, read with Prometheus' own text parser (tests and benchmarks)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == str(value) for key, value in labels.items())
    )


def write(path: str) -> None:
    write_to_textfile(path, REGISTRY)
