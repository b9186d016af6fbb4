"""Speed-layer benchmark: the targets of issue #14, each measured against its target.

    python -m bench.speed_bench --quick                  # items 1-4 of the issue, under 10 minutes
    python -m bench.speed_bench --quick --soak-minutes N # and the memory soak (item 5)
    python -m bench.speed_bench --only soak              # the soak alone (10 minutes; --soak-minutes N)
    python -m bench.speed_bench --only local             # the local replay and the numpy reference alone
    python -m bench.speed_bench                          # also the figures without a target

On `sensor_events` with `--sensors` entities (default 1,000),
trained by the batch layer on `--history-days` of history, the declared detector:

1. Throughput: one Flink job follows a Kafka topic fed at `--follow-rate` events/s (10,000) for
   `--follow-seconds` (120): the events/s it committed to the hot table over that time, and the
   consumer group's lag at its end in seconds of input. A bounded replay of `--events` events on
   the local runner in a fresh process, its start-up (interpreter, imports, models) included.
2. Latency at `--latency-rate` events/s (1,000) on a Flink job following Kafka: Kafka record
   timestamp to hot-table commit, and to scored (before the sinks; speed/scoring.py records it).
3. Freshness in the same run: sampled events among the load, timed from their send to the moment
   Trino's merged view returns them (polled as the analyst; a Trino of the bench's own).
4. Reference: features (lakehouse/features.py) and scores of the same events in plain numpy with
   the same models; the ratio is the local replay's events/s over it.
5. With `--soak-minutes N`, the memory soak (bench/speed_soak.py): a Flink job following Kafka at
   `--soak-rate` (5,000) events/s over `--soak-entities` (10,000), its own warehouse and models;
   the resident memory of every process, growth after the first 2 minutes.

Everything is written to .work/bench/speed.json: the figures that bench/report.py combines, and a
top-level `targets` object of plain numbers beside a `target` object of the goals. A figure that
could not be measured is null there, with its reason under `reasons`, never an estimate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

import schemas
from bench import report

DATASET = "sensor_events"

# Issue #14's targets; None: a reference without a target of its own.
TARGET = {
    "follow_events_per_s": 10_000.0,
    "follow_lag_s_at_end": 1.0,
    "commit_p99_ms_at_1k": 250.0,
    "scored_p99_ms_at_1k": 100.0,
    "freshness_p99_ms_at_1k": 1000.0,
    "local_events_per_s": 20_000.0,
    "numpy_events_per_s": None,
    "ratio_to_numpy": 0.25,
    "soak_rss_growth_pct": 10.0,
}
# Targets that are ceilings (lower is better); the others are floors.
CEILINGS = {"follow_lag_s_at_end", "commit_p99_ms_at_1k", "scored_p99_ms_at_1k", "freshness_p99_ms_at_1k", "soak_rss_growth_pct"}


def live_events(sensors: int, count: int, after: pd.Timestamp, seed: int) -> pd.DataFrame:
    """`count` normal events, one per sensor every 5 minutes after `after`, in event-time order.

    Not lakehouse/generate.py's: its temperatures rise 3 degrees per sensor and leave the declared
    range (at most 200) after the 48th, and its per-sensor loop takes minutes for the Flink follow
    run's million events on this machine. Here the sensors' levels repeat every 40 sensors.
    """
    return readings(np.arange(count) % sensors, np.arange(count) // sensors, after, np.random.default_rng(seed))


def readings(sensor: np.ndarray, step: np.ndarray, after: pd.Timestamp, rng: np.random.Generator) -> pd.DataFrame:
    """Normal events: sensor `sensor[i]`'s reading number `step[i]` (0 first), 5 minutes apart after `after`."""
    count = len(sensor)
    times = after + pd.to_timedelta(5 * (step + 1), unit="m")
    phase = 2 * np.pi * (times.hour * 60 + times.minute).to_numpy() / (24 * 60)
    known, position = np.unique(sensor, return_inverse=True)
    names = np.array([f"sensor-{index:03d}" for index in known], dtype=object)[position]
    identifiers = rng.bytes(16 * count).hex()
    return pd.DataFrame({
        "event_id": [identifiers[32 * index : 32 * index + 32] for index in range(count)],
        "entity_id": names,
        "event_time": times,
        "temperature": np.round(55 + 3 * (sensor % 40) + 5 * np.sin(phase + sensor) + rng.normal(0, 0.3, count), 4),
        "pressure": np.round(5 + 0.4 * np.sin(phase + 0.5 * sensor) + rng.normal(0, 0.05, count), 4),
        "vibration": np.round(np.abs(2 + rng.normal(0, 0.15, count)), 4),
        "status": "ok",
    })


def json_lines(events: pd.DataFrame) -> list[str]:
    naive = events.event_time.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[s]")
    stamps = np.char.add(np.datetime_as_string(naive, unit="s"), "Z")
    return [
        f'{{"event_id": "{i}", "entity_id": "{e}", "event_time": "{t}", "temperature": {a}, "pressure": {b}, '
        f'"vibration": {c}, "status": "{s}"}}'
        for i, e, t, a, b, c, s in zip(*(events[name].tolist() for name in ("event_id", "entity_id")), stamps.tolist(),
                                       *(events[name].tolist() for name in ("temperature", "pressure", "vibration", "status")))
    ]


def _write_lines(lines: list[str], path: Path) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_on_history(settings, arguments, folder: Path) -> pd.DataFrame:
    """The bench's history (`--history-days` of every sensor), written and run through the batch
    layer, which trains the models the speed runs score with; returns the history."""
    from app.wiring import spark_session
    from batch.job import run_batch

    start = pd.Timestamp("2024-01-01T00:00:00Z")
    history = live_events(arguments.sensors, int(arguments.sensors * 288 * arguments.history_days), start, seed=5)
    history_file = _write_lines(json_lines(history), folder / "history.jsonl")
    run_batch(DATASET, [str(history_file)], settings=settings, spark=spark_session(settings))
    return history


def _percentile(samples, q: float) -> float | None:
    values = np.asarray(list(samples), dtype=float)
    return float(np.percentile(values, q)) if values.size else None


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the targets (items 1-4 of issue #14)")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="also run the memory soak (item 5) this long")
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--history-days", type=float, default=1.0, help="history the batch layer trains on")
    parser.add_argument("--events", type=int, default=100_000, help="events of the local bounded replay (100 per entity: start-up, about 8 s of imports, models and history, is then a fifth of the run)")
    parser.add_argument("--follow-rate", type=float, default=10_000.0)
    parser.add_argument("--follow-seconds", type=float, default=120.0)
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--freshness-every", type=int, default=500, help="in the latency run, time every Nth event in Trino")
    parser.add_argument("--batch-size", type=int, default=5000, help="--max_batch_size of the pipeline runs (its default)")
    parser.add_argument("--work-folder", help="keep the bench's warehouse and files here (default: a temporary folder, removed)")
    parser.add_argument("--pipeline-arg", action="append", default=[],
                        help="one more flag for the Flink jobs (e.g. --pipeline-arg=--commit_seconds=0.05); repeatable")
    parser.add_argument("--soak-entities", type=int, default=10_000, help="entities of the soak (bench/speed_soak.py)")
    parser.add_argument("--soak-rate", type=float, default=5000.0, help="events/s of the soak")
    parser.add_argument("--soak-blocks", type=int, default=4, help="the soak's entities are active one block at a time")
    parser.add_argument("--soak-block-seconds", type=float, default=60.0, help="how long each block of the soak is active")
    parser.add_argument("--soak-ttl-seconds", type=float, default=60.0, help="the soak job's --state_ttl_seconds")
    parser.add_argument(
        "--only", choices=("local", "latency", "soak"),
        help="local: only the local replay and the numpy reference (item 1's local figure and item 4); "
             "latency: only items 2 and 3 (the latency run on Flink), with the per-stage breakdown of arrival-to-commit; "
             "soak: only item 5 (--soak-minutes, default 10). With --work-folder, a warehouse the bench trained before "
             "is reused (no batch run)",
    )
    arguments = parser.parse_args(argv)
    if arguments.only == "local":
        return _only_local(arguments)
    if arguments.only == "latency":
        return _only_latency(arguments)
    if arguments.only == "soak":
        return _only_soak(arguments)

    from lakehouse.settings import get_settings
    from local_services.flink import FlinkJobServer
    from local_services.kafka import KafkaBroker

    dataset = schemas.load(DATASET)
    base = get_settings()
    folder = Path(arguments.work_folder or tempfile.mkdtemp(prefix="lakehouse-speed-bench-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    settings = base.model_copy(update={"warehouse": str(folder / "warehouse")})
    figures: list[dict] = []
    targets: dict[str, float | None] = dict.fromkeys(TARGET)
    reasons: dict[str, str] = {}
    loads: dict[str, str] = {"start": report.load_note()}
    started_here = []
    try:
        history = _train_on_history(settings, arguments, folder)
        newest = history.event_time.max()
        stream = live_events(arguments.sensors, arguments.events, newest, seed=6)
        replay = _write_lines(json_lines(stream), folder / "stream.jsonl")

        numpy_rate = _numpy_reference(settings, dataset, history, stream, arguments.batch_size)
        local_rate = _local_replay(settings, replay, arguments.batch_size)
        loads["local replay"] = report.load_note()
        validation_rate = _validation_rate(dataset, replay)
        figures.append({"name": "the pipeline's first step alone: decode, parse and validate the replay's lines in one process",
                        "value": validation_rate, "unit": "events/s", "reference": "the local replay, whole pipeline",
                        "reference_value": local_rate})
        targets.update(numpy_events_per_s=numpy_rate, local_events_per_s=local_rate, ratio_to_numpy=local_rate / numpy_rate)
        figures.append({"name": f"local runner: bounded replay of {len(stream):,} events, {arguments.sensors} entities",
                        "value": local_rate, "unit": "events/s", "reference": "design target",
                        "reference_value": TARGET["local_events_per_s"]})
        figures.append({"name": "local runner over features + scoring in plain numpy", "value": local_rate, "unit": "events/s",
                        "reference": "numpy features + scoring alone", "reference_value": numpy_rate})
        if not arguments.quick:
            figures += _flink_replay(settings, replay, arguments.batch_size, numpy_rate)

        for service in (KafkaBroker(base), FlinkJobServer(base)):
            if service.pid() is None:
                started_here.append(service)
            service.start()
        if not arguments.quick:
            figures += _kafka_ranges(settings, dataset, stream, arguments, folder)

        # Every live run continues the entities' series after the replay's newest events.
        after = stream.event_time.max()
        follow = _follow_at_rate(settings, dataset, arguments, after)
        loads["follow"] = report.load_note()
        targets.update(follow_events_per_s=follow["rate"], follow_lag_s_at_end=follow["lag_seconds"])
        figures.append({"name": f"Flink following Kafka fed {arguments.follow_rate:,.0f} events/s for "
                                f"{arguments.follow_seconds:.0f} s: events committed per second",
                        "value": follow["rate"], "unit": "events/s", "reference": "design target",
                        "reference_value": TARGET["follow_events_per_s"]})
        figures.append({"name": f"Flink following Kafka: rate the producer reached ({follow['sent']:,} events in {follow['elapsed']:.0f} s)",
                        "value": follow["sent"] / follow["elapsed"], "unit": "events/s", "reference": "rate asked",
                        "reference_value": arguments.follow_rate})
        figures.append({"name": "Flink following Kafka: consumer lag at the end, in seconds of input",
                        "value": follow["lag_seconds"], "unit": "s", "reference": "design target",
                        "reference_value": TARGET["follow_lag_s_at_end"]})

        after = follow["newest"]
        for service in started_here:
            if isinstance(service, FlinkJobServer):
                # A cancelled job that fell behind drains its backlog for minutes: a fresh job
                # server, so that the latency run has the machine to itself.
                service.stop()
                service.start()
        latency = latency_and_freshness(settings, base, dataset, arguments, after, folder)
        loads["latency"] = report.load_note()
        for key, name in (("commit_p99_ms_at_1k", "arrival-to-commit p99"), ("scored_p99_ms_at_1k", "arrival-to-scored p99"),
                          ("freshness_p99_ms_at_1k", "Kafka send to Trino's merged view p99")):
            targets[key] = latency.get(key)
            if latency.get(key) is None:
                reasons[key] = latency.get("reason", "no sample")
                continue
            figures.append({"name": f"Flink following Kafka at {arguments.latency_rate:,.0f} events/s: {name}",
                            "value": latency[key], "unit": "ms", "reference": "design target", "reference_value": TARGET[key]})
        figures += latency["other_figures"]
    finally:
        for service in reversed(started_here):
            service.stop()
        if not arguments.work_folder:
            shutil.rmtree(folder, ignore_errors=True)

    soak = None
    if arguments.soak_minutes > 0:
        soak = _run_soak(arguments, base, folder if arguments.work_folder else None, targets, reasons, figures)
        loads["soak"] = soak["loads"]["end"]
    else:
        reasons["soak_rss_growth_pct"] = "not run: the soak runs only with --soak-minutes N"
    met = {key: _met(key, value) for key, value in targets.items()}
    note = ("Measured on a shared 2-core machine while other engineers ran tests and services: the figures are "
            "depressed by that load. " + "; ".join(f"{stage}: {load}" for stage, load in loads.items()))
    parameters = {key.replace("-", "_"): value for key, value in vars(arguments).items()}
    report.write("speed", figures, parameters,
                 extra={"targets": targets, "target": TARGET, "met": met, "reasons": reasons, "note": note, "soak": soak})
    return {"targets": targets, "target": TARGET, "reasons": reasons, "note": note, "soak": soak}


def _run_soak(arguments, base, folder: Path | None, targets: dict, reasons: dict, figures: list) -> dict:
    """Item 5 (bench/speed_soak.py) in `folder` (a temporary one, removed, without --work-folder)."""
    from bench import speed_soak

    temporary = folder is None
    folder = folder or Path(tempfile.mkdtemp(prefix="lakehouse-speed-soak-"))
    try:
        soak = speed_soak.run_soak(base, arguments, folder)
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    targets["soak_rss_growth_pct"] = soak["rss_growth_pct"]
    if soak["rss_growth_pct"] is None:
        reasons["soak_rss_growth_pct"] = soak["reason"]
    elif soak["lag_seconds_of_input_at_end"] > 1.0:
        reasons["soak_rss_growth_pct"] = (
            f"measured, but the job did not keep up: it committed {soak['committed_per_s']:,.0f} of the "
            f"{soak['rate_asked']:,.0f} events/s asked, {soak['lag_events_at_end']:,} events behind at the end"
        )
    figures += speed_soak.figures(soak, TARGET["soak_rss_growth_pct"])
    return soak


def _only_soak(arguments) -> dict:
    """`--only soak`: item 5 alone (10 minutes unless --soak-minutes says otherwise); the JSON
    keeps the `targets` keys, the others null with their reason."""
    from lakehouse.settings import get_settings

    if arguments.soak_minutes <= 0:
        arguments.soak_minutes = 10.0
    targets: dict[str, float | None] = dict.fromkeys(TARGET)
    reasons = {key: "not run: --only soak" for key in TARGET if key != "soak_rss_growth_pct"}
    figures: list[dict] = []
    folder = Path(arguments.work_folder).resolve() if arguments.work_folder else None
    soak = _run_soak(arguments, get_settings(), folder, targets, reasons, figures)
    met = {key: _met(key, value) for key, value in targets.items()}
    note = "--only soak. " + "; ".join(f"{stage}: {load}" for stage, load in soak["loads"].items())
    parameters = {key.replace("-", "_"): value for key, value in vars(arguments).items()}
    report.write("speed", figures, parameters,
                 extra={"targets": targets, "target": TARGET, "met": met, "reasons": reasons, "note": note, "soak": soak})
    summary = {key: value for key, value in soak.items() if key != "timeline"}
    print(json.dumps({"targets": {"soak_rss_growth_pct": targets["soak_rss_growth_pct"]}, "soak": summary}, indent=1, default=str))
    return {"targets": targets, "target": TARGET, "reasons": reasons, "note": note, "soak": soak}


def _only_local(arguments) -> dict:
    """`--only local`: the local replay (in a fresh process) and the numpy reference alone; the
    JSON keeps the `targets` keys, the others null with their reason."""
    from lakehouse.settings import get_settings

    dataset = schemas.load(DATASET)
    folder = Path(arguments.work_folder or tempfile.mkdtemp(prefix="lakehouse-speed-bench-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    settings = get_settings().model_copy(update={"warehouse": str(folder / "warehouse")})
    loads: dict[str, str] = {"start": report.load_note()}
    try:
        history = _train_on_history(settings, arguments, folder)
        stream = live_events(arguments.sensors, arguments.events, history.event_time.max(), seed=6)
        replay = _write_lines(json_lines(stream), folder / "stream.jsonl")
        numpy_rate = _numpy_reference(settings, dataset, history, stream, arguments.batch_size)
        local_rate = _local_replay(settings, replay, arguments.batch_size)
        loads["local replay"] = report.load_note()
    finally:
        if not arguments.work_folder:
            shutil.rmtree(folder, ignore_errors=True)
    measured = {"local_events_per_s": local_rate, "numpy_events_per_s": numpy_rate, "ratio_to_numpy": local_rate / numpy_rate}
    targets: dict[str, float | None] = {**dict.fromkeys(TARGET), **measured}
    reasons = {key: "not run: --only local" for key in TARGET if key not in measured}
    figures = [{"name": f"local runner: bounded replay of {len(stream):,} events, {arguments.sensors} entities, in a fresh process",
                "value": local_rate, "unit": "events/s", "reference": "design target", "reference_value": TARGET["local_events_per_s"]},
               {"name": "local runner over features + scoring in plain numpy", "value": local_rate, "unit": "events/s",
                "reference": "numpy features + scoring alone", "reference_value": numpy_rate}]
    met = {key: _met(key, value) for key, value in targets.items()}
    note = "--only local. " + "; ".join(f"{stage}: {load}" for stage, load in loads.items())
    parameters = {key.replace("-", "_"): value for key, value in vars(arguments).items()}
    report.write("speed", figures, parameters, extra={"targets": targets, "target": TARGET, "met": met, "reasons": reasons, "note": note})
    print(json.dumps({"targets": measured, "note": note}, indent=1))
    return {"targets": targets, "target": TARGET, "reasons": reasons, "note": note}


def _only_latency(arguments) -> dict:
    """`--only latency`: the latency run alone (items 2 and 3), its stages broken down; the JSON
    keeps the `targets` keys, the others null with their reason."""
    from lakehouse.settings import get_settings
    from local_services.flink import FlinkJobServer
    from local_services.kafka import KafkaBroker

    dataset = schemas.load(DATASET)
    base = get_settings()
    folder = Path(arguments.work_folder or tempfile.mkdtemp(prefix="lakehouse-speed-bench-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    settings = base.model_copy(update={"warehouse": str(folder / "warehouse")})
    loads: dict[str, str] = {"start": report.load_note()}
    trained = folder / "trained.json"
    started_here = []
    try:
        if trained.exists():
            after = pd.Timestamp(json.loads(trained.read_text())["newest"])
        else:
            after = _train_on_history(settings, arguments, folder).event_time.max()
            trained.write_text(json.dumps({"newest": after.isoformat()}))
        for service in (KafkaBroker(base), FlinkJobServer(base)):
            if service.pid() is None:
                started_here.append(service)
            service.start()
        latency = latency_and_freshness(settings, base, dataset, arguments, after, folder)
        loads["latency"] = report.load_note()
    finally:
        for service in reversed(started_here):
            service.stop()
        if not arguments.work_folder:
            shutil.rmtree(folder, ignore_errors=True)
    targets: dict[str, float | None] = dict.fromkeys(TARGET)
    reasons = {key: "not run: --only latency" for key in TARGET if key not in ("commit_p99_ms_at_1k", "scored_p99_ms_at_1k", "freshness_p99_ms_at_1k")}
    figures = []
    for key in ("commit_p99_ms_at_1k", "scored_p99_ms_at_1k", "freshness_p99_ms_at_1k"):
        targets[key] = latency.get(key)
        if latency.get(key) is None:
            reasons[key] = latency.get("reason", "no sample")
    figures += latency["other_figures"]
    met = {key: _met(key, value) for key, value in targets.items()}
    note = "--only latency. " + "; ".join(f"{stage}: {load}" for stage, load in loads.items())
    parameters = {key.replace("-", "_"): value for key, value in vars(arguments).items()}
    report.write("speed", figures, parameters, extra={"targets": targets, "target": TARGET, "met": met, "reasons": reasons,
                                                      "note": note, "latency_stages": latency.get("stages"),
                                                      "latency_stacks": latency.get("stacks")})
    print(json.dumps({"targets": {key: targets[key] for key in ("commit_p99_ms_at_1k", "scored_p99_ms_at_1k", "freshness_p99_ms_at_1k")},
                      "stages": latency.get("stages"), "note": note}, indent=1))
    return {"targets": targets, "target": TARGET, "reasons": reasons, "note": note, "stages": latency.get("stages")}


# The stages an event passes on its way from Kafka to the committed offset, in order
# (speed/metrics.py records them under --only latency).
STAGES = ("arrived", "polled", "validated", "keyed_in", "scored", "sink_in", "committed", "offset_committed")


def stage_breakdown(topic: str) -> dict:
    """Per stage: p50 / p99 ms since arrival, and of the step from the stage before, over the
    topic's events that reached the hot-table commit (the first time each stage saw the event)."""
    from speed import metrics
    from speed.kafka_stream import parse_source

    prefix = f"kafka://{topic}/"
    times: dict[str, dict[str, float]] = {}
    for stage, source, at in list(metrics.STAGE_TIMES):
        if source and source.startswith(prefix):
            seen = times.setdefault(source, {})
            if stage not in seen:
                seen[stage] = at
    for source, latency in list(metrics.SCORED_LATENCY_SAMPLES):
        if source in times and "scored" not in times[source] and "arrived" in times[source]:
            times[source]["scored"] = times[source]["arrived"] + latency
    commits: dict[str, list[tuple[int, int, float]]] = {}
    for partition_key, first, end, at in list(metrics.OFFSET_COMMITS):
        commits.setdefault(partition_key, []).append((first, end, at))
    for source, seen in times.items():
        parsed = parse_source(source)
        if parsed is None:
            continue
        partition_key, offset = parsed
        for first, end, at in commits.get(partition_key, ()):
            if first <= offset < end:
                seen["offset_committed"] = at
                break
    complete = [seen for seen in times.values() if "arrived" in seen and "committed" in seen]
    result = {"events": len(complete)}
    previous = None
    for stage in STAGES[1:]:
        since_arrival = [seen[stage] - seen["arrived"] for seen in complete if stage in seen]
        step_from = previous or "arrived"
        step = [seen[stage] - seen[step_from] for seen in complete if stage in seen and step_from in seen]
        result[stage] = {
            "events": len(since_arrival),
            "since_arrival_p50_ms": _ms(_percentile(since_arrival, 50)), "since_arrival_p99_ms": _ms(_percentile(since_arrival, 99)),
            f"step_from_{step_from}_p50_ms": _ms(_percentile(step, 50)), f"step_from_{step_from}_p99_ms": _ms(_percentile(step, 99)),
        }
        previous = stage
    return result


class StackSampler:
    """A poor man's sampling profiler of this process's threads (py-spy is not installed here):
    every `interval` seconds, per thread, the innermost frame and the innermost frame of the
    project's own code (speed/, lakehouse/, schemas/). Threads waiting (locks, sockets, queues,
    sleeps) show as their waiting frame; the counts are shares of wall-clock samples per thread."""

    PROJECT = ("/speed/", "/lakehouse/", "/schemas/")

    def __init__(self, interval: float = 0.05) -> None:
        from collections import Counter

        self.interval = interval
        self.innermost: Counter = Counter()
        self.project: Counter = Counter()
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def _run(self) -> None:
        import sys

        me = threading.get_ident()
        while not self.stopping.wait(self.interval):
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                inner = f"{frame.f_code.co_filename.rsplit('/', 2)[-2:][-1]}:{frame.f_code.co_name}"
                own = None
                walker = frame
                while walker is not None:
                    name = walker.f_code.co_filename
                    if any(part in name for part in self.PROJECT):
                        own = f"{name.rsplit('/', 2)[-2]}/{name.rsplit('/', 1)[-1]}:{walker.f_code.co_name}"
                        break
                    walker = walker.f_back
                self.innermost[inner] += 1
                if own is not None:
                    self.project[(own, inner)] += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def top(self, count: int = 30) -> dict:
        return {"samples": self.samples, "interval_s": self.interval,
                "project_frames": [[own, inner, hits] for (own, inner), hits in self.project.most_common(count)],
                "innermost": [[inner, hits] for inner, hits in self.innermost.most_common(count)]}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _met(key: str, value: float | None) -> bool | None:
    if value is None or TARGET[key] is None:
        return None
    return value <= TARGET[key] if key in CEILINGS else value >= TARGET[key]


def _numpy_reference(settings, dataset, history: pd.DataFrame, stream: pd.DataFrame, batch_size: int) -> float:
    """events/s of features + scores of the stream's events in plain numpy, per entity, same models."""
    from lakehouse import registry
    from lakehouse.features import compute_features

    models = registry.load_latest(settings, DATASET)
    fields = list(dataset.features.fields)
    window = dataset.features.window
    prepared = []
    for entity_id, group in stream.groupby(dataset.entity):
        if entity_id not in models:
            continue  # the pipeline dead-letters these events, and does not count them as scored
        before = history[history[dataset.entity] == entity_id][fields].to_numpy(np.float64)[-window:]
        prepared.append((models[entity_id].model, group[fields].to_numpy(np.float64),
                         group[dataset.event_time].to_numpy(dtype="datetime64[us]"), before))
    started = time.perf_counter()
    for model, values, times, before in prepared:
        matrix = compute_features(dataset, values, times, before)
        for start in range(0, len(matrix), batch_size):
            model.score(matrix[start : start + batch_size])
    return sum(len(values) for _, values, _, _ in prepared) / (time.perf_counter() - started)


def _validation_rate(dataset, replay: Path) -> float:
    """events/s of speed/validate.py's work alone (decode, JSON, the declared rules) on the replay's
    lines: what one core spends before features and scoring (issue #14's profile put it at 10%)."""
    from schemas.rules import RecordValidator, decode_message, parse_json_record

    validator = RecordValidator(dataset)
    lines = replay.read_bytes().splitlines()
    started = time.perf_counter()
    for line in lines:
        text, _, _ = decode_message(line, "bench")
        record, _, _ = parse_json_record(text, "bench")
        if record is not None:
            validator.validate(record, source_file="bench")
    return len(lines) / (time.perf_counter() - started)


def _local_replay(settings, replay: Path, batch_size: int) -> float:
    """events/s of a bounded replay on the local runner in a fresh Python process, as `lakehouse
    speed run --input` runs it: the interpreter's start, the imports and the models' loading are
    in the time. (In the bench's own process the numpy reference and the batch run had already
    imported and loaded part of that, which hid it.)"""
    import multiprocessing

    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        scored = pool.apply(_replay_scored, (settings, str(replay), batch_size))
    return scored / (time.perf_counter() - started)


def _replay_scored(settings, replay: str, batch_size: int) -> int:
    from speed import pipeline as speed_pipeline

    return speed_pipeline.run(["--dataset", DATASET, "--input", replay, "--max_batch_size", str(batch_size)], settings=settings).scored


def _flink_replay(settings, replay: Path, batch_size: int, numpy_rate: float) -> list[dict]:
    """The same replay on Flink (embedded, streaming mode), job start-up included; no target."""
    from app.wiring import speed_hooks
    from local_services.flink import FlinkJobServer
    from speed import pipeline as speed_pipeline

    shutil.rmtree(settings.table_uri(DATASET, "hot_scores"), ignore_errors=True)
    flink = FlinkJobServer(settings)
    started_flink = flink.pid() is None
    flink.start()
    try:
        started = time.perf_counter()
        result = speed_pipeline.run(
            ["--dataset", DATASET, "--input", str(replay), "--max_batch_size", str(batch_size), "--runner", "FlinkRunner"],
            settings=settings, hooks=speed_hooks(settings),
        )
        rate = result.scored / (time.perf_counter() - started)
    finally:
        if started_flink:
            flink.stop()
    return [{"name": "Flink runner: bounded replay, job start-up included", "value": rate, "unit": "events/s",
             "reference": "numpy features + scoring alone", "reference_value": numpy_rate}]


def _kafka_ranges(settings, dataset, stream: pd.DataFrame, arguments, folder: Path) -> list[dict]:
    """The local runner reading Kafka in back-to-back bounded ranges at the latency rate; no target."""
    from speed import metrics
    from speed import pipeline as speed_pipeline
    from speed.produce import produce
    from speed.topics import create_topic

    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions=2, settings=settings)
    count = int(arguments.latency_rate * arguments.latency_seconds)
    live = live_events(arguments.sensors, count, stream.event_time.max(), seed=7)
    live_file = _write_lines(json_lines(live), folder / "ranges.jsonl")
    metrics.LATENCY_SAMPLES.clear()
    sender = threading.Thread(target=produce, args=(dataset, [live_file], topic),
                              kwargs={"rate": arguments.latency_rate, "settings": settings})
    sender.start()
    scored, runs = 0, 0
    deadline = time.monotonic() + arguments.latency_seconds + 120
    while (sender.is_alive() or scored < count) and time.monotonic() < deadline:
        scored += speed_pipeline.run(
            ["--dataset", DATASET, "--kafka_topic", topic, "--landing", "off", "--max_batch_size", str(arguments.batch_size)],
            settings=settings,
        ).scored
        runs += 1
    sender.join()
    figures = [
        {"name": f"local runner on Kafka ranges at {arguments.latency_rate:,.0f} events/s: arrival-to-commit p{q}",
         "value": (_percentile(metrics.samples_of(metrics.LATENCY_SAMPLES, topic), q) or float("nan")) * 1000, "unit": "ms"}
        for q in (50, 99)
    ]
    figures.append({"name": "local runner on Kafka: bounded ranges read", "value": float(runs), "unit": "runs"})
    return figures


def _continued_after(settings, dataset, after: pd.Timestamp) -> pd.Timestamp:
    """Where a run's events start in a reused warehouse: after `after` and after the hot table's
    newest event. Events older than the hot table's are late to the speed layer (re-read
    histories, MERGEs): a run that sent them would measure the late path, not the stream."""
    from lakehouse import constants, storage

    hot = settings.table_uri(DATASET, constants.HOT_SCORES)
    if storage.table_exists(hot):
        newest = storage.open_table(hot).to_pyarrow_table(columns=[dataset.event_time]).column(0)
        if len(newest):
            import pyarrow.compute as pc

            after = max(after, pd.Timestamp(pc.max(newest).as_py()))
    return after


def _fresh_seeds() -> int:
    """Seeds no earlier run used, so a reused warehouse gets new event ids: an id the merged view
    already holds would be "seen" at once and measure no freshness."""
    return (int(time.time()) % 1_000_000) * 2 + 100


def _start_following(settings, dataset, arguments, after: pd.Timestamp, *, seed: int):
    """A new topic and a Flink job following it, warmed up: one event of every entity sent and
    committed (job start, history reads and model loads are not what the runs measure). Its
    events start after `after` and after the hot table's newest event (a kept warehouse)."""
    from app.wiring import speed_hooks
    from speed import metrics
    from speed import pipeline as speed_pipeline
    from speed.produce import produce
    from speed.topics import create_topic

    after = _continued_after(settings, dataset, after)
    topic = f"bench-follow-{uuid.uuid4().hex[:8]}"
    create_topic(topic, partitions=2, settings=settings)
    job = speed_pipeline.follow(
        ["--dataset", DATASET, "--kafka_topic", topic, "--landing", "off", "--runner", "FlinkRunner",
         "--max_batch_size", str(arguments.batch_size), *getattr(arguments, "pipeline_arg", [])],
        settings=settings, hooks=speed_hooks(settings),
    )
    warm = live_events(arguments.sensors, arguments.sensors, after, seed=seed)
    warm_file = _write_lines(json_lines(warm), Path(settings.warehouse).parent / f"{topic}-warm.jsonl")
    metrics.LATENCY_SAMPLES.clear()
    produce(dataset, [warm_file], topic, settings=settings)
    deadline = time.monotonic() + 300
    while len(metrics.samples_of(metrics.LATENCY_SAMPLES, topic)) < len(warm) and time.monotonic() < deadline:
        time.sleep(0.2)
    if len(metrics.samples_of(metrics.LATENCY_SAMPLES, topic)) < len(warm):
        job.cancel()
        raise TimeoutError(f"the Flink job committed {len(metrics.samples_of(metrics.LATENCY_SAMPLES, topic))} of {len(warm)} "
                           "warm-up events in 300 s")
    return topic, job, warm.event_time.max()


def _consumer_lag(settings, topic: str) -> int:
    from speed.kafka_source import plan_ranges

    return sum(item.end - item.start for item in plan_ranges(settings.kafka_bootstrap, topic, f"lakehouse-speed-{DATASET}"))


def _follow_at_rate(settings, dataset, arguments, after: pd.Timestamp) -> dict:
    """Item 1: events/s committed by one Flink job following a topic fed at the follow rate."""
    from speed import metrics

    seed = _fresh_seeds()
    topic, job, after = _start_following(settings, dataset, arguments, after, seed=seed)
    try:
        count = int(arguments.follow_rate * arguments.follow_seconds)
        live = live_events(arguments.sensors, count, after, seed=seed + 1)
        live_file = _write_lines(json_lines(live), Path(settings.warehouse).parent / "follow.jsonl")
        del live
        metrics.LATENCY_SAMPLES.clear()
        started = time.perf_counter()
        sent = _produce_elsewhere(live_file, topic, arguments.follow_rate, settings)
        elapsed = time.perf_counter() - started
        committed = len(metrics.samples_of(metrics.LATENCY_SAMPLES, topic))
        lag = _consumer_lag(settings, topic)
    finally:
        _stop(job)
    newest = after + timedelta(minutes=5 * (count // arguments.sensors + 1))
    return {"rate": committed / elapsed, "lag_seconds": lag / arguments.follow_rate, "sent": sent, "committed": committed,
            "elapsed": elapsed, "newest": pd.Timestamp(newest)}


def _produce_elsewhere(path: Path, topic: str, rate: float, settings) -> int:
    """Send a file at `rate` from a process of its own: a producer thread in this process would
    take the interpreter lock from the pipeline's Python workers, which run here (LOOPBACK)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_produce_file, (str(path), topic, rate, settings.model_dump()))


def _produce_timed(path: str, topic: str, rate: float, every: int, event_id: str, settings: dict) -> dict[str, float]:
    """Send a file's lines at `rate`; every `every`-th is flushed on its own and its send time
    (wall clock: compared in another process) returned by event id."""
    from confluent_kafka import Producer

    from lakehouse.settings import Settings

    dataset = schemas.load(DATASET)
    producer = Producer({"bootstrap.servers": Settings(**settings).kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sampled: dict[str, float] = {}
    started = time.perf_counter()
    for index, line in enumerate(Path(path).read_text().splitlines()):
        record = json.loads(line)
        producer.produce(topic, value=line.encode(), key=record[dataset.entity].encode())
        if index % every == 0:
            producer.flush(10)
            sampled[record[event_id]] = time.time()
        producer.poll(0)
        ahead = (index + 1) / rate - (time.perf_counter() - started)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush(60)
    return sampled


def _poll_trino(planned: dict[str, tuple[float, str]], began: float, deadline: float, settings: dict) -> dict[str, float]:
    """Ask Trino's merged view for each planned event (id -> due time in seconds after `began`,
    event time) from its due time until it answers, every 50 ms; return when each was first seen
    (wall clock), by event id. The question names the events' time as well as their ids, as a
    user asking for recent rows would: Trino then skips the batch side and the older hot files,
    so the probes (20 a second) measure the rows' arrival, not a full scan's cost; by id alone
    they kept Trino busy on one of the two cores."""
    from lakehouse.settings import Settings
    from serving import trino_client

    dataset = schemas.load(DATASET)
    trino_settings = Settings(**settings)
    seen: dict[str, float] = {}
    while set(planned) - set(seen) and time.time() < deadline:
        elapsed = time.time() - began
        pending = [event for event, (due, _) in planned.items() if event not in seen and due <= elapsed]
        if pending:
            marks = ", ".join("?" for _ in pending)
            since = min(planned[event][1] for event in pending)
            found = trino_client.query(
                f"SELECT {dataset.event_id} AS event_id FROM {DATASET}.merged "
                f"WHERE {dataset.event_time} >= from_iso8601_timestamp(?) AND {dataset.event_id} IN ({marks})",
                [since, *pending], settings=trino_settings, role="analyst")
            now = time.time()
            for event in found.event_id:
                seen.setdefault(event, now)
        time.sleep(0.05)
    return seen


def _produce_file(path: str, topic: str, rate: float, settings: dict) -> int:
    from lakehouse.settings import Settings
    from speed.produce import produce

    return produce(schemas.load(DATASET), [Path(path)], topic, rate=rate, settings=Settings(**settings))


def _stop(job, timeout: float = 180.0) -> None:
    """Cancel a following job and wait until it has stopped committing: a job that fell behind
    holds a backlog, and its late commits must not count in the next run's samples."""
    from speed import metrics

    job.cancel()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if str(job.state).upper().endswith(("CANCELLED", "FAILED", "DONE", "STOPPED")):
                break
        except Exception:  # the job service may forget a cancelled job
            break
        time.sleep(0.5)
    seen = -1
    while len(metrics.LATENCY_SAMPLES) != seen and time.monotonic() < deadline:
        seen = len(metrics.LATENCY_SAMPLES)
        time.sleep(3)


def latency_and_freshness(settings, base, dataset, arguments, after: pd.Timestamp, folder: Path, *, trino_settings=None) -> dict:
    """Items 2 and 3: one Flink job following a topic fed at the latency rate; every Nth event is
    also timed from its send to its row in Trino's merged view. The serving bench calls it too,
    with the Trino it already runs (`trino_settings`), so freshness is measured one way only."""
    from local_services.trino import TrinoServer
    from serving import views
    from speed import metrics

    # A Trino of the bench's own (own folder and ports) over the bench's warehouse, unless given.
    trino = None
    if trino_settings is None:
        trino_settings = settings.model_copy(update={"services_root": str(folder / "services"), "trino_port": base.trino_port + 200})
        trino = TrinoServer(trino_settings)
        trino.start()
    result: dict = {"other_figures": []}
    seeds = _fresh_seeds()
    try:
        topic, job, after = _start_following(settings, dataset, arguments, after, seed=seeds)
        try:
            views.refresh(DATASET, trino_settings)
            count = int(arguments.latency_rate * arguments.latency_seconds)
            lines = json_lines(live_events(arguments.sensors, count, after, seed=seeds + 1))
            lines_file = _write_lines(lines, Path(settings.warehouse).parent / f"{topic}-latency.jsonl")
            # The events timed in Trino: every Nth, known before they are sent; their send times
            # (wall clock) come back from the producer's process.
            sampled_records = {index: json.loads(lines[index]) for index in range(0, count, arguments.freshness_every)}
            planned = {record[dataset.event_id]: (index / arguments.latency_rate, record[dataset.event_time])
                       for index, record in sampled_records.items()}
            metrics.LATENCY_SAMPLES.clear()
            metrics.SCORED_LATENCY_SAMPLES.clear()
            metrics.STAGE_TIMES.clear()
            metrics.OFFSET_COMMITS.clear()
            metrics.TRACE_STAGES = True
            sampler = StackSampler().__enter__()
            # The producer runs in a process of its own, as a real one would: in this process it
            # took the interpreter lock from the pipeline's Python workers (LOOPBACK runs them
            # here) and its own lag showed as the pipeline's.
            import multiprocessing

            # So does the Trino client that looks for the sampled events, as an analyst's would: in
            # this process its queries and their pandas frames took the interpreter lock from the
            # pipeline, and the pipeline's threads delayed its polls.
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                began = time.time()
                deadline = began + arguments.latency_seconds + 120
                sending_job = pool.apply_async(_produce_timed, (str(lines_file), topic, arguments.latency_rate, arguments.freshness_every,
                                                                dataset.event_id, settings.model_dump()))
                polling_job = pool.apply_async(_poll_trino, (planned, began, deadline, trino_settings.model_dump()))
                sampled = sending_job.get(timeout=arguments.latency_seconds + 300)
                while len(metrics.samples_of(metrics.LATENCY_SAMPLES, topic)) < count and time.time() < deadline:
                    time.sleep(0.2)
                sampler.__exit__()
                seen = polling_job.get(timeout=max(0.0, deadline - time.time()) + 30)
            time.sleep(2)  # the offset commits behind the last hot-table commit
            result["stacks"] = sampler.top()
        finally:
            metrics.TRACE_STAGES = False
            _stop(job)
    finally:
        if trino is not None:
            trino.stop()
    freshness = [seen[event_id] - sent for event_id, sent in sampled.items() if event_id in seen]
    commits = metrics.samples_of(metrics.LATENCY_SAMPLES, topic)
    scores = metrics.samples_of(metrics.SCORED_LATENCY_SAMPLES, topic)
    commit, scored, fresh = (_percentile(samples, 99) for samples in (commits, scores, freshness))
    result.update(
        commit_p99_ms_at_1k=commit * 1000 if commit is not None else None,
        scored_p99_ms_at_1k=scored * 1000 if scored is not None else None,
        freshness_p99_ms_at_1k=fresh * 1000 if fresh is not None else None,
        reason=f"no sample: {len(commits)} commits, {len(scores)} scores, "
               f"{len(freshness)} of {len(sampled)} sampled events seen in Trino",
    )
    for name, samples in (("arrival-to-commit", commits), ("arrival-to-scored", scores),
                          ("Kafka send to Trino's merged view", freshness)):
        median = _percentile(samples, 50)
        if median is not None:
            result["other_figures"].append({"name": f"Flink following Kafka at {arguments.latency_rate:,.0f} events/s: {name} p50",
                                            "value": median * 1000, "unit": "ms"})
    result["stages"] = stage_breakdown(topic)
    # The samples are a bounded buffer (speed/metrics.py): past its size this counts the newest ones kept.
    result["other_figures"].append({"name": f"Flink following Kafka: events with an arrival-to-commit sample (at most the newest "
                                            f"{metrics.LATENCY_SAMPLES.maxlen:,} are kept)",
                                    "value": float(len(commits)), "unit": f"of {count} sent"})
    result["other_figures"].append({"name": "freshness: sampled events seen in the merged view",
                                    "value": float(len(freshness)), "unit": f"of {len(sampled)}"})
    return result


def _main() -> None:
    """Run, then end without waiting for leftover threads: a cancelled job that fell far behind
    (the soak) can leave LOOPBACK SDK worker threads blocked on the stopped job server, which
    kept the process alive for more than 10 minutes after its report was written."""
    import atexit
    import os
    import sys

    from lakehouse import logs
    from lakehouse.settings import get_settings

    logs.configure(cache_dir=get_settings().cache_dir)
    code = 0
    try:
        run()
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then exit 1
        sys.excepthook(*sys.exc_info())
        code = 1
    atexit._run_exitfuncs()  # noqa: SLF001 - the interpreter's own exit step (log handlers flush)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _main()
