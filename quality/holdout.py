"""Held-out NAB score: tune on some series, score on the others.

The declared `metrics` features, detector and threshold were chosen on the same NAB series they
are scored on, so the headline NAB figure is optimistic. This module measures by how much: the
series are split in two halves (stratified by NAB category), each half picks its configuration
(feature window, time of day, neighbour count, or another detector: GRID and OTHER_DETECTORS)
and its corpus-wide threshold by the walk-forward NAB standard score on its own series, and the
other half is scored with that choice, unchanged. The alerts are held out twice: with the
declared configuration, each half choosing only threshold_scale and alert_quiet_events; and fully
(`full_alert_choice`), each half choosing the configuration and the alert settings together.
Every series is thus scored by a choice made without it; the held-out figure is the NAB score of
all series together under those choices. Repeated over several random splits, it is reported as
the mean, median and range, next to the in-sample score of the same grid (the best configuration
chosen and scored on all series). `retrain_every` runs it on a batch schedule instead of NAB's
retrain fractions (quality.walk_forward.scheduled_cuts).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lakehouse.alerts import first_of_episodes
from quality import labels, nab, walk_forward
from schemas.declaration import Dataset, DetectorSpec

# The choices the declaration was tuned over (schemas/metrics.yaml's comments).
GRID = {"window": (24, 48, 96, 192), "time_of_day": (False, True), "n_neighbors": (1, 3, 5)}
# The other detectors the declaration was chosen against (the candidates of `lakehouse eval
# nab`), each on the declared features: with them in the grid the detector too is chosen per half.
OTHER_DETECTORS = ("lof", "iforest", "hbos", "ensemble")
# The context detector (lakehouse/context_detector.py) on the declared window, with its default
# sub-sequence of one value and with 8 values (7 lags): the sequence-aware candidates of #17.
CONTEXT_LENGTHS = (1, 8)


@dataclass(frozen=True)
class Config:
    window: int
    time_of_day: bool
    n_neighbors: int  # KNN's; unused by the other detectors
    detector: str = "knn"
    context: int = 1  # the context detector's sub-sequence length (features.lags = context - 1)

    def label(self) -> str:
        model = f"{self.n_neighbors} neighbour{'s' if self.n_neighbors > 1 else ''}" if self.detector == "knn" else self.detector
        if self.detector == "context":
            model = f"context ({self.context} value{'s' if self.context > 1 else ''})"
        return f"window {self.window}, time of day {'on' if self.time_of_day else 'off'}, {model}"

    def apply(self, dataset: Dataset, spec: DetectorSpec) -> tuple[Dataset, DetectorSpec]:
        features = dataset.features.model_copy(update={"window": self.window, "time_of_day": self.time_of_day})
        if self.detector == spec.name == "knn":
            spec = spec.model_copy(update={"params": {**spec.params, "n_neighbors": self.n_neighbors}})
        elif self.detector == "context":  # its own defaults, with the sub-sequence and the lags it needs
            features = features.model_copy(update={"lags": self.context - 1})
            spec = spec.model_copy(update={"name": "context", "params": {"context": self.context} if self.context > 1 else {}})
        else:  # seeded, so a choice does not move between runs
            spec = spec.model_copy(update={"name": self.detector, "params": {"random_state": 42} if self.detector == "iforest" else {}})
        return dataset.model_copy(update={"features": features}), spec


def grid(space: dict[str, tuple] = GRID, other_detectors: tuple[str, ...] = (), context_lengths: tuple[int, ...] = ()) -> list[Config]:
    """The KNN grid, each other detector on the declared features (window 96, no time of day), and
    the context detector with each sub-sequence length."""
    knn = [Config(*values) for values in itertools.product(*(space[name] for name in ("window", "time_of_day", "n_neighbors")))]
    context = [Config(96, False, 0, "context", length) for length in context_lengths]
    return knn + [Config(96, False, 0, name) for name in other_detectors] + context


def stratified_halves(corpus: list[walk_forward.NabSeries], seed: int) -> tuple[set[str], set[str]]:
    """Two disjoint halves of the series, each holding about half of every category."""
    generator = random.Random(seed)
    halves: tuple[set[str], set[str]] = (set(), set())
    for category in sorted({series.category for series in corpus}):
        names = sorted(series.entity for series in corpus if series.category == category)
        generator.shuffle(names)
        # Dealt to whichever half is smaller so far: each category splits evenly, and an odd one
        # out goes to the half the previous category left short.
        for name in names:
            halves[0 if len(halves[0]) <= len(halves[1]) else 1].add(name)
    return halves


@dataclass(frozen=True)
class SplitResult:
    seed: int
    chosen: tuple[str, str]  # configuration label chosen by each half
    # NAB's protocol for every published detector: one threshold for the whole corpus, chosen on
    # it; here each series is scored with the configuration the other half chose.
    held_out_config: float
    # A new deployment's view: the threshold too comes from the other half (what a declared
    # `threshold_scale` does on series it was not tuned on).
    held_out_config_and_threshold: float


# The alert settings each half chooses from: threshold_scale and alert_quiet_events.
ALERT_THRESHOLDS = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
ALERT_QUIET_EVENTS = (0, 24, 48, 96, 192)


@dataclass(frozen=True)
class AlertChoice:
    """The NAB standard score of alerts (the system's own output) when each half of the series
    chooses threshold_scale and alert_quiet_events on itself and the other half uses that choice."""

    in_sample: float  # the best choice on all series, scored on them
    in_sample_choice: tuple[float, int]
    held_out: list[float]  # per halving
    chosen: list[tuple[tuple[float, int], tuple[float, int]]]

    def summary(self, spread: Callable[[list[float], str], dict]) -> dict:
        return {
            "alerts_in_sample_standard": round(self.in_sample, 2),
            "alerts_in_sample_choice": {"threshold_scale": self.in_sample_choice[0], "alert_quiet_events": self.in_sample_choice[1]},
            **spread(self.held_out, "alerts_held_out"),
            "alerts_chosen": [[list(first), list(second)] for first, second in self.chosen],
        }


@dataclass(frozen=True)
class HoldoutReport:
    in_sample: float  # the best configuration and threshold chosen and scored on all series
    in_sample_config: str
    splits: list[SplitResult]
    alerts: AlertChoice | None = None  # with the declared configuration
    full_alerts: FullAlertChoice | None = None  # configuration and alert settings chosen together

    def summary(self) -> dict:
        def spread(values: list[float], name: str) -> dict:
            return {f"{name}_mean": round(float(np.mean(values)), 2), f"{name}_median": round(float(np.median(values)), 2),
                    f"{name}_min": round(float(np.min(values)), 2), f"{name}_max": round(float(np.max(values)), 2)}

        return {
            "in_sample_standard": round(self.in_sample, 2),
            "in_sample_config": self.in_sample_config,
            **spread([split.held_out_config for split in self.splits], "held_out_config"),
            **spread([split.held_out_config_and_threshold for split in self.splits], "held_out_config_and_threshold"),
            **(self.alerts.summary(spread) if self.alerts else {}),
            **(self.full_alerts.summary(spread) if self.full_alerts else {}),
            "splits": [
                {"seed": split.seed, "chosen": list(split.chosen), "held_out_config": round(split.held_out_config, 2),
                 "held_out_config_and_threshold": round(split.held_out_config_and_threshold, 2)}
                for split in self.splits
            ],
        }


def _alarms(series: nab.Series, threshold: float) -> np.ndarray:
    """Rows at or above a relative threshold (unscored rows never are), as nab.score counts them."""
    return np.nan_to_num(series.scores, nan=-np.inf) >= threshold


Parts = dict[tuple, dict[str, tuple[float, float, float]]]  # choice -> series -> (raw, null, perfect)


def _alert_parts(series: dict[str, nab.Series], profile: nab.Profile, key: tuple = ()) -> Parts:
    """Each series' NAB raw, null and perfect score for its alerts under every (threshold_scale,
    alert_quiet_events) of the grid, keyed by key + (threshold, quiet). The row weights depend on
    the windows only, so each series' are computed once."""
    parts: Parts = {}
    for name, one in series.items():
        rows = nab.row_weights(one, profile)
        for threshold in ALERT_THRESHOLDS:
            alarms = _alarms(one, threshold)
            for quiet in ALERT_QUIET_EVENTS:
                parts.setdefault((*key, threshold, quiet), {})[name] = nab.score_detections(one, rows, first_of_episodes(alarms, quiet), profile)
    return parts


def _normalised(parts: Parts, choice: tuple, names: set[str]) -> float:
    raw, null, perfect = (sum(parts[choice][name][index] for name in names) for index in range(3))
    return 100.0 * (raw - null) / (perfect - null)


def _choose(parts: Parts, everything: set[str], halvings: list[tuple[set[str], set[str]]]) -> tuple[tuple, float, list[float], list[tuple]]:
    """The best choice on all series and its score (in-sample); per halving, each half's best
    choice and the score of all series, each half under the other half's choice (held out).
    NAB's raw, null and perfect add up over series, so a halving's score is a sum of parts."""
    best = max(parts, key=lambda choice: _normalised(parts, choice, everything))
    held_out, chosen = [], []
    for first, second in halvings:
        picks = [max(parts, key=lambda choice: _normalised(parts, choice, half)) for half in (first, second)]
        raw, null, perfect = (
            sum(parts[picks[1]][name][index] for name in first) + sum(parts[picks[0]][name][index] for name in second) for index in range(3)
        )
        held_out.append(100.0 * (raw - null) / (perfect - null))
        chosen.append((picks[0], picks[1]))
    return best, _normalised(parts, best, everything), held_out, chosen


def alert_choice(series: dict[str, nab.Series], halvings: list[tuple[set[str], set[str]]], profile: nab.Profile) -> AlertChoice:
    """Alerts of relative-score series under every (threshold_scale, alert_quiet_events) of the
    grid, chosen per half."""
    best, in_sample, held_out, chosen = _choose(_alert_parts(series, profile), set(series), halvings)
    return AlertChoice(in_sample=in_sample, in_sample_choice=best, held_out=held_out, chosen=chosen)


@dataclass(frozen=True)
class FullAlertChoice:
    """The alerts fully held out: each half chooses the features, window, detector (the whole
    grid) and the alert settings (threshold_scale, alert_quiet_events) together, by the NAB
    standard score of the alerts on its own series; the other half is scored with that choice."""

    in_sample: float
    in_sample_choice: tuple[str, float, int]
    held_out: list[float]
    chosen: list[tuple[tuple[str, float, int], tuple[str, float, int]]]

    def summary(self, spread: Callable[[list[float], str], dict]) -> dict:
        return {
            "alerts_full_in_sample_standard": round(self.in_sample, 2),
            "alerts_full_in_sample_choice": list(self.in_sample_choice),
            **spread(self.held_out, "alerts_full_held_out"),
            "alerts_full_chosen": [[list(first), list(second)] for first, second in self.chosen],
        }


def full_alert_choice(scored: dict[Config, dict[str, nab.Series]], halvings: list[tuple[set[str], set[str]]], profile: nab.Profile) -> FullAlertChoice:
    parts: Parts = {}
    for config, series in scored.items():
        parts.update(_alert_parts(series, profile, key=(config.label(),)))
    everything = set(next(iter(scored.values())))
    best, in_sample, held_out, chosen = _choose(parts, everything, halvings)
    return FullAlertChoice(in_sample=in_sample, in_sample_choice=best, held_out=held_out, chosen=chosen)


def _scored_series(
    dataset: Dataset, spec: DetectorSpec, corpus: list[walk_forward.NabSeries], windows: labels.Windows, retrain_every: np.timedelta64 | None
) -> dict[str, nab.Series]:
    return {
        series.entity: walk_forward.to_nab(series, walk_forward.score_series(dataset, spec, series, walk_forward.cuts_for(series, retrain_every)), windows)
        for series in corpus
    }


def held_out_score(scored: dict[Config, dict[str, nab.Series]], halves: tuple[set[str], set[str]], profile: nab.Profile, seed: int = -1) -> SplitResult:
    """Each half picks the configuration and threshold that score best on it; every series is
    then scored with the other half's pick (see SplitResult for the two figures)."""
    chosen, relative, flags = [], [], []
    for own, other in (halves, halves[::-1]):
        best_config, best = None, None
        for config, series in scored.items():
            outcome = nab.optimise([series[name] for name in sorted(own)], profile)
            if best is None or outcome.raw > best.raw:
                best_config, best = config, outcome
        chosen.append(best_config.label())
        for name in sorted(other):
            series = scored[best_config][name]
            relative.append(series)
            flags.append(nab.Series(name, series.timestamps, _alarms(series, best.threshold).astype(float), series.windows))
    return SplitResult(
        seed=seed,
        chosen=(chosen[0], chosen[1]),
        held_out_config=nab.optimise(relative, profile).normalised,
        held_out_config_and_threshold=nab.score(flags, profile, 0.5).normalised,
    )


def run(
    dataset: Dataset,
    spec: DetectorSpec,
    corpus: list[walk_forward.NabSeries],
    windows: labels.Windows,
    *,
    configs: list[Config] | None = None,
    seeds: range = range(20),
    profile: nab.Profile = nab.PROFILES["standard"],
    retrain_every: np.timedelta64 | None = None,
    progress: Callable[[str], None] | None = None,
) -> HoldoutReport:
    configs = configs or grid(other_detectors=OTHER_DETECTORS)
    scored = {}
    for number, config in enumerate(configs, start=1):
        if progress:
            progress(f"NAB hold-out: walk-forward {number}/{len(configs)} ({config.label()})")
        scored[config] = _scored_series(*config.apply(dataset, spec), corpus, windows, retrain_every)
    in_sample = {config: nab.optimise(list(series.values()), profile) for config, series in scored.items()}
    best_config = max(in_sample, key=lambda config: in_sample[config].raw)
    halvings = [stratified_halves(corpus, seed) for seed in seeds]
    splits = [held_out_score(scored, halves, profile, seed) for seed, halves in zip(seeds, halvings)]
    declared = Config(dataset.features.window, dataset.features.time_of_day, int(spec.params.get("n_neighbors", 5)))
    alerts = alert_choice(scored[declared], halvings, profile) if declared in scored else None
    if progress:
        progress("NAB hold-out: alerts, configuration and alert settings chosen together per half")
    full_alerts = full_alert_choice(scored, halvings, profile)
    return HoldoutReport(in_sample=in_sample[best_config].normalised, in_sample_config=best_config.label(), splits=splits, alerts=alerts,
                         full_alerts=full_alerts)
