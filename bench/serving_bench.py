"""Serving-layer benchmark: the targets of issue #16, each measured against its target.

    python -m bench.serving_bench --quick       # the targets, under 10 minutes on 2 cores
    python -m bench.serving_bench               # the same, with more repetitions

On `sensor_events` with `--entities` entities (200): a batch view of `--batch-rows` rows (1M),
written by a real batch run, and a hot table of `--hot-rows` rows (100k) after it, written by the
speed layer's own local replay (its hot-table sink: one small MERGE commit per batch of events,
compacted as it goes), not by one bulk write. Then, through the bench's own Trino, as the analyst:

1. Merge cost: the same questions asked of the merged view and of the batch table alone (the
   reference), on a warm server (`--warm-up` passes of every query first: a long-running Trino
   has compiled and cached what a fresh one has not) and repeated `--repeat` times interleaved
   with the reference (both share the load of the moment), median reported: a full
   aggregate, one entity's last day, a point lookup by event id, the anomalies of the last hour.
   "Last" is relative to each table's own newest event, so both answer the same shape. Target:
   the worst ratio at most 1.3.
2. One entity's last day through the merged view: p50 under 300 ms.
3. The `alerts` view's last day over the `anomalies` view's: at most 1.5.
4. Freshness at 1,000 events/s of load: bench/speed_bench.py's own run (a Flink job following
   Kafka, every Nth event timed from its send to its row in the merged view): p99 at most 1 s.
5. The data files a query of the hot table opens after that streaming: under 50.

Everything is written to .work/bench/serving.json: the figures bench/report.py combines, and a
top-level `targets` object of plain numbers beside `target`; a figure not measured is null there
with its reason under `reasons`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

import schemas
from bench import report
from bench.speed_bench import json_lines, live_events

DATASET = "sensor_events"

TARGET = {
    "merged_over_batch_max": 1.3,
    "entity_day_p50_ms": 300.0,
    "alerts_over_anomalies": 1.5,
    "freshness_p99_ms_at_1k": 1000.0,
    "hot_files_after_soak": 50.0,
}

# The questions of item 1; {t} is the merged view or the batch table, {since_*} its own newest
# event minus a day or an hour.
QUERIES = {
    "full aggregate": "SELECT entity_id, count(*), count_if(is_anomaly), max(score) FROM {t} GROUP BY 1",
    "one entity, last day": "SELECT * FROM {t} WHERE entity_id = ? AND event_time > from_iso8601_timestamp(?)",
    "point lookup by event id": "SELECT * FROM {t} WHERE event_id = ?",
    "anomalies, last hour": "SELECT * FROM {t} WHERE is_anomaly AND event_time > from_iso8601_timestamp(?)",
}


def _warm_up(runs: list, passes: int) -> None:
    """Every query `passes` times, untimed, before any is measured. A fresh Trino compiles its
    operators and fills its caches over the first passes (measured 2026-12-02, four passes on a new
    server: the full aggregate fell from 1,162 to 339 ms on the merged view and from 624 to 221 ms
    on the batch table); users query a server that has been up for hours, so the bench measures
    that one. All queries together, not each alone, so no query is measured warmer than another."""
    for _ in range(passes):
        for run in runs:
            run()


def _interleaved_medians(runs: dict, repeat: int) -> dict[str, tuple[float, list[float]]]:
    """Median latency (ms) of each named run: every run once first (plans, metadata and file caches
    warm), then `repeat` rounds of all of them back to back, so that a run and its reference
    share the machine's load of the moment (it swings on the shared machine) instead of one
    taking the busy minutes and the other the quiet ones."""
    for run in runs.values():
        run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            timings[name].append((time.perf_counter() - started) * 1000)
    return {name: (statistics.median(values), values) for name, values in timings.items()}


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the targets only, 9 timed repetitions per query")
    parser.add_argument("--entities", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=1_000_000)
    parser.add_argument("--hot-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, help="timed runs per query after the warm-up (default 9 with --quick, else 15)")
    parser.add_argument("--warm-up", type=int, default=4, help="untimed passes of every query before the timed ones (default 4)")
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="events/s of the freshness run")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--freshness-every", type=int, default=250, help="time every Nth event of the freshness run in Trino")
    parser.add_argument("--no-freshness", action="store_true", help="skip items 4 and 5 (no Kafka, no Flink)")
    parser.add_argument("--work-folder", help="keep the warehouse here; an existing one is reused (default: temporary, removed)")
    arguments = parser.parse_args(argv)
    repeat = arguments.repeat or (9 if arguments.quick else 15)
    began = time.perf_counter()

    from lakehouse.settings import get_settings
    from local_services.trino import TrinoServer
    from serving import views

    dataset = schemas.load(DATASET)
    base = get_settings()
    folder = Path(arguments.work_folder or tempfile.mkdtemp(prefix="lakehouse-serving-bench-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    settings = base.model_copy(update={"warehouse": str(folder / "warehouse")})
    # A Trino of the bench's own (own folder and ports) over the bench's warehouse.
    trino_settings = settings.model_copy(update={"services_root": str(folder / "services"), "trino_port": base.trino_port + 200})
    figures: list[dict] = []
    targets: dict[str, float | None] = dict.fromkeys(TARGET)
    reasons: dict[str, str] = {}
    loads: dict[str, str] = {"start": report.load_note()}
    trino = TrinoServer(trino_settings)
    try:
        built = _build_warehouse(settings, dataset, arguments, folder)
        figures += built["figures"]
        loads["built"] = report.load_note()
        trino.start()
        views.refresh(DATASET, trino_settings)
        cost = _merge_cost(trino_settings, repeat, arguments.warm_up)
        loads["queries"] = report.load_note()
        figures += cost["figures"]
        targets.update(merged_over_batch_max=cost["merged_over_batch_max"], entity_day_p50_ms=cost["entity_day_p50_ms"],
                       alerts_over_anomalies=cost["alerts_over_anomalies"])
        if arguments.no_freshness:
            reasons["freshness_p99_ms_at_1k"] = reasons["hot_files_after_soak"] = "not run: --no-freshness"
        else:
            fresh = _freshness(settings, trino_settings, base, dataset, arguments, built["newest"], folder)
            loads["freshness"] = report.load_note()
            figures += fresh["figures"]
            targets["freshness_p99_ms_at_1k"] = fresh["freshness_p99_ms_at_1k"]
            if fresh["freshness_p99_ms_at_1k"] is None:
                reasons["freshness_p99_ms_at_1k"] = fresh["reason"]
            hot_files = _hot_files(trino_settings)
            targets["hot_files_after_soak"] = float(hot_files)
            if arguments.latency_seconds < 3600:
                reasons["hot_files_after_soak"] = (
                    f"measured after {arguments.hot_rows:,} rows replayed in streaming commits and {arguments.latency_seconds:g} s "
                    f"of Flink following Kafka at {arguments.latency_rate:,.0f} events/s, not after the issue's hour of streaming"
                )
            figures.append({"name": "data files a query of the hot table opens, after the streaming", "value": float(hot_files),
                            "unit": "files", "reference": "design target", "reference_value": TARGET["hot_files_after_soak"]})
    finally:
        trino.stop()
        if not arguments.work_folder:
            shutil.rmtree(folder, ignore_errors=True)
    met = {key: None if value is None else value <= TARGET[key] if key != "entity_day_p50_ms" else value < TARGET[key]
           for key, value in targets.items()}
    note = ("Measured on a shared 2-core machine while other engineers ran tests and services. "
            + "; ".join(f"{stage}: {load}" for stage, load in loads.items()))
    parameters = {key.replace("-", "_"): value for key, value in vars(arguments).items()} | {"repeat": repeat}
    # The whole run, set-up included (issue #16: `--quick` under 10 minutes); a kept warehouse
    # (`--work-folder`) skips most of the set-up.
    wall = time.perf_counter() - began
    figures.append({"name": "bench wall time, set-up included", "value": wall, "unit": "s", "reference": "--quick budget",
                    "reference_value": 600.0})
    report.write("serving", figures, parameters, extra={"targets": targets, "target": TARGET, "met": met, "reasons": reasons, "note": note,
                                                          "wall_seconds": wall})
    return {"targets": targets, "target": TARGET, "reasons": reasons, "note": note}


def _build_warehouse(settings, dataset, arguments, folder: Path) -> dict:
    """The batch view at the issue's size, then the speed layer's replay of `--hot-rows` more events.

    A whole batch run over 1M events takes 10 to 15 minutes on this shared machine, nearly all of
    it in ingest and validation (bench/batch_bench.py measures those), which the serving layer
    never reads. So a real batch run over the first day trains the models and logs a run; then the
    batch layer's own features, scoring and batch-view writer (the layout the job writes) turn the
    whole history into the batch view, and a run-log record moves the watermark to its end, as the
    job's last steps do.
    """
    import uuid
    from datetime import datetime, timezone

    from deltalake import DeltaTable

    from app.wiring import spark_session
    from batch import features as batch_features
    from batch import run_log
    from batch import tables as batch_tables
    from batch.job import run_batch
    from batch.score import score
    from lakehouse import constants, system_tables
    from speed import pipeline as speed_pipeline

    marker = folder / "built.json"
    if marker.exists():
        saved = pd.read_json(marker, typ="series")
        return {"figures": [], "newest": pd.Timestamp(saved["newest"])}
    start = pd.Timestamp("2024-01-01T00:00:00Z")
    history = live_events(arguments.entities, arguments.batch_rows, start, seed=21)
    first_day = folder / "first-day.jsonl"
    first_day.write_text("\n".join(json_lines(history[history.event_time < start + pd.Timedelta(days=1)])) + "\n")
    started = time.perf_counter()
    spark = spark_session(settings)
    run_batch(DATASET, [str(first_day)], settings=settings, spark=spark)
    first_day.unlink()
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    began = datetime.now(timezone.utc)
    events = spark.createDataFrame(history)
    features = batch_features.compute(events, dataset).persist()
    batch_tables.write_batch_view(score(features, events, dataset, settings, run_id), dataset, settings)
    features.unpersist()
    newest = history.event_time.max()
    run_log.append(settings, run_log.RunRecord(
        run_id=run_id, dataset=DATASET, status=system_tables.STATUS_SUCCEEDED, started_at=began,
        finished_at=datetime.now(timezone.utc), inputs=["bench: generated history"], scored_rows=len(history),
        watermark=newest.to_pydatetime(),
    ))
    batch_seconds = time.perf_counter() - started
    stream = live_events(arguments.entities, arguments.hot_rows, newest, seed=22)
    del history
    stream_file = folder / "hot.jsonl"
    stream_file.write_text("\n".join(json_lines(stream)) + "\n")
    started = time.perf_counter()
    result = speed_pipeline.run(["--dataset", DATASET, "--input", str(stream_file), "--landing", "off"], settings=settings)
    speed_seconds = time.perf_counter() - started
    stream_file.unlink()
    commits = DeltaTable(settings.table_uri(DATASET, constants.HOT_SCORES)).version()
    newest = stream.event_time.max()
    marker.write_text(pd.Series({"newest": newest.isoformat()}).to_json())
    return {"newest": newest, "figures": [
        {"name": f"bench set-up: batch view of {arguments.batch_rows:,} events, {arguments.entities} entities "
                 "(a batch run over the first day, then the batch layer's scoring of the whole history)",
         "value": batch_seconds, "unit": "s"},
        {"name": f"bench set-up: speed replay of {arguments.hot_rows:,} events into the hot table ({commits} commits)",
         "value": result.scored / speed_seconds, "unit": "events/s"},
    ]}


def _merge_cost(settings, repeat: int, warm_up: int) -> dict:
    from serving import trino_client

    def query(sql: str, params=None):
        return lambda: trino_client.query(sql, params, settings=settings, role="analyst")

    sizes = trino_client.query(f"SELECT layer, count(*) AS n FROM {DATASET}.merged GROUP BY layer", settings=settings)
    rows = dict(zip(sizes.layer, sizes.n))
    sample = trino_client.query(
        f"SELECT event_id, entity_id FROM {DATASET}.batch_scores ORDER BY event_time DESC, event_id LIMIT 1", settings=settings
    )
    event_id, entity = sample.event_id[0], sample.entity_id[0]
    newest = {
        side: trino_client.query(f"SELECT max(event_time) AS newest FROM {DATASET}.{side}", settings=settings).newest[0]
        for side in ("merged", "batch_scores")
    }

    def since(side: str, hours: float) -> str:
        return (pd.Timestamp(newest[side]) - pd.Timedelta(hours=hours)).isoformat()

    params = {
        "full aggregate": lambda side: None,
        "one entity, last day": lambda side: [entity, since(side, 24)],
        "point lookup by event id": lambda side: [event_id],
        "anomalies, last hour": lambda side: [since(side, 1)],
    }
    runs = {name: {side: query(template.format(t=f"{DATASET}.{side}"), params[name](side)) for side in ("merged", "batch_scores")}
            for name, template in QUERIES.items()}
    # The alerts view (first alarms of episodes) against the anomalies view, the same filter.
    sql = "SELECT * FROM {view} WHERE event_time > from_iso8601_timestamp(?)"
    views = {view: query(sql.format(view=f"{DATASET}.{view}"), [since("merged", 24)]) for view in ("alerts", "anomalies")}
    _warm_up([run for pair in (*runs.values(), views) for run in pair.values()], warm_up)
    figures, ratios = [], {}
    entity_day = []
    for name in QUERIES:
        measured = _interleaved_medians(runs[name], repeat)
        medians = {side: median for side, (median, _) in measured.items()}
        if name == "one entity, last day":
            entity_day = measured["merged"][1]
        ratios[name] = medians["merged"] / medians["batch_scores"]
        figures.append({"name": f"merged view, {name}: median latency", "value": medians["merged"], "unit": "ms",
                        "reference": "batch table alone", "reference_value": medians["batch_scores"]})
    measured = _interleaved_medians(views, repeat)
    medians = {view: median for view, (median, _) in measured.items()}
    figures.append({"name": "alerts view, last day: median latency", "value": medians["alerts"], "unit": "ms",
                    "reference": "anomalies view, same filter", "reference_value": medians["anomalies"]})
    figures.append({"name": "merged view rows: batch side", "value": float(rows.get("batch", 0)), "unit": "rows"})
    figures.append({"name": "merged view rows: speed side", "value": float(rows.get("speed", 0)), "unit": "rows"})
    return {
        "figures": figures,
        "merged_over_batch_max": max(ratios.values()),
        "entity_day_p50_ms": statistics.median(entity_day),
        "alerts_over_anomalies": medians["alerts"] / medians["anomalies"],
    }


def _freshness(settings, trino_settings, base, dataset, arguments, newest: pd.Timestamp, folder: Path) -> dict:
    """Item 4 through bench/speed_bench.py's own run, on this bench's warehouse and Trino."""
    from bench import speed_bench
    from local_services.flink import FlinkJobServer
    from local_services.kafka import KafkaBroker

    started_here = []
    for service in (KafkaBroker(base), FlinkJobServer(base)):
        if service.pid() is None:
            started_here.append(service)
        service.start()
    try:
        options = argparse.Namespace(sensors=arguments.entities, batch_size=1000, latency_rate=arguments.latency_rate,
                                     latency_seconds=arguments.latency_seconds, freshness_every=arguments.freshness_every)
        result = speed_bench.latency_and_freshness(settings, base, dataset, options, newest, folder, trino_settings=trino_settings)
    finally:
        for service in reversed(started_here):
            service.stop()
    figures = list(result["other_figures"])
    for key, name in (("commit_p99_ms_at_1k", "arrival-to-commit p99"), ("freshness_p99_ms_at_1k", "Kafka send to Trino's merged view p99")):
        if result.get(key) is not None:
            figures.append({"name": f"Flink following Kafka at {arguments.latency_rate:,.0f} events/s: {name}", "value": result[key],
                            "unit": "ms", "reference": "design target", "reference_value": 1000.0 if "freshness" in key else 250.0})
    return {"figures": figures, "freshness_p99_ms_at_1k": result.get("freshness_p99_ms_at_1k"), "reason": result.get("reason", "")}


def _hot_files(settings) -> int:
    """Distinct data files behind a full scan of the hot table, as Trino reads it."""
    from serving import trino_client

    return int(trino_client.query(f'SELECT count(DISTINCT "$path") AS n FROM {DATASET}.hot_scores', settings=settings).n[0])


if __name__ == "__main__":
    from lakehouse import logs
    from lakehouse.settings import get_settings

    logs.configure(cache_dir=get_settings().cache_dir)
    run()
