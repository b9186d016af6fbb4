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
# "context" (lakehouse/context_detector.py) runs with its defaults, a sub-sequence of one value,
# which needs no lag features.
CANDIDATES = ("declared", "knn", "lof", "iforest", "hbos", "ensemble", "context")
# The batch schedule of the production-like walk-forward: a batch run a day (the Airflow DAG runs
# hourly; daily and 6-hourly give the same NAB score here, 57.3 and 57.6, and daily costs 9 s).
DAILY = np.timedelta64(1, "D")
DAILY_LABEL = "declared, daily batch runs"
BEST_PUBLISHED = max((score, name) for name, score in nab.PUBLISHED_STANDARD.items() if name != "Perfect")
# The 20 NAB series the declared `metrics` features, detector and alert settings were chosen on
# (../shared/data/nab): a figure on any of them is in-sample.
TUNED_ON = frozenset({
    "art_daily_flatmiddle", "art_daily_jumpsdown", "art_daily_jumpsup", "art_daily_nojump", "art_increase_spike_density",
    "art_load_balancer_spikes", "ambient_temperature_system_failure", "cpu_utilization_asg_misconfiguration",
    "ec2_request_latency_system_failure", "machine_temperature_system_failure", "nyc_taxi", "rogue_agent_key_hold",
    "rogue_agent_key_updown", "TravelTime_387", "TravelTime_451", "occupancy_6005", "occupancy_t4013", "speed_6005",
    "speed_7578", "speed_t4013",
})


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
    tuned_on_series: int = 0  # how many of the series are in TUNED_ON (in-sample when > 0)
    # Per category, per candidate: NAB standard at the category's own best threshold, and its alerts.
    categories: dict[str, dict[str, dict]] = field(default_factory=dict)


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
    report = NabReport(series=len(corpus), rows=sum(series.rows for series in corpus), windows=sum(len(windows.get(series.entity, [])) for series in corpus),
                       tuned_on_series=sum(series.entity in TUNED_ON for series in corpus))
    offline_declared = None
    for name in candidates:
        if progress:
            progress(f"NAB walk-forward: {name}")
        started = time.perf_counter()
        evaluation, scored = walk_forward.run(dataset, candidate_spec(name), corpus, windows)
        report.seconds[f"offline_{name}"] = round(time.perf_counter() - started, 1)
        report.detectors[name] = evaluation.summary()
        for category, summary in per_category(corpus, scored, windows, candidate_spec(name).alert_quiet_events).items():
            report.categories.setdefault(category, {})[name] = summary
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


def per_category(corpus: list[walk_forward.NabSeries], scored: dict, windows, quiet_events: int) -> dict[str, dict]:
    """NAB standard per category, each at its own best threshold (and the alerts), from one walk-forward."""
    out = {}
    for category in sorted({series.category for series in corpus}):
        members = [series for series in corpus if series.category == category]
        relative = [walk_forward.to_nab(series, scored[series.entity], windows) for series in members]
        flags = [walk_forward.to_nab_alerts(series, scored[series.entity], windows, quiet_events) for series in members]
        profile = nab.PROFILES["standard"]
        out[category] = {"series": len(members), "standard": round(nab.optimise(relative, profile).normalised, 2),
                         "alerts_standard": round(nab.score(flags, profile, 0.5).normalised, 2)}
    return out


def _profiles(summary: dict) -> dict:
    """A walk-forward summary as the JSON layout: the three profiles at the best threshold, and for the alerts."""
    return {
        "best_threshold": {**summary["nab"], "threshold": summary["thresholds"]["standard"]},
        "alerts": {**summary["nab_with_own_flags"], "window_precision": summary["window_precision"],
                   "window_recall": summary["window_recall"], "window_f1": summary["window_f1"]},
    }


def nab_json(report: NabReport) -> dict:
    """`lakehouse eval nab --json`: one object, per detector NAB standard / low FP / low FN at the
    best threshold and for the alerts, with what is in-sample said."""
    in_sample = report.tuned_on_series > 0
    return {
        "series": report.series, "rows": report.rows, "windows": report.windows,
        "in_sample": in_sample,
        "in_sample_note": (
            f"{report.tuned_on_series} of {report.series} series are those the declared features, detector and alert settings were chosen on; "
            "best_threshold is NAB's protocol (one threshold chosen on the scored corpus)" if in_sample
            else "none of these series was tuned on; best_threshold is still chosen on the scored corpus (NAB's protocol)"
        ),
        "detectors": {name: _profiles(summary) for name, summary in report.detectors.items()},
        "system": _profiles(report.system) if report.system is not None else None,
        "system_matches_offline": report.system_matches_offline,
        "categories": report.categories,
        "published_standard": nab.PUBLISHED_STANDARD,
        "seconds": report.seconds,
    }
