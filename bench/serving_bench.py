"""Serving-layer benchmark: the cost of the merged view, and freshness from Kafka to Trino.

    python -m bench.serving_bench [--sensors 20] [--days 14] [--events 20] [--repeat 5]

- Merge cost: the same queries on the merged view and on the batch view table alone (the
  reference), median of `--repeat` runs each, after one warm-up: a full aggregate, one entity's
  last day, and a point lookup by event id. The ratio is what the boundary and the union add.
  And the alerts view's last day against the anomalies view's (the window function's cost).
- Freshness: one Flink job follows the events topic (the production mode); `--events` events are
  sent one at a time, and each is timed from the send to the moment Trino's merged view returns
  it (polled every 50 ms through HTTPS as the analyst).

Everything runs in a temporary warehouse with its own Trino (own ports and folders), next to any
services already running; Kafka and the Flink job server are the usual local ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench import report
from lakehouse import generate as generator

DATASET = "sensor_events"


def _median_seconds(run, repeat: int) -> float:
    run()  # warm-up: plans, metadata and file caches
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def run(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=20)
    parser.add_argument("--days", type=float, default=14.0, help="days of history in the batch view")
    parser.add_argument("--events", type=int, default=20, help="events timed for freshness")
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args(argv)

    import schemas
    from batch.job import run_batch
    from app.wiring import spark_session, speed_hooks
    from local_services.flink import FlinkJobServer
    from local_services.kafka import KafkaBroker
    from speed.topics import create_topic
    from local_services.trino import TrinoServer
    from lakehouse.settings import get_settings
    from serving import trino_client, views
    from speed import pipeline as speed_pipeline
    from speed.produce import produce

    dataset = schemas.load(DATASET)
    folder = Path(tempfile.mkdtemp(prefix="lakehouse-serving-bench-"))
    base = get_settings()
    # The bench's warehouse, with the usual Kafka and Flink job server...
    pipeline_settings = base.model_copy(update={"warehouse": str(folder / "warehouse")})
    # ...and a Trino of its own (own folder and ports): a running one serves another warehouse.
    settings = pipeline_settings.model_copy(update={"services_root": str(folder / "services"), "trino_port": base.trino_port + 200})
    figures: list[dict] = []
    started_here = []
    try:
        events = generator.generate(generator.GeneratorConfig(sensors=arguments.sensors, days=arguments.days, seed=3))
        history = generator.write_json_lines(generator.to_records(events), folder / "history.jsonl")
        run_batch(DATASET, [str(history)], settings=pipeline_settings, spark=spark_session(pipeline_settings))
        services = [TrinoServer(settings), KafkaBroker(base), FlinkJobServer(base)]
        for service in services:
            if service.pid() is None:
                started_here.append(service)
            service.start()

        # Live events, after the batch view's watermark: the speed side of the merged view.
        topic = f"bench-serving-{uuid.uuid4().hex[:8]}"
        create_topic(topic, partitions=2, settings=base)
        job = speed_pipeline.follow(
            ["--dataset", DATASET, "--kafka_topic", topic, "--landing", "off", "--runner", "FlinkRunner"], settings=pipeline_settings,
            hooks=speed_hooks(pipeline_settings),
        )
        try:
            live = generator.generate(generator.GeneratorConfig(sensors=arguments.sensors, days=1.0, seed=4))
            live["event_time"] += events.event_time.max() - live.event_time.min() + np.timedelta64(5, "m")
            warm_file = generator.write_json_lines(generator.to_records(live.head(len(live) // 2)), folder / "warm.jsonl")
            produce(dataset, [warm_file], topic, settings=base)
            deadline = time.monotonic() + 180
            views.refresh(DATASET, settings)
            while time.monotonic() < deadline:
                hot = trino_client.query(f"SELECT count(*) AS n FROM {DATASET}.hot_scores", settings=settings).n[0]
                if hot >= len(live) // 2 - 50:
                    break
                time.sleep(1)
            views.refresh(DATASET, settings)
            figures += _merge_cost(settings, dataset, arguments.repeat)
            figures += _freshness(settings, base, dataset, live.iloc[len(live) // 2 :], topic, arguments.events, folder)
        finally:
            job.cancel()
    finally:
        for service in started_here:
            service.stop()
        shutil.rmtree(folder, ignore_errors=True)
    report.write("serving", figures, {"sensors": arguments.sensors, "days": arguments.days, "events": arguments.events,
                                      "repeat": arguments.repeat})
    return figures


def _merge_cost(settings, dataset, repeat: int) -> list[dict]:
    from serving import trino_client

    def query(sql: str, params=None):
        return lambda: trino_client.query(sql, params, settings=settings, role="analyst")

    sizes = trino_client.query(f"SELECT layer, count(*) AS n FROM {DATASET}.merged GROUP BY layer", settings=settings)
    sample = trino_client.query(f"SELECT event_id, entity_id, event_time FROM {DATASET}.batch_scores ORDER BY event_time DESC LIMIT 1",
                                settings=settings)
    event_id, entity, newest = sample.event_id[0], sample.entity_id[0], sample.event_time[0]
    since = (newest - np.timedelta64(1, "D")).isoformat(sep=" ")
    cases = {
        "full aggregate": "SELECT {e}, count(*), count_if(is_anomaly), max(score) FROM {t} GROUP BY 1",
        "one entity, last day": "SELECT * FROM {t} WHERE {e} = ? AND {time} > from_iso8601_timestamp(?)",
        "point lookup by event id": "SELECT * FROM {t} WHERE {id} = ?",
    }
    params = {"full aggregate": None, "one entity, last day": [entity, since.replace(" ", "T")],
              "point lookup by event id": [event_id]}
    figures = []
    for name, template in cases.items():
        timings = {}
        for side in ("merged", "batch_scores"):
            sql = template.format(e=dataset.entity, t=f"{DATASET}.{side}", time=dataset.event_time, id=dataset.event_id)
            timings[side] = _median_seconds(query(sql, params[name]), repeat)
        figures.append({"name": f"merged view, {name}: median latency", "value": timings["merged"] * 1000, "unit": "ms",
                        "reference": "batch table alone", "reference_value": timings["batch_scores"] * 1000,
                        "ratio": timings["merged"] / timings["batch_scores"]})
    # The alerts view runs a window over each entity's whole merged history: what it costs over
    # the anomalies view for the same question.
    timings = {}
    for view in ("alerts", "anomalies"):
        sql = f"SELECT * FROM {DATASET}.{view} WHERE {dataset.event_time} > from_iso8601_timestamp(?)"
        timings[view] = _median_seconds(query(sql, [since.replace(" ", "T")]), repeat)
    figures.append({"name": "alerts view, last day: median latency", "value": timings["alerts"] * 1000, "unit": "ms",
                    "reference": "anomalies view, same filter", "reference_value": timings["anomalies"] * 1000})
    rows = dict(zip(sizes.layer, sizes.n))
    figures.append({"name": "merged view rows: batch side", "value": float(rows.get("batch", 0)), "unit": "rows"})
    figures.append({"name": "merged view rows: speed side", "value": float(rows.get("speed", 0)), "unit": "rows"})
    return figures


def _freshness(settings, base, dataset, live, topic: str, count: int, folder: Path) -> list[dict]:
    from confluent_kafka import Producer

    from serving import trino_client

    producer = Producer({"bootstrap.servers": base.kafka_bootstrap, "linger.ms": 0})
    records = generator.to_records(live.head(count))
    delays = []
    for record in records:
        text = json.dumps(record, default=str)
        sent = time.perf_counter()
        producer.produce(topic, key=str(record[dataset.entity]).encode(), value=text.encode())
        producer.flush(10)
        deadline = sent + 60
        while time.perf_counter() < deadline:
            found = trino_client.query(f"SELECT count(*) AS n FROM {DATASET}.merged WHERE {dataset.event_id} = ?",
                                       [record[dataset.event_id]], settings=settings, role="analyst").n[0]
            if found:
                delays.append(time.perf_counter() - sent)
                break
            time.sleep(0.05)
    values = np.asarray(delays) if delays else np.asarray([float("nan")])
    return [
        {"name": f"freshness, Kafka to merged view (Flink following): {name}", "value": float(np.percentile(values, q)) * 1000,
         "unit": "ms", "reference": "design target (processing)", "reference_value": 100.0,
         "ratio": float(np.percentile(values, q)) * 10}
        for name, q in (("p50", 50), ("p99", 99))
    ] + [{"name": "freshness: events seen in the merged view", "value": float(len(delays)), "unit": f"of {count}"}]


if __name__ == "__main__":
    from lakehouse import logs
    from lakehouse.settings import get_settings

    logs.configure(cache_dir=get_settings().cache_dir)
    run()
