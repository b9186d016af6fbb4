"""Seeded synthetic `sensor_events` with planted, labelled anomalies and planted bad records.

Every sensor gets one anomaly of each kind, and two temperature spikes: a pressure level shift, a
vibration drift and a stuck temperature reading. Labels say which event carries which anomaly,
so tests and `lakehouse eval` can check what the detectors flag.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ANOMALY_KINDS = ("spike", "level_shift", "drift", "stuck")


@dataclass(frozen=True)
class GeneratorConfig:
    sensors: int = 8
    days: float = 6.0
    interval_minutes: int = 5
    start: datetime = datetime(2024, 1, 1, tzinfo=timezone.utc)
    seed: int = 42

    @property
    def periods(self) -> int:
        return int(self.days * 24 * 60 / self.interval_minutes)


def generate(config: GeneratorConfig = GeneratorConfig()) -> pd.DataFrame:
    """Clean events (all valid), sorted by event time, with an `anomaly` label column ('' = normal)."""
    rng = np.random.default_rng(config.seed)
    periods = config.periods
    times = [config.start + timedelta(minutes=config.interval_minutes * step) for step in range(periods)]
    day_phase = 2 * np.pi * np.arange(periods) * config.interval_minutes / (24 * 60)
    frames = []
    for sensor in range(config.sensors):
        base = 55 + 3 * sensor
        temperature = base + 5 * np.sin(day_phase + sensor) + rng.normal(0, 0.3, periods)
        pressure = 5 + 0.4 * np.sin(day_phase + 0.5 * sensor) + rng.normal(0, 0.05, periods)
        vibration = np.abs(2 + rng.normal(0, 0.15, periods))
        labels = np.array([""] * periods, dtype=object)
        # Anomalies land in the last 60% of the series, so there is clean history to learn from;
        # their lengths scale down for short series.
        jitter = lambda fraction: int(periods * (fraction + rng.uniform(0, 0.02)))  # noqa: E731
        spike, shift, drift, stuck, late_spike = jitter(0.45), jitter(0.56), jitter(0.68), jitter(0.86), jitter(0.95)
        shift_length = max(5, min(30, periods // 40))
        drift_length = max(10, min(100, periods // 15))
        stuck_length = max(5, min(40, periods // 30))
        temperature[[spike, late_spike]] += 25
        labels[[spike, late_spike]] = "spike"
        pressure[shift : shift + shift_length] += 3
        labels[shift : shift + shift_length] = "level_shift"
        vibration[drift : drift + drift_length] += np.linspace(0, 12, drift_length)
        labels[drift : drift + drift_length] = "drift"
        temperature[stuck : stuck + stuck_length] = temperature[stuck]
        labels[stuck : stuck + stuck_length] = "stuck"
        status = np.where(labels == "", "ok", "warning")
        status = np.where(rng.random(periods) < 0.002, "maintenance", status)
        frames.append(
            pd.DataFrame(
                {
                    "event_id": [rng.bytes(16).hex() for _ in range(periods)],
                    "entity_id": f"sensor-{sensor:03d}",
                    "event_time": times,
                    "temperature": np.round(temperature, 4),
                    "pressure": np.round(pressure, 4),
                    "vibration": np.round(vibration, 4),
                    "status": status,
                    "anomaly": labels,
                }
            )
        )
    events = pd.concat(frames, ignore_index=True)
    return events.sort_values(["event_time", "entity_id"], kind="stable").reset_index(drop=True)


def to_records(events: pd.DataFrame) -> list[dict]:
    """Events as JSON-ready dicts (ISO timestamps with Z), without the label column."""
    records = []
    for row in events.drop(columns=["anomaly"]).to_dict("records"):
        row["event_time"] = row["event_time"].strftime("%Y-%m-%dT%H:%M:%SZ")
        records.append(row)
    return records


# Each corruption breaks exactly one rule, named so tests can check the quarantine reasons.
CORRUPTIONS = {
    "temperature.type": lambda record: {**record, "temperature": "n/a"},
    "pressure.range": lambda record: {**record, "pressure": 250.0},
    "status.allowed_values": lambda record: {**record, "status": "exploded"},
    "entity_id.pattern": lambda record: {**record, "entity_id": "SENSOR_X"},
    "event_time.type": lambda record: {**record, "event_time": "2024-13-45T99:00:00Z"},
    "vibration.not_null": lambda record: {key: value for key, value in record.items() if key != "vibration"},
}


@dataclass
class Planted:
    """Input records with the bad ones and duplicates that were planted in them."""

    records: list[dict]
    bad: dict[str, str]  # event_id -> the rule its record breaks
    duplicates: int


def plant_problems(records: list[dict], *, seed: int, bad_rate: float = 0.004, duplicate_rate: float = 0.004) -> Planted:
    """Corrupt a few records (one rule each) and repeat a few others verbatim.

    The choice depends only on the seed and the event id, so an event that reaches both the batch
    files and a speed replay is corrupted (or repeated) the same way in both, as a real bad event
    would be.
    """
    output: list[dict] = []
    bad: dict[str, str] = {}
    duplicates = 0
    rules = sorted(CORRUPTIONS)
    for record in records:
        digest = hashlib.sha256(f"{seed}:{record['event_id']}".encode()).digest()
        draw = int.from_bytes(digest[:4], "big") / 2**32
        if draw < bad_rate:
            rule = rules[digest[4] % len(rules)]
            output.append(CORRUPTIONS[rule](record))
            bad[record["event_id"]] = rule
        elif draw < bad_rate + duplicate_rate:
            output += [record, dict(record)]
            duplicates += 1
        else:
            output.append(record)
    return Planted(output, bad, duplicates)


def write_json_lines(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as stream:
        for record in records:
            stream.write(json.dumps(record) + "\n")
    return path
