"""Seeding the speed layer's per-entity state from silver, so features match the batch layer's.

A freshly started pipeline has empty state: without seeding, the first `window` events of each
entity would see less history than the batch layer gives them, and score differently. At start
each worker reads the newest days of silver (partition pruning on event_date) and keeps the last
events of each entity; an entity's state is seeded from them on its first event.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import numpy as np
import pyarrow.compute as pc

from lakehouse import constants, storage
from lakehouse.settings import Settings
from schemas.declaration import Dataset

log = logging.getLogger(__name__)

History = tuple[list, list, np.ndarray]  # event times, event ids, values (events x fields)


def recent_history(settings: Settings, dataset: Dataset, *, lookback_days: int = 7) -> dict[str, History]:
    """entity -> its newest events in silver (at most 2 x window), oldest first."""
    uri = settings.table_uri(dataset.name, constants.SILVER)
    if not storage.table_exists(uri):
        return {}
    table = storage.open_table(uri)
    days = [date.fromisoformat(str(partition["event_date"])) for partition in table.partitions()]
    if not days:
        return {}
    since = max(days) - timedelta(days=lookback_days)
    columns = [dataset.event_id, dataset.entity, dataset.event_time, *dataset.features.fields]
    rows = (
        table.to_pyarrow_dataset()
        .to_table(columns=columns, filter=pc.field("event_date") >= pc.scalar(since))
        .to_pandas()
        .sort_values([dataset.entity, dataset.event_time, dataset.event_id])
    )
    keep = 2 * dataset.features.window
    history: dict[str, History] = {}
    for entity, events in rows.groupby(dataset.entity, sort=False):
        events = events.tail(keep)
        times = [time.to_pydatetime() for time in events[dataset.event_time]]
        history[str(entity)] = (times, list(events[dataset.event_id]), events[dataset.features.fields].to_numpy(np.float64))
    log.info("speed: seeded history for %d entities of %s from silver since %s", len(history), dataset.name, since)
    return history
