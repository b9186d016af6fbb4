"""Labelled anomaly windows per entity, from NAB's label file or a CSV.

Accepted layouts:
- NAB's combined_windows.json: {"<category>/<series>.csv": [[start, end], ...]}; the entity is the
  file stem, as schemas/metrics.yaml derives it.
- A CSV with `entity_id` and either `start,end` (windows) or `event_time` (labelled events; each
  becomes a window of its own, and consecutive labelled events of an entity one window). The
  generator's labels.csv is of the second kind.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from lakehouse.errors import ConfigurationError

Windows = dict[str, list[tuple[np.datetime64, np.datetime64]]]


def _utc(values) -> np.ndarray:
    return pd.to_datetime(pd.Series(values), utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


def load(path: Path, event_times: dict[str, np.ndarray] | None = None) -> Windows:
    """Windows per entity. With `event_times` (entity -> its sorted event times), labelled events
    of a CSV of events are kept when they are among them, and consecutive ones form one window;
    without it each labelled event is a window."""
    path = Path(path)
    if not path.exists():
        raise ConfigurationError(f"labels file {path} does not exist")
    if path.suffix == ".json":
        return nab_windows(path)
    frame = pd.read_csv(path)
    if "entity_id" not in frame.columns:
        raise ConfigurationError(f"labels {path}: needs an entity_id column, has {list(frame.columns)}")
    if {"start", "end"} <= set(frame.columns):
        windows: Windows = {}
        for entity, group in frame.groupby("entity_id"):
            starts, ends = _utc(group["start"]), _utc(group["end"])
            windows[str(entity)] = sorted(zip(starts, ends))
        return windows
    if "event_time" in frame.columns:
        return _event_windows(frame, event_times or {})
    raise ConfigurationError(f"labels {path}: needs start,end or event_time columns, has {list(frame.columns)}")


def nab_windows(path: Path) -> Windows:
    document = json.loads(Path(path).read_text())
    windows: Windows = {}
    for relative, pairs in document.items():
        entity = PurePosixPath(relative).stem
        if entity in windows:
            raise ConfigurationError(f"labels {path}: two series are named {entity!r}")
        windows[entity] = [(_utc([start])[0], _utc([end])[0]) for start, end in pairs]
    return windows


def _event_windows(frame: pd.DataFrame, event_times: dict[str, np.ndarray]) -> Windows:
    windows: Windows = {}
    for entity, group in frame.groupby("entity_id"):
        labelled = np.sort(_utc(group["event_time"]))
        times = event_times.get(str(entity))
        if times is not None:  # labels of events the scored data does not hold are not windows of it
            labelled = labelled[np.isin(labelled, times)]
        spans: list[tuple[np.datetime64, np.datetime64]] = []
        for moment in labelled:
            if spans and times is not None and _adjacent(times, spans[-1][1], moment):
                spans[-1] = (spans[-1][0], moment)
                continue
            spans.append((moment, moment))
        windows[str(entity)] = spans
    return windows


def _adjacent(times: np.ndarray, earlier: np.datetime64, later: np.datetime64) -> bool:
    """Both are events of the entity and no other event lies between them."""
    first, second = np.searchsorted(times, [earlier, later], side="left")
    present = lambda index, moment: index < len(times) and times[index] == moment  # noqa: E731
    return present(first, earlier) and present(second, later) and second == first + 1
