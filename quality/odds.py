"""ODDS tabular outlier benchmark: ROC-AUC per table and detector, next to PyOD's published figures.

Protocol (PyOD's benchmark): for each of `splits` random 60/40 splits (not stratified, as PyOD's),
fit on the 60% without labels, score the 40% with decision_function, and take the ROC-AUC; report
the mean and standard deviation. Features go through the project's own detectors.fit with
standard scaling, fitted on the training part, as PyOD's `standardizer` does. No detector is
chosen per table: that would need the test labels.

    python -m quality.odds [--splits 10] [--scale standard|robust] [--data DIR] [--detector NAME ...]
"""

from __future__ import annotations

import argparse
import os
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
from quality import reference_data_dir
from schemas.declaration import DetectorSpec

# PyOD's published benchmark (ODDS tables, mean ROC-AUC of 10 random 60/40 splits): IForest, HBOS.
PUBLISHED = {
    "cardio": {"iforest": 0.921, "hbos": 0.835},
    "pima": {"iforest": 0.681, "hbos": 0.700},
    "wbc": {"iforest": 0.931, "hbos": 0.952},
    "vowels": {"iforest": 0.759, "hbos": 0.673},
    "satellite": {"iforest": 0.702, "hbos": 0.758},
    "shuttle": {"iforest": 0.997, "hbos": 0.986},
}
DETECTORS = ("iforest", "hbos", "knn", "lof", "ensemble")
# Fixed seeds: the splits and IForest's trees are the same on every run.
SEED = 42


def missing_reason(folder: Path) -> str | None:
    """Why the benchmark cannot run on this folder, or None when it can."""
    if not Path(folder).is_dir():
        return f"no ODDS folder at {folder} (../shared/data/odds next to the project, or set LAKEHOUSE_REFERENCE_DATA)"
    if not available(folder):
        return f"none of the ODDS tables {sorted(PUBLISHED)} (.mat) in {folder}"
    return None


def available(folder: Path) -> list[str]:
    """The published tables present in the folder (empty when the folder is absent)."""
    return [name for name in PUBLISHED if (Path(folder) / f"{name}.mat").exists()]


def load(name: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    data = loadmat(Path(folder) / f"{name}.mat")
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
        jobs: int | None = None) -> list[dict]:
    """One row per table and detector, with the published figures of that table. Tables absent
    from the folder are left out (see missing_reason)."""
    rows = []
    for table in available(folder):
        features, labels = load(table, folder)
        best = max(PUBLISHED[table].values())
        for name in detector_names:
            started = time.perf_counter()
            mean, std = evaluate(spec_for(name, scale), features, labels, splits, jobs=jobs)
            rows.append(
                {
                    "table": table, "rows": len(labels), "outliers": int(labels.sum()), "detector": name,
                    "roc_auc_mean": round(mean, 4), "roc_auc_std": round(std, 4),
                    "published_iforest": PUBLISHED[table]["iforest"], "published_hbos": PUBLISHED[table]["hbos"],
                    "best_published": best, "ratio_to_best_published": round(mean / best, 4),
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--scale", choices=("standard", "robust"), default="standard")
    parser.add_argument("--data", type=Path, default=reference_data_dir() / "odds")
    parser.add_argument("--detector", action="append", choices=DETECTORS, help="repeatable; default: all")
    parser.add_argument("--jobs", type=int, default=None, help="processes for the splits (default: every core)")
    arguments = parser.parse_args(argv)
    logs.configure()
    reason = missing_reason(arguments.data)
    if reason:
        raise SystemExit(f"ODDS benchmark skipped: {reason}")
    started = time.perf_counter()
    frame = pd.DataFrame(run(arguments.data, tuple(arguments.detector or DETECTORS), arguments.splits, arguments.scale, arguments.jobs))
    results.print(frame_table(frame, f"ODDS ROC-AUC, mean of {arguments.splits} random 60/40 splits, {arguments.scale} scaling"))
    ratios = frame.pivot(index="table", columns="detector", values="ratio_to_best_published").mean()
    results.print("mean ratio to the best published figure: " + ", ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items()))
    results.print(f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
