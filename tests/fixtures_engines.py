"""Fixtures for tests that run Spark (with Delta) and Beam: isolated warehouses, one Spark session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from pyspark.sql import SparkSession

from lakehouse import generate as generator
from lakehouse.settings import Settings, get_settings


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local Spark session with Delta for the whole test run (starting one costs ~10 s)."""
    from app.wiring import spark_session

    session = spark_session(get_settings(), app_name="lakehouse-tests")
    yield session
    session.stop()


@pytest.fixture
def settings() -> Settings:
    """The test run's settings (conftest.py points them at the test's folders and ports); the
    layers take settings as an argument, as the composition root gives them."""
    return get_settings()


@pytest.fixture
def warehouse(tmp_path: Path) -> Settings:
    """Settings whose warehouse is a fresh temporary folder (Delta tables are addressed by path)."""
    return get_settings().model_copy(update={"warehouse": str(tmp_path / "warehouse")})


@dataclass
class SensorInputs:
    events: object  # pandas DataFrame with the `anomaly` labels
    history: generator.Planted
    recent: generator.Planted
    history_files: list[Path]
    recent_file: Path


def make_sensor_inputs(folder: Path, *, sensors: int = 3, days: float = 3.0, seed: int = 11, interval_minutes: int = 5) -> SensorInputs:
    """History (first two thirds, two JSON files) and a recent replay file, with planted problems."""
    config = generator.GeneratorConfig(sensors=sensors, days=days, seed=seed, interval_minutes=interval_minutes)
    events = generator.generate(config)
    split = events.event_time.iloc[int(len(events) * 2 / 3)]
    history = generator.plant_problems(generator.to_records(events[events.event_time < split]), seed=seed)
    recent = generator.plant_problems(generator.to_records(events[events.event_time >= split]), seed=seed + 1)
    middle = len(history.records) // 2
    files = [
        generator.write_json_lines(history.records[:middle], folder / "history" / "part-1.jsonl"),
        generator.write_json_lines(history.records[middle:], folder / "history" / "part-2.jsonl"),
    ]
    recent_file = generator.write_json_lines(recent.records, folder / "recent" / "replay.jsonl")
    return SensorInputs(events, history, recent, files, recent_file)


def delta_schema(table: str | pa.Schema) -> dict:
    """The Delta schema (as Delta's JSON) of a table at a URI, or the one an Arrow schema declares.

    Tables Spark writes and tables delta-rs writes compare with a declaration in Delta's own
    terms: column order, types, nullability (a list's element names, which differ between
    engines, are not part of it).
    """
    schema = DeltaSchema.from_arrow(table) if isinstance(table, pa.Schema) else DeltaTable(table).schema()
    return json.loads(schema.to_json())
