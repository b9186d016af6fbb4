"""Walk-forward scoring: what a detector would have said about each event when it arrived.

The NAB evaluation follows the Lambda cycle without look-ahead. For each series, cut points split
it into stretches: at each cut the batch layer trains on every event before it, and the speed
layer scores the events up to the next cut with that model. The first cut is NAB's probationary
period (15% of the series, at most 750 rows), which NAB does not score anyway.

`quality.nab_run` drives the real system (Spark batch runs, the Beam pipeline); this module is the
same computation in one process (the project's feature and detector code, no engines), used to
compare detectors and features quickly. Features look only at earlier events and speed scores
equal batch scores, so the two give the same scores; tests/test_nab_run.py checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lakehouse import detectors
from lakehouse.alerts import first_of_episodes
from lakehouse.features import compute_features, feature_names
from lakehouse.likelihood import relative_score
from quality import labels, nab
from schemas.declaration import Dataset, DetectorSpec

# Where the batch layer retrains, as fractions of a series (after the probationary period).
RETRAIN_FRACTIONS = (0.3, 0.5, 0.75)


@dataclass(frozen=True)
class NabSeries:
    entity: str  # the file stem, as schemas/metrics.yaml derives the entity
    category: str
    path: Path
    frame: pd.DataFrame  # event_time (datetime64[us], UTC, naive), value

    @property
    def rows(self) -> int:
        return len(self.frame)


def nab_corpus(folder: Path, only: list[str] | None = None) -> tuple[list[NabSeries], labels.Windows]:
    """The NAB series under folder/data and their windows from folder/labels/combined_windows.json."""
    windows = labels.nab_windows(folder / "labels" / "combined_windows.json")
    corpus = []
    for path in sorted((folder / "data").glob("*/*.csv")):
        if only and path.stem not in only:
            continue
        frame = pd.read_csv(path)
        frame = pd.DataFrame({"event_time": pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[us]"), "value": frame["value"].astype(float)})
        # Four NAB files repeat 14 timestamps in all (ec2_request_latency_system_failure 11). The
        # lakehouse keys an event by series@timestamp, so a repeat is a duplicate there: the
        # corpus keeps the first reading, and the system is fed exactly these rows.
        frame = frame.drop_duplicates("event_time", keep="first").sort_values("event_time", kind="stable").reset_index(drop=True)
        corpus.append(NabSeries(path.stem, path.parent.name, path, frame))
    return corpus, windows


def cut_points(rows: int, fractions: tuple[float, ...] = RETRAIN_FRACTIONS) -> list[int]:
    """Row indices where the batch layer retrains, starting with the probationary period's end."""
    cuts = [nab.probationary_length(rows)] + [int(fraction * rows) for fraction in fractions]
    return sorted({cut for cut in cuts if 0 < cut < rows})


def scheduled_cuts(series: NabSeries, every: np.timedelta64) -> list[int]:
    """Cuts of a batch layer on a schedule: the probationary period's end, then one batch run
    every `every` of event time after it (the first row at or after each tick starts a stretch).

    NAB's fractions retrain a series 4 times whatever its length; a scheduled batch job (the
    Airflow DAG runs hourly) retrains a 79-day series 79 times a day apart. Stale models are what
    raise long runs of false alarms after a level shift, so the schedule moves the score.
    """
    times = series.frame["event_time"].to_numpy()
    start = nab.probationary_length(series.rows)
    if start >= series.rows:
        return []
    ticks = np.arange(times[start] + every, times[-1] + np.timedelta64(1, "us"), every)
    later = np.searchsorted(times, ticks, side="left")
    return sorted({start, *(int(cut) for cut in later if start < cut < series.rows)})


def cuts_for(series: NabSeries, retrain_every: np.timedelta64 | None = None) -> list[int]:
    """NAB's fractions (None) or a batch schedule."""
    return cut_points(series.rows) if retrain_every is None else scheduled_cuts(series, retrain_every)


def score_series(dataset: Dataset, spec: DetectorSpec, series: NabSeries, cuts: list[int]) -> pd.DataFrame:
    """Every row of a series after the first cut, scored with the model trained before its stretch.

    Returns row (position in the series), event_time, score, relative_score, is_anomaly, model_version (1 = first cut), and
    train_end (the newest event the model saw: always before the scored event)."""
    spec = spec.for_entity(series.entity)
    values = series.frame[["value"]].to_numpy(dtype=np.float64)
    times = series.frame["event_time"].to_numpy()
    features = compute_features(dataset, values, times)
    names = feature_names(dataset)
    parts = []
    for version, (start, end) in enumerate(zip(cuts, [*cuts[1:], series.rows]), start=1):
        if start < spec.min_train_rows:
            parts.append(pd.DataFrame({"row": np.arange(start, end), "event_time": times[start:end], "score": np.nan, "relative_score": np.nan, "is_anomaly": False, "model_version": 0, "train_end": pd.NaT}))
            continue
        model, metrics = detectors.fit(spec, features[:start], names)
        scores, flags = model.score(features[start:end])
        parts.append(
            pd.DataFrame(
                {
                    "row": np.arange(start, end),
                    "event_time": times[start:end],
                    "score": scores,
                    "relative_score": relative_score(scores, metrics["contamination_threshold"], metrics["train_score_mean"]),
                    "is_anomaly": flags,
                    "model_version": version,
                    "train_end": times[start - 1],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def to_nab(series: NabSeries, scored: pd.DataFrame, windows: labels.Windows, column: str = "relative_score") -> nab.Series:
    """A NAB series over every row (rows before the first cut are probationary: unscored)."""
    scores = np.full(series.rows, np.nan)
    scores[scored["row"].to_numpy()] = scored[column].astype(float).to_numpy()
    return nab.Series(series.entity, series.frame["event_time"].to_numpy(), scores, windows.get(series.entity, []))


def to_nab_alerts(series: NabSeries, scored: pd.DataFrame, windows: labels.Windows, quiet_events: int) -> nab.Series:
    """The system's alerts as a 0/1 NAB series: its is_anomaly flags, first of each episode
    (lakehouse/alerts.py), in the series' row order."""
    rows = scored["row"].to_numpy()
    flags = np.zeros(series.rows, dtype=bool)
    flags[rows] = scored["is_anomaly"].astype(bool).to_numpy()
    alerted = first_of_episodes(flags, quiet_events)
    return to_nab(series, scored.assign(alert=alerted[rows].astype(float)), windows, "alert")


@dataclass(frozen=True)
class Evaluation:
    optimised: dict[str, nab.Outcome]  # per profile, at its best corpus-wide threshold
    flagged: dict[str, nab.Outcome]  # per profile, with the system's own alerts (is_anomaly, first of each episode)

    def summary(self) -> dict:
        return {
            "nab": {name: round(outcome.normalised, 2) for name, outcome in self.optimised.items()},
            "thresholds": {name: outcome.threshold for name, outcome in self.optimised.items()},
            "nab_with_own_flags": {name: round(outcome.normalised, 2) for name, outcome in self.flagged.items()},
            "window_precision": round(self.flagged["standard"].precision, 3),
            "window_recall": round(self.flagged["standard"].recall, 3),
            "window_f1": round(self.flagged["standard"].f1, 3),
            "window_f1_at_nab_threshold": round(self.optimised["standard"].f1, 3),
        }


def evaluate(
    corpus: list[nab.Series],
    flags: list[nab.Series],
    profiles: dict[str, nab.Profile] | None = None,
    probation_percent: float = nab.PROBATION_PERCENT,
) -> Evaluation:
    """NAB scores of scored series (relative scores) and of the system's flags (0/1 series)."""
    profiles = profiles or nab.PROFILES
    return Evaluation(
        optimised={name: nab.optimise(corpus, profile, probation_percent) for name, profile in profiles.items()},
        flagged={name: nab.score(flags, profile, 0.5, probation_percent) for name, profile in profiles.items()},
    )


def run(
    dataset: Dataset, spec: DetectorSpec, corpus: list[NabSeries], windows: labels.Windows, retrain_every: np.timedelta64 | None = None
) -> tuple[Evaluation, dict[str, pd.DataFrame]]:
    """Walk-forward scores of every series with one detector, and their NAB evaluation; retrained
    at NAB's fractions, or every `retrain_every` of event time."""
    scored = {series.entity: score_series(dataset, spec, series, cuts_for(series, retrain_every)) for series in corpus}
    relative = [to_nab(series, scored[series.entity], windows) for series in corpus]
    flags = [to_nab_alerts(series, scored[series.entity], windows, spec.alert_quiet_events) for series in corpus]
    return evaluate(relative, flags), scored
