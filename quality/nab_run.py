"""The NAB evaluation through the real system: Spark batch runs train, the Beam pipeline scores.

For every series (the `metrics` dataset: one entity per NAB file), stage k of the cycle is:
  1. the batch layer ingests the series' rows up to its k-th cut point as CSV files (as late
     files land in the lake), MERGEs them into silver and trains a model per entity on all of
     silver: the history available at that point, and nothing after it;
  2. the speed layer replays the rows from that cut to the next one, scores each with the newest
     registered model of its entity, and upserts the hot table;
  3. the hot rows of that stretch are kept as the run's online scores, before the next batch run
     expires them (and rescored them in-sample: the batch view is not what is evaluated).
Every online score is then checked to come from a model whose training data ends before the
event (no look-ahead), and scored with quality.nab.

The run gets its own warehouse (`lakehouse eval nab` and the benchmark use <work>/eval/nab): it
resets the `metrics` dataset there, and the user's warehouse is untouched.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from batch.job import run_batch
from lakehouse import constants, storage
from lakehouse.errors import LakehouseError
from lakehouse.settings import Settings
from lakehouse.warehouse import reset_dataset
from quality import labels
from quality.scores import with_models
from quality.walk_forward import RETRAIN_FRACTIONS, NabSeries, cut_points
import schemas
from speed.pipeline import run as run_speed
from speed.produce import messages

log = logging.getLogger(__name__)

DATASET = "metrics"
# NAB's probationary period of a short series (1,127 rows in realTraffic) is 169 rows: the
# declared minimum of 200 rows would leave it without a model for its first stretch.
MIN_TRAIN_ROWS = 100


@dataclass
class SystemRun:
    scores: pd.DataFrame  # entity_id, event_time, score, is_anomaly, model_version, relative_score, train_end
    stages: list[dict] = field(default_factory=list)  # per stage: batch and speed counts and seconds

    @property
    def look_ahead_rows(self) -> int:
        """Scored rows whose model had seen the event or anything after it (must be 0)."""
        scored = self.scores.dropna(subset=["train_end"])
        return int((scored["train_end"] >= scored["event_time"]).sum())


def _write_csv(series: NabSeries, start: int, end: int, path: Path) -> None:
    part = series.frame.iloc[start:end]
    # The timestamp as NAB writes it: it is part of the event id (series@timestamp).
    stamps = pd.to_datetime(part["event_time"]).dt.strftime("%Y-%m-%d %H:%M:%S")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": stamps, "value": part["value"].to_numpy()}).to_csv(path, index=False)


def _write_replay(csv_path: Path, path: Path) -> list[str]:
    """The CSV rows as the JSON messages the speed layer reads; returns their event ids."""
    dataset = schemas.load(DATASET)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = []
    with open(path, "w") as stream:
        for _, value in messages(dataset, csv_path):
            record = json.loads(value)
            ids.append(f"{record['entity_id']}@{record['timestamp']}")
            stream.write(value + "\n")
    return ids


def run(
    corpus: list[NabSeries],
    settings: Settings,
    workspace: Path,
    *,
    fractions: tuple[float, ...] = RETRAIN_FRACTIONS,
    detector: dict | None = None,
    spark,
    progress: Callable[[str], None] | None = None,
) -> SystemRun:
    """Run the whole corpus through batch and speed layers; return the online scores. `spark` is
    the session the batch runs use (the caller builds it: app.wiring.spark_session locally)."""
    dataset = schemas.load(DATASET)
    reset_dataset(settings, DATASET)
    inputs = workspace / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    overrides = {"min_train_rows": MIN_TRAIN_ROWS, **(detector or {})}
    cuts = {series.entity: cut_points(series.rows, fractions) for series in corpus}
    stages = max(len(points) for points in cuts.values())
    online, summaries = [], []
    for stage in range(stages):
        summary: dict = {"stage": stage + 1}
        batch_files, replay_files, replay_ids = [], [], []
        for series in corpus:
            points = cuts[series.entity]
            if stage >= len(points):
                continue
            start = points[stage - 1] if stage else 0
            end_of_stretch = points[stage + 1] if stage + 1 < len(points) else series.rows
            batch_csv = inputs / f"batch-{stage + 1}" / f"{series.entity}.csv"
            _write_csv(series, start, points[stage], batch_csv)
            batch_files.append(str(batch_csv))
            speed_csv = inputs / f"speed-{stage + 1}" / "csv" / f"{series.entity}.csv"
            _write_csv(series, points[stage], end_of_stretch, speed_csv)
            replay = inputs / f"speed-{stage + 1}" / f"{series.entity}.jsonl"
            replay_ids += _write_replay(speed_csv, replay)
            replay_files.append(replay)
        if progress:
            progress(f"stage {stage + 1}/{stages}: batch run")
        started = time.perf_counter()
        record = run_batch(DATASET, batch_files, settings=settings, spark=spark, detector=overrides)
        summary.update(batch_rows=record.input_rows, model_version=record.model_version, batch_seconds=round(time.perf_counter() - started, 1))
        if progress:
            progress(f"stage {stage + 1}/{stages}: speed replay of {len(replay_ids)} events")
        started = time.perf_counter()
        result = run_speed(["--dataset", DATASET, "--input", str(inputs / f"speed-{stage + 1}" / "*.jsonl")], settings=settings)
        summary.update(speed_events=len(replay_ids), speed_scored=result.scored, dead_letters=result.dead_letters, speed_seconds=round(time.perf_counter() - started, 1))
        if result.dead_letters:
            raise LakehouseError(f"NAB stage {stage + 1}: {result.dead_letters} events dead-lettered; see the quarantine table")
        online.append(_hot_rows(settings, dataset, set(replay_ids)))
        summaries.append(summary)
        log.info("NAB stage %s: %s", stage + 1, summary)
    scores = with_models(pd.concat(online, ignore_index=True), settings, DATASET)
    return SystemRun(scores=scores, stages=summaries)


def _hot_rows(settings: Settings, dataset, event_ids: set[str]) -> pd.DataFrame:
    table = storage.open_table(settings.table_uri(DATASET, constants.HOT_SCORES))
    columns = [dataset.event_id, dataset.entity, dataset.event_time, "score", "is_anomaly", "model_version"]
    frame = table.to_pyarrow_dataset().to_table(columns=columns).to_pandas()
    frame = frame[frame[dataset.event_id].isin(event_ids)]
    missing = len(event_ids) - len(frame)
    if missing:
        raise LakehouseError(f"NAB run: {missing} replayed events have no row in the hot table")
    frame.columns = ["event_id", "entity_id", "event_time", "score", "is_anomaly", "model_version"]
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True).dt.tz_localize(None).astype("datetime64[us]")
    frame["entity_id"] = frame["entity_id"].astype(str)
    return frame


def as_walk_forward(run: SystemRun, series: NabSeries) -> pd.DataFrame:
    """One series' online scores in quality.walk_forward's layout (row positions in the series)."""
    own = run.scores[run.scores["entity_id"] == series.entity]
    positions = pd.Series(np.arange(series.rows), index=series.frame["event_time"].to_numpy())
    return pd.DataFrame(
        {
            "row": positions.loc[own["event_time"].to_numpy()].to_numpy(),
            "event_time": own["event_time"].to_numpy(),
            "score": own["score"].to_numpy(dtype=float),
            "relative_score": own["relative_score"].to_numpy(dtype=float),
            "is_anomaly": own["is_anomaly"].fillna(False).astype(bool).to_numpy(),
            "model_version": own["model_version"].to_numpy(),
            "train_end": own["train_end"].to_numpy(),
        }
    )


def windows_of(corpus: list[NabSeries], windows: labels.Windows) -> labels.Windows:
    return {series.entity: windows.get(series.entity, []) for series in corpus}
