"""Does the calibrated score (lakehouse/likelihood.py) carry one threshold across series?

The relative score of the declared detector scores 55.6 NAB standard at the best threshold for
the 20 series, in-sample; chosen on half of the series, that threshold ruins the other half
(quality/holdout.py: mean -18.5 over 20 halvings). The calibrated score replaces each entity's
relative scores, walk-forward as the system produces them, by their surprise against the entity's
own score history (-log10 of a tail probability), which should mean the same on every series.

Measured here on the walk-forward scores of the declared detector (NAB's retrain fractions):
- in-sample: the best likelihood settings and threshold chosen and scored on all series;
- held out, over the same 20 stratified halvings as quality/holdout.py: each half chooses the
  settings (and the threshold) on its own series, the other half is scored with them: once with
  one threshold over all series (NAB's protocol), once with the other half's threshold too (what
  a declared threshold does on new series; the figure that says whether the scale carries);
- next to the alerts' NAB standard (the system's own output), in-sample and held out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lakehouse.likelihood import LikelihoodSettings, fold, initial_state
from quality import holdout, labels, nab, walk_forward
from schemas.declaration import Dataset, DetectorSpec

GRID = {"recent": (1, 3, 5, 10), "history": (1440, 2880, 8640)}


@dataclass(frozen=True)
class Choice:
    """Likelihood settings as a hold-out choice (quality.holdout.held_out_score's keys)."""

    settings: LikelihoodSettings

    def label(self) -> str:
        return f"recent {self.settings.recent}, history {self.settings.history}"


def grid(space: dict[str, tuple] = GRID) -> list[Choice]:
    return [Choice(LikelihoodSettings(recent=recent, history=history)) for recent, history in itertools.product(space["recent"], space["history"])]


def calibrated(series: walk_forward.NabSeries, scored, windows: labels.Windows, settings: LikelihoodSettings, contamination: float) -> nab.Series:
    """One series' walk-forward relative scores replaced by their surprise, in event order."""
    surprise, _ = fold(scored["relative_score"].to_numpy(dtype=np.float64), settings, initial_state(settings, contamination))
    return walk_forward.to_nab(series, scored.assign(surprise=surprise), windows, "surprise")


@dataclass(frozen=True)
class CalibrationReport:
    in_sample: float
    in_sample_choice: str
    in_sample_threshold: float
    splits: list[holdout.SplitResult]
    relative_in_sample: float  # the uncalibrated relative score at its best threshold
    alerts: holdout.AlertChoice  # the declared configuration's alerts, in-sample and held out

    def summary(self) -> dict:
        def spread(values: list[float], name: str) -> dict:
            return {f"{name}_mean": round(float(np.mean(values)), 2), f"{name}_median": round(float(np.median(values)), 2),
                    f"{name}_min": round(float(np.min(values)), 2), f"{name}_max": round(float(np.max(values)), 2)}

        return {
            "calibrated_in_sample_standard": round(self.in_sample, 2),
            "calibrated_in_sample_choice": self.in_sample_choice,
            "calibrated_in_sample_threshold": round(self.in_sample_threshold, 3),
            **spread([split.held_out_config for split in self.splits], "calibrated_held_out_settings"),
            **spread([split.held_out_config_and_threshold for split in self.splits], "calibrated_held_out_settings_and_threshold"),
            "relative_in_sample_standard": round(self.relative_in_sample, 2),
            **self.alerts.summary(spread),
            "splits": [{"seed": split.seed, "chosen": list(split.chosen), "held_out_settings": round(split.held_out_config, 2),
                        "held_out_settings_and_threshold": round(split.held_out_config_and_threshold, 2)} for split in self.splits],
        }


def run(
    dataset: Dataset,
    spec: DetectorSpec,
    corpus: list[walk_forward.NabSeries],
    windows: labels.Windows,
    *,
    choices: list[Choice] | None = None,
    seeds: range = range(20),
    profile: nab.Profile = nab.PROFILES["standard"],
    progress: Callable[[str], None] | None = None,
) -> CalibrationReport:
    if progress:
        progress("NAB calibration: walk-forward of the declared detector")
    _, scored = walk_forward.run(dataset, spec, corpus, windows)
    relative = {series.entity: walk_forward.to_nab(series, scored[series.entity], windows) for series in corpus}
    by_choice = {}
    for choice in choices or grid():
        if progress:
            progress(f"NAB calibration: {choice.label()}")
        by_choice[choice] = {series.entity: calibrated(series, scored[series.entity], windows, choice.settings, spec.contamination) for series in corpus}
    in_sample = {choice: nab.optimise(list(series.values()), profile) for choice, series in by_choice.items()}
    best = max(in_sample, key=lambda choice: in_sample[choice].raw)
    halvings = [holdout.stratified_halves(corpus, seed) for seed in seeds]
    return CalibrationReport(
        in_sample=in_sample[best].normalised,
        in_sample_choice=best.label(),
        in_sample_threshold=in_sample[best].threshold,
        splits=[holdout.held_out_score(by_choice, halves, profile, seed) for seed, halves in zip(seeds, halvings)],
        relative_in_sample=nab.optimise(list(relative.values()), profile).normalised,
        alerts=holdout.alert_choice(relative, halvings, profile),
    )


def main(argv: list[str] | None = None) -> None:
    """python -m quality.calibration [--data DIR]: the measurement above, as one JSON object."""
    import argparse
    import json
    import sys
    from pathlib import Path

    import schemas
    from quality import benchmark, nab_run, reference_data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=reference_data_dir() / "nab")
    arguments = parser.parse_args(argv)
    corpus, windows = walk_forward.nab_corpus(arguments.data)
    report = run(schemas.load(nab_run.DATASET), benchmark.candidate_spec("declared"), corpus, windows,
                 progress=lambda message: print(message, file=sys.stderr))
    sys.stdout.write(json.dumps(report.summary(), indent=2) + "\n")


if __name__ == "__main__":
    main()
