"""Held-out NAB score: tune on some series, score on the others.

The declared `metrics` features, detector and threshold were chosen on the same NAB series they
are scored on, so the headline NAB figure is optimistic. This module measures by how much: the
series are split in two halves (stratified by NAB category), each half picks its configuration
(feature window, time of day, neighbour count) and its corpus-wide threshold by the walk-forward
NAB standard score on its own series, and the other half is scored with that choice, unchanged.
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


@dataclass(frozen=True)
class Config:
    window: int
    time_of_day: bool
    n_neighbors: int

    def label(self) -> str:
        return f"window {self.window}, time of day {'on' if self.time_of_day else 'off'}, {self.n_neighbors} neighbour{'s' if self.n_neighbors > 1 else ''}"

    def apply(self, dataset: Dataset, spec: DetectorSpec) -> tuple[Dataset, DetectorSpec]:
        features = dataset.features.model_copy(update={"window": self.window, "time_of_day": self.time_of_day})
        return (
            dataset.model_copy(update={"features": features}),
            spec.model_copy(update={"params": {**spec.params, "n_neighbors": self.n_neighbors}}),
        )


def grid(space: dict[str, tuple] = GRID) -> list[Config]:
    return [Config(*values) for values in itertools.product(*(space[name] for name in ("window", "time_of_day", "n_neighbors")))]


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
            "splits": [
                {"seed": split.seed, "chosen": list(split.chosen), "held_out_config": round(split.held_out_config, 2),
                 "held_out_config_and_threshold": round(split.held_out_config_and_threshold, 2)}
                for split in self.splits
            ],
        }


def _alarms(series: nab.Series, threshold: float) -> np.ndarray:
    """Rows at or above a relative threshold (unscored rows never are), as nab.score counts them."""
    return np.nan_to_num(series.scores, nan=-np.inf) >= threshold


def alert_choice(series: dict[str, nab.Series], halvings: list[tuple[set[str], set[str]]], profile: nab.Profile) -> AlertChoice:
    """Alerts of relative-score series under every (threshold_scale, alert_quiet_events) of the
    grid, chosen per half. NAB's raw score, null and perfect add up over series, so each series is
    scored once per choice and halves are sums."""
    parts: dict[tuple[float, int], dict[str, tuple[float, float, float]]] = {}
    for threshold in ALERT_THRESHOLDS:
        for quiet in ALERT_QUIET_EVENTS:
            parts[threshold, quiet] = {}
            for name, one in series.items():
                alerted = np.where(np.isnan(one.scores), np.nan, first_of_episodes(_alarms(one, threshold), quiet).astype(float))
                outcome = nab.score([nab.Series(name, one.timestamps, alerted, one.windows)], profile, 0.5)
                parts[threshold, quiet][name] = (outcome.raw, outcome.null, outcome.perfect)

    def normalised(choice: tuple[float, int], names: set[str]) -> float:
        raw, null, perfect = (sum(parts[choice][name][index] for name in names) for index in range(3))
        return 100.0 * (raw - null) / (perfect - null)

    everything = set(series)
    best = max(parts, key=lambda choice: normalised(choice, everything))
    held_out, chosen = [], []
    for first, second in halvings:
        picks = [max(parts, key=lambda choice: normalised(choice, half)) for half in (first, second)]
        # Sums over both halves, each under the other's pick.
        raw, null, perfect = (
            sum(parts[picks[1]][name][index] for name in first) + sum(parts[picks[0]][name][index] for name in second) for index in range(3)
        )
        held_out.append(100.0 * (raw - null) / (perfect - null))
        chosen.append((picks[0], picks[1]))
    return AlertChoice(in_sample=normalised(best, everything), in_sample_choice=best, held_out=held_out, chosen=chosen)


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
    configs = configs or grid()
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
    return HoldoutReport(in_sample=in_sample[best_config].normalised, in_sample_config=best_config.label(), splits=splits, alerts=alerts)
