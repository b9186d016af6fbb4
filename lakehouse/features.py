"""Per-entity time-series features: the one function batch and speed both call.

For every event of an entity, in event-time order, and for each declared feature field x:
  x, x_diff (x minus the previous value), x_deviation (x minus the mean of the previous `window`
  values) and x_zscore (that deviation over their standard deviation), plus the time of day as
  sin/cos, then (with `features.lags` L > 0) the previous L values themselves, oldest first:
  x_lagL ... x_lag1 for every field (an event with less history repeats the oldest value it has,
  or its own value when it has none), so the newest lags are always the last columns; without
  lags the features are exactly what they were before the option existed. Statistics look only at
  *previous* events, so an event's features depend on exactly `window` values of history: the
  speed layer keeps those in per-entity state and gets the very same numbers as the batch layer,
  which sees the whole history at once.

The window statistics are summed in a fixed order with plain float64 arithmetic, so the result
for an event is bit-identical whether it is computed in a batch of one or of a million.
"""

from __future__ import annotations

import numpy as np

from schemas.declaration import Dataset

_SECONDS_PER_DAY = 86_400.0
_MIN_STD = 1e-9


def feature_names(dataset: Dataset) -> list[str]:
    names: list[str] = []
    for field in dataset.features.fields:
        names += [field, f"{field}_diff", f"{field}_deviation", f"{field}_zscore"]
    if dataset.features.time_of_day:
        names += ["time_of_day_sin", "time_of_day_cos"]
    for lag in range(dataset.features.lags, 0, -1):
        names += [f"{field}_lag{lag}" for field in dataset.features.fields]
    return names


def compute_features(
    dataset: Dataset,
    values: np.ndarray,
    event_times: np.ndarray,
    history: np.ndarray | None = None,
) -> np.ndarray:
    """Features of consecutive events of one entity.

    values: (n, k) float64, the k feature fields of n events in event-time order.
    event_times: (n,) datetime64 (UTC) of the same events.
    history: (m, k) float64, the values of the m events just before values[0] (m may be 0;
        only the last `window` rows are used).
    Returns (n, len(feature_names(dataset))) float64.
    """
    window = dataset.features.window
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (events, fields), got shape {values.shape}")
    return features_from_windows(dataset, values, previous_windows(values, history, window), event_times)


def previous_windows(values: np.ndarray, history: np.ndarray | None, window: int) -> np.ndarray:
    """(n, k, window): the `window` values before each of n consecutive events of one entity (NaN
    where the entity had less history); [i, :, -1] is the value just before event i."""
    if history is None or len(history) == 0:
        history = np.empty((0, values.shape[1]), dtype=np.float64)
    return previous_windows_of_many([(history, values)], window)


def previous_windows_of_many(entities: list[tuple[np.ndarray, np.ndarray]], window: int) -> np.ndarray:
    """previous_windows of each (history, values) of several entities, concatenated, from one
    series cut into windows once: each entity's last `window` rows of history (NaN-padded to
    `window`) then its new values, each event's window starting at its own place. Built entity by
    entity, a window view and its copy cost about 10 microseconds an entity (the speed layer's
    keyed step appends one or two events to each of many entities). One entity's windows are a
    view of its series, not a copy (the batch layer's whole history)."""
    width = entities[0][1].shape[1]
    pieces, counts = [], []
    for history, values in entities:
        before = np.asarray(history, dtype=np.float64)[-window:]
        pieces += [np.full((window - len(before), width), np.nan), before, values]
        counts.append(len(values))
    windows = np.lib.stride_tricks.sliding_window_view(np.concatenate(pieces), window, axis=0)
    if len(counts) == 1:
        return windows[: counts[0]]
    # Entity e's series starts at e * window + the events before it: the event's own index plus e * window.
    return windows[np.arange(sum(counts)) + window * np.repeat(np.arange(len(counts)), counts)]


def features_from_windows(dataset: Dataset, values: np.ndarray, previous: np.ndarray, event_times: np.ndarray) -> np.ndarray:
    """Features of n events, each given with its own previous window (previous_windows), so events
    of many entities are computed in one call: each row's arithmetic is its own, and the same
    whatever the other rows (the speed layer stacks one new event of each of many entities)."""
    window = dataset.features.window
    count, width = values.shape
    present = ~np.isnan(previous)
    filled = np.where(present, previous, 0.0)
    # Fixed summation order, ((0.0 + t0) + t1) + ..., so the result is identical for any n. Few
    # events (the speed layer's one at a time): one sequential np.add.accumulate per sum, since a
    # loop of `window` tiny additions costs more in calls than in arithmetic. Many (the batch
    # layer's whole history): the loop, which needs no further (n, k, window) temporaries.
    if count * width * window < _ACCUMULATE_BELOW:
        seen = _sum_in_order(present.astype(np.float64))
        total = _sum_in_order(filled)
        mean = np.divide(total, seen, out=values.copy(), where=seen > 0)
        difference = np.where(present, filled - mean[:, :, np.newaxis], 0.0)
        squares = _sum_in_order(difference * difference)
    else:
        seen = np.zeros((count, width))
        total = np.zeros((count, width))
        for position in range(window):
            seen += present[:, :, position]
            total += filled[:, :, position]
        mean = np.divide(total, seen, out=values.copy(), where=seen > 0)
        squares = np.zeros((count, width))
        for position in range(window):
            difference = np.where(present[:, :, position], filled[:, :, position] - mean, 0.0)
            squares += difference * difference
    std = np.sqrt(np.divide(squares, seen, out=np.zeros((count, width)), where=seen > 0))

    last = previous[:, :, -1]
    diff = np.where(np.isnan(last), 0.0, values - np.nan_to_num(last))
    deviation = values - mean
    zscore = np.divide(deviation, std, out=np.zeros((count, width)), where=std > _MIN_STD)

    columns = []
    for field_index in range(width):
        columns += [
            values[:, field_index],
            diff[:, field_index],
            deviation[:, field_index],
            zscore[:, field_index],
        ]
    if dataset.features.time_of_day:
        columns += list(_time_of_day(event_times))
    if dataset.features.lags:
        columns += _lags(previous, values, dataset.features.lags)
    return np.column_stack(columns)


def _lags(previous: np.ndarray, values: np.ndarray, lags: int) -> list[np.ndarray]:
    """Columns x_lagL ... x_lag1 per field from the (n, k, window) previous values; a missing lag
    takes the next newer one (ultimately the event's own value): a copy, no arithmetic, so it is
    the same for any batch size."""
    filled = []
    newer = values
    for lag in range(1, lags + 1):
        current = previous[:, :, -lag]
        newer = np.where(np.isnan(current), newer, current)
        filled.append(newer)
    columns = []
    for lag in range(lags, 0, -1):
        columns += [filled[lag - 1][:, field_index] for field_index in range(values.shape[1])]
    return columns


_ACCUMULATE_BELOW = 1 << 16  # terms (events x fields x window) up to which one accumulate call wins


def _sum_in_order(terms: np.ndarray) -> np.ndarray:
    """Sums of (n, k, window) terms over the window in the loop's order, ((0.0 + t0) + t1) + ...:
    np.add.accumulate adds sequentially (np.sum's pairwise reduction would not), and the leading
    zero makes the first addition 0.0 + t0, as the loop's does (it turns -0.0 into 0.0)."""
    count, width, _ = terms.shape
    return np.add.accumulate(np.concatenate([np.zeros((count, width, 1)), terms], axis=2), axis=2)[:, :, -1]


def _time_of_day(event_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(event_times).astype("datetime64[us]")
    seconds = (times - times.astype("datetime64[D]")).astype("timedelta64[us]").astype(np.int64) / 1e6
    angle = 2.0 * np.pi * seconds / _SECONDS_PER_DAY
    return np.sin(angle), np.cos(angle)
