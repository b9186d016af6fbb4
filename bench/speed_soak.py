"""Issue #14 item 5, the memory soak (`python -m bench.speed_bench --soak-minutes N`): one Flink
job follows a Kafka topic fed `--soak-rate` events/s (5,000) over `--soak-entities` entities
(10,000) for N minutes; the resident memory of every process involved is sampled every 10 s, and
its growth from the 2-minute mark to the end is the figure (target: under 10% for each; medians
of a minute at each end, see _summary).

Processes: the bench's own (the job is submitted from it with Beam's LOOPBACK environment, so the
Python SDK workers, state and scoring included, run in it), any child process it has, the Flink
job server JVM (an embedded Flink: job manager and task slots), the Kafka broker JVM, and the
producer (a process of its own, generating the events as it goes, so it holds no file of them).

State expiry: the entities are active in rotating blocks, `--soak-blocks` (4) of 2,500, one block
at a time for `--soak-block-seconds` (60), and the job runs with `--state_ttl_seconds` =
`--soak-ttl-seconds` (60). A block is then silent for 3 x 60 s between its turns, three times the
TTL, so its entities' state expires after each turn (the job's timer looks every tenth of the
TTL: 60 to 66 s after the last event) and is seeded again on its next turn: the state holds one
or two blocks (2,500 to 5,000 entities), never all 10,000, and every block comes back at least
once in 10 minutes, so expiry and re-seeding happen in the measured 8 minutes (in the job's time:
a job that falls behind reaches them later). The warm-up sends one event of each entity of the
first block only.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

import schemas
from bench import report

DATASET = "sensor_events"
SAMPLE_SECONDS = 10.0
MEASURED_FROM_SECONDS = 120.0  # the "after the first 2 minutes"
MB = 1024 * 1024


def run_soak(base, arguments, folder: Path) -> dict:
    """The soak, with its own warehouse under `folder`/soak (kept and reused with --work-folder: a
    trained warehouse of the same entity count is not trained again, its hot table is emptied)."""
    from lakehouse import constants
    from local_services.flink import FlinkJobServer
    from local_services.kafka import KafkaBroker
    from speed import metrics

    from bench.speed_bench import _consumer_lag, _start_following, _stop

    folder = folder / "soak"
    folder.mkdir(parents=True, exist_ok=True)
    settings = base.model_copy(update={"warehouse": str(folder / "warehouse")})
    entities, rate, seconds = arguments.soak_entities, arguments.soak_rate, arguments.soak_minutes * 60
    loads = {"start": report.load_note()}
    trained = folder / "trained.json"
    known = json.loads(trained.read_text()) if trained.exists() else {}
    training_seconds = None
    if known.get("entities") != entities:
        started = time.perf_counter()
        newest = _train_elsewhere(settings, entities, folder)
        training_seconds = time.perf_counter() - started
        known = {"entities": entities, "newest": newest, "training_seconds": training_seconds}
        trained.write_text(json.dumps(known))
        loads["trained"] = report.load_note()
    # Each soak starts from silver alone: an earlier soak's hot rows would change the seeding.
    shutil.rmtree(settings.table_uri(DATASET, constants.HOT_SCORES), ignore_errors=True)
    after = pd.Timestamp(known["newest"])

    started_here = []
    for service in (KafkaBroker(base), FlinkJobServer(base)):
        if service.pid() is None:
            started_here.append(service)
        service.start()
    metrics_port = _free_port()
    # The warm-up (job start, model loads) sends one event of each entity of the first block only
    # (entities 0 .. block - 1): the others' warm-up state would expire before their turn, and
    # each would then read its history again on its first event, a stall the bench would cause.
    job_arguments = SimpleNamespace(
        sensors=entities // arguments.soak_blocks, batch_size=arguments.batch_size,
        pipeline_arg=[*arguments.pipeline_arg, f"--state_ttl_seconds={arguments.soak_ttl_seconds:g}", f"--metrics_port={metrics_port}"],
    )
    dataset = schemas.load(DATASET)
    try:
        topic, job, after = _start_following(settings, dataset, job_arguments, after, seed=21)
        loads["warm"] = report.load_note()
        done_before = metrics.scrape(metrics_port, "lakehouse_speed_records_done_total", topic=topic)
        expired_before = metrics.scrape(metrics_port, "lakehouse_speed_entity_state_expired_total")
        results = multiprocessing.get_context("spawn").Queue()
        producer = multiprocessing.get_context("spawn").Process(
            target=_produce_rotating, name="soak-producer",
            args=(settings.model_dump(), topic, rate, seconds, entities, arguments.soak_blocks, arguments.soak_block_seconds,
                  after.isoformat(), results),
        )
        pids = {"flink": FlinkJobServer(base).pid(), "kafka": KafkaBroker(base).pid()}
        samples = []
        try:
            producer.start()
            started = time.monotonic()
            while producer.is_alive():
                samples.append(_sample(started, pids, producer.pid, metrics_port, topic, settings, done_before, expired_before))
                if len(samples) == 1 or abs(samples[-1]["t"] - MEASURED_FROM_SECONDS) < SAMPLE_SECONDS / 2:
                    loads[f"{samples[-1]['t']:.0f} s"] = report.load_note()
                next_at = started + len(samples) * SAMPLE_SECONDS
                while producer.is_alive() and time.monotonic() < next_at:
                    time.sleep(0.2)
            sent, produced_seconds = results.get(timeout=60)
            if sent is None:
                raise RuntimeError(f"the soak's producer failed: {produced_seconds}")
            producer.join(timeout=30)
            # The last sample: the producer is done; the job and services as they end the soak.
            samples.append(_sample(started, pids, None, metrics_port, topic, settings, done_before, expired_before))
            lag_at_end = _consumer_lag(settings, topic)
            loads["end"] = report.load_note()
        finally:
            if producer.is_alive():
                producer.terminate()
            _stop(job)
    finally:
        for service in reversed(started_here):
            service.stop()
    return _summary(samples, arguments, sent, produced_seconds, lag_at_end, loads, training_seconds, topic)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _processes(pids: dict, producer_pid: int | None) -> dict[str, int]:
    """label -> pid of every process involved now, children included (found again each sample)."""
    import psutil

    found = {"job (bench process, LOOPBACK Python SDK workers)": os.getpid()}
    services = {pid for pid in pids.values() if pid is not None}
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.pid in services or child.ppid() in services:
                continue  # a service this process started: counted under its own name below
            name = "multiprocessing resource tracker" if "resource_tracker" in " ".join(child.cmdline()) else child.name()
            found["producer" if child.pid == producer_pid else f"job child: {name} (pid {child.pid})"] = child.pid
        except psutil.NoSuchProcess:
            continue
    for name, label in (("flink", "Flink job server JVM"), ("kafka", "Kafka broker JVM")):
        if pids.get(name) is None:
            continue
        found[label] = pids[name]
        try:
            for child in psutil.Process(pids[name]).children(recursive=True):
                found[f"{name} child {child.name()} {child.pid}"] = child.pid
        except psutil.NoSuchProcess:
            continue
    return found


def _sample(started: float, pids: dict, producer_pid, metrics_port: int, topic: str, settings, done_before: float,
            expired_before: float) -> dict:
    import psutil

    from bench.speed_bench import _consumer_lag
    from speed import metrics

    rss = {}
    for label, pid in _processes(pids, producer_pid).items():
        try:
            rss[label] = psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_mb": {label: round(value / MB, 1) for label, value in rss.items()},
        "committed": int(metrics.scrape(metrics_port, "lakehouse_speed_records_done_total", topic=topic) - done_before),
        "state_expired": int(metrics.scrape(metrics_port, "lakehouse_speed_entity_state_expired_total") - expired_before),
        "lag_events": _consumer_lag(settings, topic),
        # The bench's latency buffers live in the job's process (bounded deques, speed/metrics.py).
        "latency_samples_held": len(metrics.LATENCY_SAMPLES) + len(metrics.SCORED_LATENCY_SAMPLES),
        "job_threads": threading.active_count(),
        "load_1min": round(os.getloadavg()[0], 1),
    }


def _summary(samples, arguments, sent, produced_seconds, lag_at_end, loads, training_seconds, topic) -> dict:
    """Per process: RSS at 2 minutes and at the end, and the growth between them.

    Each is the median of a minute of samples (2 to 3 minutes; the last minute) beside the single
    samples at those times: the job's process swings by 10% from one sample to the next (a bundle's
    batches, a Delta commit or compaction in flight), which would decide a point-to-point growth;
    the peak after 2 minutes is kept too (`peak_growth_pct`)."""
    last = samples[-1]
    processes = {}
    for label in {label for sample in samples for label in sample["rss_mb"]}:
        series = [(sample["t"], sample["rss_mb"][label]) for sample in samples if label in sample["rss_mb"]]
        after = [(t, rss) for t, rss in series if t >= MEASURED_FROM_SECONDS]
        first_minute = [rss for t, rss in after if t < MEASURED_FROM_SECONDS + 60]
        last_minute = [rss for t, rss in series if t >= series[-1][0] - 60]
        item = {"rss_mb_at_start": series[0][1], "rss_mb_at_2min": after[0][1] if after else None, "rss_mb_at_end": series[-1][1],
                "rss_mb_2_to_3min_median": None, "rss_mb_last_minute_median": None, "growth_pct": None, "peak_growth_pct": None,
                "point_growth_pct": None, "rss_mb_max_after_2min": max((rss for _, rss in after), default=None)}
        # Growth needs the last minute to lie after the first minute past the 2-minute mark.
        if first_minute and series[-1][0] - 60 >= MEASURED_FROM_SECONDS + 60 - SAMPLE_SECONDS:
            start, end = float(np.median(first_minute)), float(np.median(last_minute))
            item.update(rss_mb_2_to_3min_median=start, rss_mb_last_minute_median=end, growth_pct=(end - start) / start * 100,
                        peak_growth_pct=(item["rss_mb_max_after_2min"] - start) / start * 100,
                        point_growth_pct=(item["rss_mb_at_end"] - item["rss_mb_at_2min"]) / item["rss_mb_at_2min"] * 100)
        processes[label] = item
    growths = {label: item["growth_pct"] for label, item in processes.items() if item["growth_pct"] is not None}
    return {
        "rss_growth_pct": max(growths.values()) if growths else None,
        "rss_growth_of": max(growths, key=growths.get) if growths else None,
        "reason": None if growths else f"the soak ran {last['t']:.0f} s: growth needs at least {MEASURED_FROM_SECONDS + 120:.0f} s",
        "processes": dict(sorted(processes.items())),
        "entities": arguments.soak_entities, "rate_asked": arguments.soak_rate, "minutes": arguments.soak_minutes,
        "blocks": arguments.soak_blocks, "block_seconds": arguments.soak_block_seconds, "ttl_seconds": arguments.soak_ttl_seconds,
        "sent": sent, "produced_seconds": produced_seconds, "rate_reached": sent / produced_seconds,
        "committed": last["committed"], "committed_per_s": last["committed"] / last["t"],
        "lag_events_at_end": lag_at_end, "lag_seconds_of_input_at_end": lag_at_end / arguments.soak_rate,
        "state_expired": last["state_expired"], "state_expired_at_least_expected": _expected_expiries(samples, arguments),
        "training_seconds": training_seconds, "topic": topic, "loads": loads, "timeline": samples,
    }


def _expected_expiries(samples, arguments) -> int:
    """Entities whose state must have expired by the last sample: those of each block turn whose
    last event the job had committed more than 110% of the TTL before it (the job's timer looks
    every tenth of the TTL). Job time, not the producer's: a job that falls behind reaches the end
    of a turn later. A lower bound: an entity can go silent before its turn ends."""
    block = arguments.soak_entities // arguments.soak_blocks
    per_turn = arguments.soak_block_seconds * arguments.soak_rate
    end = samples[-1]["t"]
    turns = 0
    while True:
        reached = next((sample["t"] for sample in samples if sample["committed"] >= (turns + 1) * per_turn), None)
        if reached is None or reached + 1.1 * arguments.soak_ttl_seconds > end:
            return turns * block
        turns += 1


def figures(soak: dict, target: float) -> list[dict]:
    """The soak's rows of the report; the first is the one with the target."""
    head = (f"soak {soak['minutes']:g} min at {soak['rate_asked']:,.0f} events/s over {soak['entities']:,} entities "
            f"({soak['blocks']} blocks rotating every {soak['block_seconds']:g} s, state TTL {soak['ttl_seconds']:g} s)")
    rows = []
    if soak["rss_growth_pct"] is not None:
        rows.append({"name": f"{head}: largest RSS growth of a process after the first 2 minutes ({soak['rss_growth_of']})",
                     "value": soak["rss_growth_pct"],
                     "unit": "%", "reference": "design target", "reference_value": target})
    for label, item in soak["processes"].items():
        if item["growth_pct"] is not None:
            rows.append({"name": f"soak: RSS growth of {label} (medians {item['rss_mb_2_to_3min_median']:,.0f} MB at 2-3 min, "
                                 f"{item['rss_mb_last_minute_median']:,.0f} MB in the last minute; peak "
                                 f"{item['rss_mb_max_after_2min']:,.0f} MB)", "value": item["growth_pct"], "unit": "%"})
    rows.append({"name": f"soak: events committed per second ({soak['committed']:,} in {soak['timeline'][-1]['t']:.0f} s)",
                 "value": soak["committed_per_s"], "unit": "events/s", "reference": "rate asked", "reference_value": soak["rate_asked"]})
    rows.append({"name": f"soak: rate the producer reached ({soak['sent']:,} events in {soak['produced_seconds']:.0f} s)",
                 "value": soak["rate_reached"], "unit": "events/s", "reference": "rate asked", "reference_value": soak["rate_asked"]})
    rows.append({"name": f"soak: consumer lag at the end ({soak['lag_events_at_end']:,} events), in seconds of input",
                 "value": soak["lag_seconds_of_input_at_end"], "unit": "s"})
    rows.append({"name": "soak: entity states expired by the TTL (lakehouse_speed_entity_state_expired_total)",
                 "value": float(soak["state_expired"]), "unit": "entities", "reference": "at least, by the job's progress",
                 "reference_value": float(soak["state_expired_at_least_expected"])})
    return rows


def _train_elsewhere(settings, entities: int, folder: Path) -> str:
    """Train in a process of its own: its Spark JVM ends with it, before the soak is measured."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_train, (settings.model_dump(), entities, str(folder)))


def _train(settings: dict, entities: int, folder: str) -> str:
    """The least history the declared detector trains on (`min_train_rows` events per entity,
    and at least two feature windows), through the batch layer; returns its newest event time."""
    from app.wiring import spark_session
    from batch.job import run_batch
    from bench.speed_bench import json_lines, live_events
    from lakehouse import logs
    from lakehouse.settings import Settings

    settings = Settings(**settings)
    logs.configure(cache_dir=settings.cache_dir)
    dataset = schemas.load(DATASET)
    per_entity = max(dataset.detector.min_train_rows, 2 * dataset.features.window) + 4
    history = live_events(entities, entities * per_entity, pd.Timestamp("2024-01-01T00:00:00Z"), seed=5)
    path = Path(folder) / "history.jsonl"
    with path.open("w") as stream:
        for start in range(0, len(history), 200_000):
            stream.write("\n".join(json_lines(history.iloc[start : start + 200_000])) + "\n")
    newest = history.event_time.max().isoformat()
    del history
    try:
        run_batch(DATASET, [str(path)], settings=settings, spark=spark_session(settings))
    except Exception as error:  # the project's errors do not all unpickle in the parent
        raise RuntimeError(f"the soak's training run failed: {type(error).__name__}: {error}") from None
    path.unlink()
    return newest


def _produce_rotating(settings: dict, topic: str, rate: float, seconds: float, entities: int, blocks: int,
                      block_seconds: float, after: str, results) -> None:
    """Send `rate` events/s for `seconds`, block `(t // block_seconds) % blocks` of the entities
    active at time t, its entities in turn; each entity's readings continue its own series."""
    from confluent_kafka import Producer

    from bench.speed_bench import json_lines, readings
    from lakehouse.settings import Settings

    settings = Settings(**settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    failures: list[str] = []

    def delivered(error, message) -> None:
        if error is not None:
            failures.append(str(error))

    members = np.array_split(np.arange(entities), blocks)
    cursor = [0] * blocks
    steps = np.zeros(entities, dtype=np.int64)
    rng = np.random.default_rng(22)
    after = pd.Timestamp(after)
    sent = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(rate * elapsed) - sent
        if due <= 0:
            time.sleep(0.02)
            continue
        block = int(elapsed // block_seconds) % blocks
        size = len(members[block])
        turn = cursor[block] + np.arange(due)
        sensor = members[block][turn % size]
        step = steps[sensor] + np.arange(due) // size  # an entity's k-th reading in this chunk: k full turns later
        cursor[block] = int(turn[-1] + 1) % size
        np.add.at(steps, sensor, 1)
        events = readings(sensor, step, after, rng)
        for key, line in zip(events.entity_id.tolist(), json_lines(events)):
            while True:
                try:
                    producer.produce(topic, value=line.encode(), key=key.encode(), on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
        producer.poll(0)
        sent += due
    elapsed = time.perf_counter() - started
    remaining = producer.flush(60)
    if remaining or failures:
        results.put((None, f"kafka: {remaining} messages not delivered, {len(failures)} failed: {failures[:3]}"))
    else:
        results.put((sent, elapsed))
