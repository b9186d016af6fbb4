"""Speed-layer benchmark: sustained events/s and arrival-to-commit latency, against scoring alone.

    python -m bench.speed_bench [--events 100000] [--rate 2000] [--seconds 30]

- Reference: the same models scoring the same feature rows in plain numpy, in batches of the
  pipeline's batch size: the limit the pipeline's own work (parse, validate, state, Delta commits)
  is measured against.
- Throughput: one bounded run over a replay file of `--events` events on the local runner, and
  the same on Flink (embedded job server, job start-up included).
- Latency: a producer sends `--rate` events/s into Kafka for `--seconds` while the pipeline reads
  the topic in back-to-back bounded ranges (the local mode of operation); latency runs from the
  Kafka record's timestamp to the hot-table commit that made the row visible.
- Latency on Flink: the same at `--follow-rate` events/s, read by one job that follows the topic
  (`--follow`, the production mode of operation).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

import schemas
from bench import report
from lakehouse import generate as generator

DATASET = "sensor_events"


def _events(sensors: int, events: int, seed: int) -> pd.DataFrame:
    days = events / sensors / 288
    return generator.generate(generator.GeneratorConfig(sensors=sensors, days=max(days, 1.0), seed=seed))


def _percentiles(samples) -> dict[str, float]:
    values = np.asarray(list(samples), dtype=float)
    if values.size == 0:
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def run(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sensors", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s sent to Kafka in the latency run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the latency run")
    parser.add_argument("--follow-rate", type=float, default=150.0, help="events/s sent to Kafka in the Flink follow run")
    parser.add_argument("--batch-size", type=int, default=1000)
    arguments = parser.parse_args(argv)

    from batch.job import run_batch
    from app.wiring import spark_session, speed_hooks
    from lakehouse import registry
    from lakehouse.features import compute_features
    from local_services.kafka import KafkaBroker
    from speed.topics import create_topic
    from lakehouse.settings import get_settings
    from speed import metrics
    from speed import pipeline as speed_pipeline
    from speed.produce import produce

    dataset = schemas.load(DATASET)
    folder = Path(tempfile.mkdtemp(prefix="lakehouse-speed-bench-"))
    settings = get_settings().model_copy(update={"warehouse": str(folder / "warehouse")})
    figures: list[dict] = []
    try:
        # History for training (two days), then the events the speed layer scores.
        history = _events(arguments.sensors, arguments.sensors * 288 * 2, seed=5)
        history_file = generator.write_json_lines(generator.to_records(history), folder / "history.jsonl")
        run_batch(DATASET, [str(history_file)], settings=settings, spark=spark_session(settings))
        stream = _events(arguments.sensors, arguments.events, seed=6)
        stream = stream[stream.event_time > history.event_time.max()].head(arguments.events)
        if len(stream) < arguments.events:
            shifted = _events(arguments.sensors, arguments.events, seed=6)
            shifted["event_time"] += history.event_time.max() - shifted.event_time.min() + pd.Timedelta(minutes=5)
            stream = shifted.head(arguments.events)
        replay = generator.write_json_lines(generator.to_records(stream), folder / "stream.jsonl")

        # Reference: numpy scoring alone, the same models and feature rows.
        models = registry.load_latest(settings, DATASET)
        matrices = []
        for entity_id, group in stream.groupby(dataset.entity):
            values = group[list(dataset.features.fields)].to_numpy(dtype=np.float64)
            times = group[dataset.event_time].to_numpy(dtype="datetime64[us]")
            matrices.append((entity_id, compute_features(dataset, values, times, np.empty((0, values.shape[1])))))
        started = time.perf_counter()
        for entity_id, matrix in matrices:
            model = models[entity_id].model
            for start in range(0, len(matrix), arguments.batch_size):
                model.score(matrix[start : start + arguments.batch_size])
        numpy_rate = len(stream) / (time.perf_counter() - started)

        # Throughput: one bounded replay on the local runner.
        started = time.perf_counter()
        result = speed_pipeline.run(
            ["--dataset", DATASET, "--input", str(replay), "--max_batch_size", str(arguments.batch_size)], settings=settings
        )
        elapsed = time.perf_counter() - started
        pipeline_rate = result.scored / elapsed
        figures.append({"name": "local runner: events scored and committed per second", "value": pipeline_rate,
                        "unit": "events/s", "reference": "numpy scoring alone", "reference_value": numpy_rate,
                        "ratio": pipeline_rate / numpy_rate})
        figures.append({"name": "local runner: target 10,000 events/s", "value": pipeline_rate, "unit": "events/s",
                        "reference": "design target", "reference_value": 10_000.0, "ratio": pipeline_rate / 10_000.0})

        # The same replay on Flink (embedded, streaming mode, two workers), job start-up included.
        shutil.rmtree(settings.table_uri(DATASET, "hot_scores"), ignore_errors=True)
        from local_services.flink import FlinkJobServer

        flink = FlinkJobServer(settings)
        started_flink = flink.pid() is None
        flink.start()
        try:
            started = time.perf_counter()
            on_flink = speed_pipeline.run(
                ["--dataset", DATASET, "--input", str(replay), "--max_batch_size", str(arguments.batch_size), "--runner", "FlinkRunner"],
                settings=settings, hooks=speed_hooks(settings),
            )
            flink_rate = on_flink.scored / (time.perf_counter() - started)
        finally:
            if started_flink:
                flink.stop()
        figures.append({"name": "Flink runner: events scored and committed per second", "value": flink_rate,
                        "unit": "events/s", "reference": "numpy scoring alone", "reference_value": numpy_rate,
                        "ratio": flink_rate / numpy_rate})

        # Latency: Kafka at a steady rate, read in back-to-back bounded ranges.
        broker = KafkaBroker(settings)
        started_broker = broker.pid() is None
        broker.start()
        try:
            topic = f"bench-{uuid.uuid4().hex[:8]}"
            create_topic(topic, partitions=2, settings=settings)
            live = stream.copy()
            live_count = int(arguments.rate * arguments.seconds)
            live = pd.concat([live] * (live_count // len(live) + 1)).head(live_count).reset_index(drop=True)
            live["event_id"] = [uuid.uuid4().hex for _ in range(len(live))]
            live_file = generator.write_json_lines(generator.to_records(live), folder / "live.jsonl")
            metrics.LATENCY_SAMPLES.clear()
            sender = threading.Thread(
                target=produce, args=(dataset, [live_file], topic), kwargs={"rate": arguments.rate, "settings": settings}
            )
            sender.start()
            scored, runs = 0, 0
            deadline = time.monotonic() + arguments.seconds + 120
            while (sender.is_alive() or scored < live_count) and time.monotonic() < deadline:
                scored += speed_pipeline.run(
                    ["--dataset", DATASET, "--kafka_topic", topic, "--landing", "off", "--max_batch_size", str(arguments.batch_size)],
                    settings=settings,
                ).scored
                runs += 1
            sender.join()
            latency = _percentiles(metrics.LATENCY_SAMPLES)
            for name in ("p50", "p99"):
                figures.append({"name": f"local runner on Kafka at {arguments.rate:,.0f} events/s: arrival-to-commit {name}",
                                "value": latency[name] * 1000, "unit": "ms", "reference": "design target",
                                "reference_value": 100.0, "ratio": latency[name] * 1000 / 100.0})
            figures.append({"name": "local runner on Kafka: bounded ranges read", "value": float(runs), "unit": "runs"})
            figures += _follow_on_flink(settings, dataset, stream, arguments, folder)
        finally:
            if started_broker:
                broker.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report.write("speed", figures, {"events": arguments.events, "sensors": arguments.sensors, "rate": arguments.rate,
                                     "seconds": arguments.seconds, "batch_size": arguments.batch_size})
    return figures


def _follow_on_flink(settings, dataset, stream: pd.DataFrame, arguments, folder: Path) -> list[dict]:
    """Arrival-to-commit latency of one Flink job following a topic fed at a steady rate."""
    from app.wiring import speed_hooks
    from local_services.flink import FlinkJobServer
    from speed.topics import create_topic
    from speed import metrics
    from speed import pipeline as speed_pipeline
    from speed.produce import produce

    count = min(len(stream), int(arguments.follow_rate * arguments.seconds))
    live = stream.head(count).copy()
    live["event_id"] = [uuid.uuid4().hex for _ in range(len(live))]
    live_file = generator.write_json_lines(generator.to_records(live), folder / "follow.jsonl")
    topic = f"bench-follow-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions=2, settings=settings)
    shutil.rmtree(settings.table_uri(DATASET, "hot_scores"), ignore_errors=True)
    flink = FlinkJobServer(settings)
    started_flink = flink.pid() is None
    flink.start()
    try:
        job = speed_pipeline.follow(
            ["--dataset", DATASET, "--kafka_topic", topic, "--landing", "off", "--runner", "FlinkRunner"],
            settings=settings, hooks=speed_hooks(settings),
        )
        try:
            time.sleep(10)  # job start-up, not latency
            metrics.LATENCY_SAMPLES.clear()
            started = time.perf_counter()
            produce(dataset, [live_file], topic, rate=arguments.follow_rate, settings=settings)
            sent_in = time.perf_counter() - started
            deadline = time.monotonic() + 120
            while len(metrics.LATENCY_SAMPLES) < count and time.monotonic() < deadline:
                time.sleep(0.2)
            drained_in = time.perf_counter() - started
            latency = _percentiles(metrics.LATENCY_SAMPLES)
            committed = len(metrics.LATENCY_SAMPLES)
        finally:
            job.cancel()
    finally:
        if started_flink:
            flink.stop()
    rate = arguments.follow_rate
    figures = [
        {"name": f"Flink following Kafka at {rate:,.0f} events/s: arrival-to-commit {name}", "value": latency[name] * 1000,
         "unit": "ms", "reference": "design target", "reference_value": 100.0, "ratio": latency[name] * 1000 / 100.0}
        for name in ("p50", "p99")
    ]
    figures.append({"name": f"Flink following Kafka: events committed per second ({committed} of {count})",
                    "value": committed / max(drained_in, sent_in), "unit": "events/s", "reference": "rate sent",
                    "reference_value": count / sent_in, "ratio": committed / max(drained_in, sent_in) / (count / sent_in)})
    return figures


if __name__ == "__main__":
    from lakehouse import logs
    from lakehouse.settings import get_settings

    logs.configure(cache_dir=get_settings().cache_dir)
    run()
