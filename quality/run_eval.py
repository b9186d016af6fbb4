"""`lakehouse eval run`: a dataset's scores in the lakehouse, measured against labels.

Each entity is one NAB series (its scored events in time order) with the labelled windows of that
entity; scores are put on one scale (quality.scores.relative_score) and the corpus is scored with
NAB's rules (quality.nab): the best threshold per profile, and the system's own alerts (its
is_anomaly flags, first of each episode: lakehouse/alerts.py).

Honesty: rows of the batch view are rescored by every batch run with the model trained on them,
so they are in-sample (each takes its leave-one-out training score: the row is not its own
neighbour, but the model saw it). The report counts them (`in_sample_rows`); `--scores hot` keeps only what
the speed layer scored as it arrived. `lakehouse eval nab` is the out-of-sample measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lakehouse.alerts import first_of_episodes
from lakehouse.settings import Settings
from quality import labels, nab, scores as stored
from quality.walk_forward import Evaluation, evaluate
import schemas


@dataclass(frozen=True)
class RunEvaluation:
    evaluation: Evaluation
    entities: int
    events: int
    scored_events: int
    in_sample_rows: int  # scored by a model whose training data reached the event
    windows: int
    unlabelled_entities: list[str]
    alert_quiet_events: int = 0  # the dataset's declared setting, which the alerts columns use
    # NAB standard of the alerts with other quiet periods (same flags): what to declare.
    alerts_by_quiet_events: dict[int, float] = field(default_factory=dict)
    # The calibrated score (`surprise`) at NAB's best threshold per profile: the one threshold to
    # use on it for every entity (None: the scores read carry no surprise).
    surprise: dict[str, nab.Outcome] | None = None

    def summary(self) -> dict:
        return {
            **self.evaluation.summary(),
            "entities": self.entities,
            "events": self.events,
            "scored_events": self.scored_events,
            "in_sample_rows": self.in_sample_rows,
            "windows": self.windows,
            "alert_quiet_events": self.alert_quiet_events,
            "nab_standard_by_alert_quiet_events": {str(quiet): round(score, 2) for quiet, score in self.alerts_by_quiet_events.items()},
            **({"surprise_nab": {name: round(outcome.normalised, 2) for name, outcome in self.surprise.items()},
                "surprise_best_threshold": {name: round(outcome.threshold, 3) for name, outcome in self.surprise.items()}}
               if self.surprise is not None else {}),
        }


# The quiet periods `lakehouse eval run` compares the declared one with, in events.
QUIET_EVENTS_SWEEP = (0, 3, 6, 12, 24, 48, 96)


def evaluate_run(dataset: str, labels_path: Path, settings: Settings, source: str = "merged", probation: float = nab.PROBATION_PERCENT) -> RunEvaluation:
    frame = stored.with_models(stored.read(dataset, source, settings), settings, dataset)
    quiet_events = schemas.load(dataset).detector.alert_quiet_events
    times = {entity: group["event_time"].to_numpy() for entity, group in frame.groupby("entity_id")}
    windows = labels.load(labels_path, event_times=times)
    relative, flags, unlabelled, alarms, surprises = [], [], [], [], []
    for entity, group in frame.groupby("entity_id", sort=True):
        if entity not in windows:
            unlabelled.append(entity)
        stamps = group["event_time"].to_numpy()
        # Only windows the scored events reach: a window before or after the run is not its miss.
        entity_windows = [(start, end) for start, end in windows.get(entity, []) if np.any((stamps >= start) & (stamps <= end))]
        relative.append(nab.Series(entity, stamps, group["relative_score"].to_numpy(dtype=float), entity_windows))
        if stored.SURPRISE in group:
            surprises.append(nab.Series(entity, stamps, group[stored.SURPRISE].to_numpy(dtype=float), entity_windows))
        # Alerts in event-time order (the frame is sorted): as the `alerts` view computes them.
        alarms.append(group["is_anomaly"].fillna(False).astype(bool).to_numpy())
        alerted = first_of_episodes(alarms[-1], quiet_events)
        flags.append(nab.Series(entity, stamps, alerted.astype(float), entity_windows))
    standard = nab.PROFILES["standard"]
    sweep = {
        quiet: nab.score(
            [nab.Series(series.name, series.timestamps, first_of_episodes(flagged, quiet).astype(float), series.windows) for series, flagged in zip(flags, alarms)],
            standard, 0.5, probation,
        ).normalised
        for quiet in sorted({*QUIET_EVENTS_SWEEP, quiet_events})
    }
    in_sample = frame.dropna(subset=["train_end"])
    return RunEvaluation(
        evaluation=evaluate(relative, flags, probation_percent=probation),
        entities=len(relative),
        events=len(frame),
        scored_events=int(frame["score"].notna().sum()),
        in_sample_rows=int((in_sample["train_end"] >= in_sample["event_time"]).sum()),
        windows=sum(len(series.windows) for series in relative),
        unlabelled_entities=unlabelled,
        alert_quiet_events=quiet_events,
        alerts_by_quiet_events=sweep,
        surprise={name: nab.optimise(surprises, profile, probation) for name, profile in nab.PROFILES.items()} if surprises else None,
    )
