"""The detection-quality benchmark: NAB through the system and per detector, ODDS per table.

Used by `lakehouse eval nab` and bench/quality_bench.py. Every figure is set next to the
published one it answers (quality.nab.PUBLISHED_STANDARD, quality.odds.PUBLISHED).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lakehouse.settings import Settings
from quality import nab, nab_run, walk_forward
import schemas
from schemas.declaration import DetectorSpec

# Detectors compared offline on the declared features; "declared" is schemas/metrics.yaml's.
CANDIDATES = ("declared", "knn", "lof", "iforest", "hbos", "ensemble")
# The batch schedule of the production-like walk-forward: a batch run a day (the Airflow DAG runs
# hourly; daily and 6-hourly give the same NAB score here, 57.3 and 57.6, and daily costs 9 s).
DAILY = np.timedelta64(1, "D")
DAILY_LABEL = "declared, daily batch runs"
BEST_PUBLISHED = max((score, name) for name, score in nab.PUBLISHED_STANDARD.items() if name != "Perfect")


def candidate_spec(name: str) -> DetectorSpec:
    declared = schemas.load(nab_run.DATASET).detector.model_copy(update={"min_train_rows": nab_run.MIN_TRAIN_ROWS})
    if name == "declared":
        return declared
    return DetectorSpec.model_validate({**declared.model_dump(), "name": name, "params": {}})


@dataclass
class NabReport:
    series: int
    rows: int
    windows: int
    detectors: dict[str, dict] = field(default_factory=dict)  # offline walk-forward, per candidate
    system: dict | None = None  # the declared detector through Spark + Beam
    system_matches_offline: float | None = None  # largest |relative score difference|
    stages: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def nab_benchmark(
    folder: Path,
    *,
    settings: Settings | None = None,
    workspace: Path | None = None,
    candidates: tuple[str, ...] = CANDIDATES,
    system: bool = True,
    only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    spark=None,
) -> NabReport:
    """Offline walk-forward NAB scores per candidate; with `system`, the declared detector's NAB
    score measured through the real batch and speed layers (settings' warehouse is replaced by
    one under `workspace`)."""
    dataset = schemas.load(nab_run.DATASET)
    corpus, windows = walk_forward.nab_corpus(folder, only)
    report = NabReport(series=len(corpus), rows=sum(series.rows for series in corpus), windows=sum(len(windows.get(series.entity, [])) for series in corpus))
    offline_declared = None
    for name in candidates:
        if progress:
            progress(f"NAB walk-forward: {name}")
        started = time.perf_counter()
        evaluation, scored = walk_forward.run(dataset, candidate_spec(name), corpus, windows)
        report.seconds[f"offline_{name}"] = round(time.perf_counter() - started, 1)
        report.detectors[name] = evaluation.summary()
        if name == "declared":
            offline_declared = scored
            if progress:
                progress(f"NAB walk-forward: {DAILY_LABEL}")
            started = time.perf_counter()
            evaluation, _ = walk_forward.run(dataset, candidate_spec(name), corpus, windows, retrain_every=DAILY)
            report.seconds["offline_declared_daily"] = round(time.perf_counter() - started, 1)
            report.detectors[DAILY_LABEL] = evaluation.summary()
    if system:
        if settings is None or workspace is None or spark is None:
            raise ValueError("the system run needs settings, a workspace and a Spark session")
        run_settings = settings.model_copy(update={"warehouse": str(workspace / "warehouse")})
        started = time.perf_counter()
        run = nab_run.run(corpus, run_settings, workspace, spark=spark, progress=progress)
        report.seconds["system"] = round(time.perf_counter() - started, 1)
        if run.look_ahead_rows:
            raise AssertionError(f"NAB system run: {run.look_ahead_rows} rows scored by a model that had seen them")
        online = {series.entity: nab_run.as_walk_forward(run, series) for series in corpus}
        relative = [walk_forward.to_nab(series, online[series.entity], windows) for series in corpus]
        flags = [walk_forward.to_nab_alerts(series, online[series.entity], windows, dataset.detector.alert_quiet_events) for series in corpus]
        report.system = walk_forward.evaluate(relative, flags).summary()
        report.stages = run.stages
        if offline_declared is not None:
            report.system_matches_offline = float(
                max(
                    np.nanmax(np.abs(online[entity]["relative_score"].to_numpy() - offline_declared[entity]["relative_score"].to_numpy()), initial=0.0)
                    for entity in online
                )
            )
    return report
