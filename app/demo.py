"""`lakehouse demo`: the whole Lambda cycle on the embedded default, with every count printed.

    generate 6 days of sensor_events (8 sensors, planted anomalies and bad records)
    batch run 1  on days 1-4               -> silver, quarantine, models v1, batch view, W1
    Kafka: replay A (day 4.5 to 5.5)       -> Beam reads the topic -> hot table, scored with v1
    batch run 2  on day 5 (arrived later)  -> models v2, W2 = end of day 5, hot rows <= W2 expired
    Kafka: replay B (day 5.5 to 6)         -> Beam reads only the new messages -> scored with v2
    Trino: merged view = batch rows up to W2 + hot rows after it
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from rich.panel import Panel

from app import wiring
from lakehouse import generate as generator
from lakehouse.errors import ConfigurationError
from lakehouse.logs import console, frame_table
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from batch.run_log import RunRecord
    from local_services.trino import TrinoServer

DATASET = "sensor_events"


def write_inputs(out: Path, *, sensors: int = 8, days: float = 6.0, seed: int = 42) -> dict[str, Path]:
    """Batch files (one per day, days 1..days-1), two speed replays and the labels."""
    config = generator.GeneratorConfig(sensors=sensors, days=days, seed=seed)
    events = generator.generate(config)
    start = config.start
    files: dict[str, Path] = {}
    whole_days = int(days)
    for day in range(whole_days - 1):
        low, high = start + timedelta(days=day), start + timedelta(days=day + 1)
        part = events[(events.event_time >= low) & (events.event_time < high)]
        planted = generator.plant_problems(generator.to_records(part), seed=seed)
        files[f"batch_day{day + 1}"] = generator.write_json_lines(planted.records, out / "batch" / f"day-{low:%Y-%m-%d}.jsonl")
    last_batch_end = start + timedelta(days=whole_days - 1)
    replays = {
        "replay_a": (last_batch_end - timedelta(days=0.5), last_batch_end + timedelta(days=0.5)),
        "replay_b": (last_batch_end + timedelta(days=0.5), start + timedelta(days=days)),
    }
    for name, (low, high) in replays.items():
        part = events[(events.event_time >= low) & (events.event_time < high)]
        planted = generator.plant_problems(generator.to_records(part), seed=seed)
        path = generator.write_json_lines(planted.records, out / "replay" / f"{name}.jsonl")
        with open(path, "a") as stream:
            stream.write('{"event_id": "truncated-by-a-crash", "temperature": 2\n')  # malformed JSON
        files[name] = path
    labels = events[events.anomaly != ""][["event_id", "entity_id", "event_time", "anomaly"]]
    labels_path = out / "labels.csv"
    labels.to_csv(labels_path, index=False)
    files["labels"] = labels_path
    return files


def run(
    settings: Settings, *, fresh: bool = True, stop_services: bool = False, sensors: int = 8, days: float = 6.0,
    batch_runner: Callable[[list[Path]], RunRecord] | None = None, speed_arguments: Sequence[str] = (),
    trino: "TrinoServer | None" = None, extra_summary: Callable[[dict], str] | None = None,
) -> dict:
    """The cycle on the embedded default. The cluster demo (app/cluster_demo.py) runs the very same
    cycle with its own `batch_runner` (spark-submit to the standalone master), `speed_arguments`
    (the Flink session cluster with external workers), its `trino` coordinator, and adds a line of
    its own to the summary (`extra_summary`, given the summary so far)."""
    from batch.job import run_batch
    import schemas
    from lakehouse.constants import events_topic
    from local_services.kafka import KafkaBroker
    from speed.topics import create_topic, delete_topic
    from local_services.trino import TrinoServer
    from speed.produce import produce
    from lakehouse.warehouse import reset_dataset
    from serving import trino_client, views
    from speed.pipeline import run as run_speed

    if settings.profile == "production":
        raise ConfigurationError("the demo deletes and rewrites the sensor_events tables: not under the production profile")
    wiring.require_local(settings, "the demo")
    started = time.perf_counter()
    trino = trino or TrinoServer(settings)
    console.rule("[bold]Lakehouse demo: one Lambda cycle")
    kafka = KafkaBroker(settings)
    topic = events_topic(DATASET)
    with console.status("starting Trino (it finishes in the background while Spark works) and Kafka"):
        trino_status = trino.start(wait=False)
        kafka.start()
    if fresh:
        reset_dataset(settings, DATASET)
        delete_topic(topic, settings=settings)
    create_topic(topic, partitions=2, settings=settings)
    out = settings.data_dir / "demo"
    files = write_inputs(out, sensors=sensors, days=days)
    console.print(f"generated inputs in {out}")
    from pyspark.sql import SparkSession

    owns_spark = batch_runner is None and SparkSession.getActiveSession() is None
    spark = wiring.spark_session(settings) if batch_runner is None else None
    summary: dict = {"batch": [], "speed": []}

    def batch(paths: list[Path], label: str) -> None:
        with console.status(f"{label}: Spark batch run"):
            if batch_runner is None:
                record = run_batch(DATASET, [str(path) for path in paths], settings=settings, spark=spark)
            else:
                record = batch_runner(paths)
        summary["batch"].append(record)
        console.print(
            f"[green]✓[/] {label}: input {record.input_rows} = valid {record.valid_rows} + quarantined "
            f"{record.quarantined_rows} + duplicates {record.duplicate_rows} + conflicts {record.conflict_rows}; model v{record.model_version}; "
            f"watermark {record.watermark:%Y-%m-%d %H:%M}; expired hot rows {record.expired_hot_rows}"
        )

    def speed(path: Path, label: str) -> None:
        with console.status(f"{label}: producing to Kafka"):
            sent = produce(schemas.load(DATASET), [path], topic, settings=settings)
        with console.status(f"{label}: Beam pipeline reading {topic}"):
            result = run_speed(["--dataset", DATASET, "--kafka_topic", topic, *speed_arguments], settings=settings)
        summary["speed"].append(result)
        summary.setdefault("produced", []).append(sent)
        console.print(
            f"[green]✓[/] {label}: {sent} Kafka messages = scored {result.scored} + dead letters {result.dead_letters}; "
            f"{result.committed} hot upserts; {result.anomalies} anomalies"
        )

    batch_days = sorted(path for name, path in files.items() if name.startswith("batch_day"))
    batch(batch_days[:-1], "batch run 1 (days 1-4)")
    speed(files["replay_a"], "speed replay A")
    batch(batch_days[-1:], "batch run 2 (day 5)")
    speed(files["replay_b"], "speed replay B")
    if owns_spark:
        spark.stop()

    with console.status("waiting for Trino"):
        trino.wait_ready()
        views.refresh(DATASET, settings)

    def query(sql: str):
        return trino_client.query(sql, settings=settings)

    merged = query(
        f"SELECT layer, count(*) AS events, count_if(is_anomaly) AS anomalies, "
        f"min(event_time) AS first_event, max(event_time) AS last_event, max(watermark) AS watermark "
        f"FROM delta.{DATASET}.merged GROUP BY layer ORDER BY layer"
    )
    alerts = query(f"SELECT layer, count(*) AS alerts FROM delta.{DATASET}.alerts GROUP BY layer")
    merged.insert(3, "alerts", merged[["layer"]].merge(alerts, on="layer", how="left")["alerts"].fillna(0).astype(int).to_numpy())
    _show(merged, "delta.sensor_events.merged by answering layer (alerts: the alerts view)")
    labels = pd.read_csv(files["labels"])
    spikes = labels[labels.anomaly == "spike"]["event_id"].tolist()
    id_list = ", ".join(f"'{event_id}'" for event_id in spikes)
    flagged = query(
        f"SELECT entity_id, event_time, temperature, round(score, 2) AS score, is_anomaly, layer "
        f"FROM delta.{DATASET}.merged WHERE event_id IN ({id_list}) ORDER BY event_time"
    )
    _show(flagged, "planted temperature spikes in the merged view")
    quarantine = query(
        "SELECT layer, rule, count(*) AS records FROM delta.lakehouse.quarantine "
        f"CROSS JOIN UNNEST(failed_rules) AS t(rule) WHERE dataset = '{DATASET}' GROUP BY layer, rule ORDER BY layer, rule"
    )
    _show(quarantine, "quarantine by layer and failed rule")
    summary.update(merged=merged, flagged=flagged, quarantine=quarantine, files=files, spikes=spikes)
    extra = f"{extra_summary(summary)}\n" if extra_summary is not None else ""
    elapsed = time.perf_counter() - started
    console.print(
        Panel.fit(
            f"Merged view answered {int(merged.events.sum())} events "
            f"({', '.join(f'{row.layer}: {row.events}' for row in merged.itertuples())}); "
            f"{int(flagged.is_anomaly.sum())} of {len(spikes)} planted spikes flagged; {int(merged.anomalies.sum())} alarms, "
            f"{int(merged.alerts.sum())} alerts (first alarm after {schemas.load(DATASET).detector.alert_quiet_events} quiet events).\n"
            f"Query it yourself:  lakehouse sql \"SELECT * FROM delta.{DATASET}.merged LIMIT 10\"  "
            f"(or --as analyst, read-only), lakehouse anomalies -d {DATASET} --hours 6, make notebooks\n"
            f"{extra}"
            f"Measure it against the labels:  lakehouse eval run -d {DATASET} --labels {files['labels']}\n"
            f"Done in {elapsed:.0f}s. Trino ({settings.trino_url}) and Kafka ({settings.kafka_bootstrap}) stay up; `lakehouse down` stops them.",
            title="demo",
        )
    )
    if stop_services:
        trino.stop()
        kafka.stop()
    summary.update(trino=trino_status)
    return summary


def _show(frame: pd.DataFrame, title: str) -> None:
    console.print(frame_table(frame, title))
