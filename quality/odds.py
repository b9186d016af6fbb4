"""ODDS tabular outlier benchmark: ROC-AUC per table and detector, next to PyOD's published figures.

Protocol (PyOD's benchmark): for each of `splits` random 60/40 splits (not stratified, as PyOD's),
fit on the 60% without labels, score the 40% with decision_function, and take the ROC-AUC; report
the mean and standard deviation. Features go through the project's own detectors.fit with
standard scaling, fitted on the training part, as PyOD's `standardizer` does. No detector is
chosen per table: that would need the test labels.

Every `.mat` table in the folder is run (ODDS' layout: X, y). Where PyOD publishes the table
(quality/odds_published.py, all its detectors), each figure is set against the best published
detector of that table and against the mean of all published detectors.

    python -m quality.odds [--splits 10] [--scale standard|robust] [--data DIR] [--detector NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy.io import loadmat
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from lakehouse import detectors, logs
from lakehouse.logs import frame_table, results
from quality import odds_published, reference_data_dir
from schemas.declaration import DetectorSpec

DETECTORS = ("iforest", "hbos", "knn", "lof", "ensemble")
# Fixed seeds: the splits and IForest's trees are the same on every run.
SEED = 42
# The ensemble's design (members, max over mean, z-score over IQR) was chosen on these tables
# (../shared/data/odds, other split seeds): its figures there are in-sample.
ENSEMBLE_DESIGN_TABLES = frozenset({"cardio", "pima", "wbc", "vowels", "satellite", "shuttle"})


def in_sample(table: str, detector: str) -> bool:
    return detector == "ensemble" and table in ENSEMBLE_DESIGN_TABLES


def missing_reason(folder: Path) -> str | None:
    """Why the benchmark cannot run on this folder, or None when it can."""
    if not Path(folder).is_dir():
        return f"no ODDS folder at {folder} (../shared/data/odds next to the project, or set LAKEHOUSE_REFERENCE_DATA)"
    if not available(folder):
        return f"no ODDS tables (.mat) in {folder}"
    return None


def available(folder: Path) -> list[str]:
    """Every .mat table in the folder, by name (empty when the folder is absent)."""
    folder = Path(folder)
    return sorted(path.stem for path in folder.glob("*.mat")) if folder.is_dir() else []


def load(name: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = loadmat(Path(folder) / f"{name}.mat")
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5) files, as a few ODDS tables are
        raise ValueError(f"{name}.mat: {error} (a MATLAB v7.3 file; save it as v7 or earlier)") from error
    if "X" not in data or "y" not in data:
        raise ValueError(f"{name}.mat: no X and y (ODDS' layout)")
    return np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).ravel().astype(int)


def spec_for(name: str, scale: str = "standard") -> DetectorSpec:
    params = {"random_state": SEED} if name == "iforest" else {}
    # contamination only sets the threshold; ROC-AUC uses the scores.
    return DetectorSpec(name=name, scale=scale, contamination=0.1, params=params, min_train_rows=10)


def _split_auc(spec: DetectorSpec, features: np.ndarray, labels: np.ndarray, random_state: int) -> float:
    train, test, _, test_labels = train_test_split(features, labels, test_size=0.4, random_state=random_state)
    model, _ = detectors.fit(spec, train, [f"x{index}" for index in range(features.shape[1])])
    scores, _ = model.score(test)
    return float(roc_auc_score(test_labels, scores))


def evaluate(spec: DetectorSpec | str, features: np.ndarray, labels: np.ndarray, splits: int = 10, seed: int = SEED,
             jobs: int | None = None) -> tuple[float, float]:
    """Mean and standard deviation of the test ROC-AUC over random 60/40 splits (seeds seed .. seed
    + splits - 1). The splits run in `jobs` processes (default: every core); each is independent
    and seeded, so the result does not depend on `jobs`."""
    if isinstance(spec, str):
        spec = spec_for(spec)
    jobs = jobs or min(splits, os.cpu_count() or 1)
    aucs = Parallel(n_jobs=jobs)(delayed(_split_auc)(spec, features, labels, seed + split) for split in range(splits))
    return float(np.mean(aucs)), float(np.std(aucs))


def run(folder: Path, detector_names: tuple[str, ...] = DETECTORS, splits: int = 10, scale: str = "standard",
        jobs: int | None = None, skipped: dict[str, str] | None = None) -> list[dict]:
    """One row per table and detector, with PyOD's published figures where it publishes the table
    (None otherwise). A table that cannot be read is left out, its reason put in `skipped`."""
    rows = []
    for table in available(folder):
        try:
            features, labels = load(table, folder)
        except ValueError as error:
            if skipped is not None:
                skipped[table] = str(error)
            continue
        best = odds_published.best(table)
        published_mean = odds_published.mean(table)
        for name in detector_names:
            started = time.perf_counter()
            mean, std = evaluate(spec_for(name, scale), features, labels, splits, jobs=jobs)
            same = odds_published.SAME_DETECTOR.get(name)
            rows.append(
                {
                    "table": table, "rows": len(labels), "outliers": int(labels.sum()), "detector": name,
                    "roc_auc_mean": round(mean, 4), "roc_auc_std": round(std, 4),
                    "in_sample": in_sample(table, name),
                    "published_same_detector": odds_published.ROC_AUC[table][same] if best and same else None,
                    "best_published_detector": best[0] if best else None,
                    "best_published": best[1] if best else None,
                    "published_mean": round(published_mean, 4) if best else None,
                    "ratio_to_best_published": round(mean / best[1], 4) if best else None,
                    "ratio_to_published_mean": round(mean / published_mean, 4) if best else None,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
    return rows


def mean_ratios(rows: list[dict], column: str) -> dict[str, float]:
    """Per detector, the mean over the published tables of a ratio column."""
    frame = pd.DataFrame(rows)
    if frame.empty or frame[column].isna().all():
        return {}
    return {name: round(float(value), 4) for name, value in frame.dropna(subset=[column]).groupby("detector")[column].mean().items()}


def summary(rows: list[dict], splits: int, folder: Path, skipped: dict[str, str] | None = None) -> dict:
    """The results as one JSON-ready object: per table and detector the mean ROC-AUC, the
    published figures of the table, and per detector the mean ratios to them."""
    tables: dict[str, dict] = {}
    for row in rows:
        table = tables.setdefault(
            row["table"],
            {"rows": row["rows"], "outliers": row["outliers"], "detectors": {},
             "published": odds_published.ROC_AUC.get(row["table"]),
             "best_published": {"detector": row["best_published_detector"], "roc_auc": row["best_published"]} if row["best_published"] else None,
             "published_mean": row["published_mean"]},
        )
        table["detectors"][row["detector"]] = {"roc_auc_mean": row["roc_auc_mean"], "roc_auc_std": row["roc_auc_std"], "in_sample": row["in_sample"]}
    return {
        "folder": str(folder), "splits": splits, "protocol": "PyOD's: random 60/40 splits, fit on 60% without labels, ROC-AUC on 40%",
        "published_source": odds_published.SOURCE,
        "in_sample_note": "ensemble: its design was chosen on " + ", ".join(sorted(ENSEMBLE_DESIGN_TABLES)) + " (in_sample true there)",
        "tables": tables,
        "mean_ratio_to_best_published": mean_ratios(rows, "ratio_to_best_published"),
        "mean_ratio_to_published_mean": mean_ratios(rows, "ratio_to_published_mean"),
        "skipped": skipped or {},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--scale", choices=("standard", "robust"), default="standard")
    parser.add_argument("--data", type=Path, default=reference_data_dir() / "odds")
    parser.add_argument("--detector", action="append", choices=DETECTORS, help="repeatable; default: all")
    parser.add_argument("--jobs", type=int, default=None, help="processes for the splits (default: every core)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    arguments = parser.parse_args(argv)
    logs.configure()
    reason = missing_reason(arguments.data)
    if reason:
        raise SystemExit(f"ODDS benchmark skipped: {reason}")
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    rows = run(arguments.data, tuple(arguments.detector or DETECTORS), arguments.splits, arguments.scale, arguments.jobs, skipped)
    if arguments.json:
        sys.stdout.write(json.dumps(summary(rows, arguments.splits, arguments.data, skipped), indent=2) + "\n")
        return
    frame = pd.DataFrame(rows)
    results.print(frame_table(frame, f"ODDS ROC-AUC, mean of {arguments.splits} random 60/40 splits, {arguments.scale} scaling"))
    for column, label in (("ratio_to_best_published", "the best published detector of each table"), ("ratio_to_published_mean", "the mean of the published detectors")):
        ratios = mean_ratios(rows, column)
        results.print(f"mean ratio to {label}: " + ", ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items()))
    results.print(f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
