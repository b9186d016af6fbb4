"""The built-in scheduler of the embedded default: run the batch job every interval or on a cron.

Each tick runs the batch job over the input files that no successful run has read yet (by path),
so an hourly schedule over a landing folder processes each new file once; files are expected to
be written once and not appended to. A failed run is logged and retried at the next tick with
the same files. Teams with Airflow use infra/airflow/ instead.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

from batch import run_log
from batch.job import LANDING_INPUT, resolve_inputs, run_batch
from lakehouse import system_tables
from lakehouse.errors import ConfigurationError, LakehouseError
from lakehouse.settings import Settings

log = logging.getLogger(__name__)


def tick_times(*, every: timedelta | None = None, cron: str | None = None, start: datetime | None = None) -> Iterator[datetime]:
    """The times the schedule fires, after `start` (UTC)."""
    if (every is None) == (cron is None):
        raise ConfigurationError("give exactly one of an interval (--every) or a cron expression (--cron)")
    start = start or datetime.now(timezone.utc)
    if every is not None:
        if every <= timedelta(0):
            raise ConfigurationError(f"interval must be positive, got {every}")
        moment = start
        while True:
            moment += every
            yield moment
    from croniter import croniter

    if not croniter.is_valid(cron):
        raise ConfigurationError(f"not a cron expression: {cron!r} (five fields: minute hour day month weekday)")
    iterator = croniter(cron, start)
    while True:
        yield iterator.get_next(datetime)


def parse_interval(text: str) -> timedelta:
    """'90s', '15m', '1h', '1d' -> timedelta."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError) as error:
        raise ConfigurationError(f"interval {text!r}: use a number and s, m, h or d (e.g. 1h)") from error


def unprocessed(settings: Settings, dataset: str, inputs: list[str]) -> list[str]:
    """Files matching the inputs that no successful run of the dataset has read."""
    if LANDING_INPUT in inputs:
        return inputs  # the landing table grows in place; MERGE makes every pass idempotent
    runs = run_log.runs(settings, dataset)
    done = set()
    for row in runs[runs["status"] == system_tables.STATUS_SUCCEEDED].itertuples():
        done.update(json.loads(row.inputs or "[]"))
    try:
        files = resolve_inputs(inputs)
    except LakehouseError:
        return []  # nothing has landed yet
    return [path for path in files if path not in done]


def run_once(settings: Settings, dataset: str, inputs: list[str], **batch_options) -> run_log.RunRecord | None:
    """One tick: a batch run over the new files, or None when there are none."""
    files = unprocessed(settings, dataset, inputs)
    if not files:
        log.info("schedule %s: no new input files", dataset)
        return None
    try:
        return run_batch(dataset, files, settings=settings, **batch_options)
    except LakehouseError as error:
        log.error("schedule %s: run failed, retried at the next tick: %s", dataset, error)
        return None


def run_schedule(
    settings: Settings,
    dataset: str,
    inputs: list[str],
    times: Iterator[datetime],
    *,
    max_runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **batch_options,
) -> int:
    """Fire at each time until max_runs ticks have passed (forever without it); return the ticks."""
    ticks = 0
    for moment in times:
        wait = (moment - datetime.now(timezone.utc)).total_seconds()
        if wait > 0:
            log.info("schedule %s: next run at %s", dataset, moment.isoformat(timespec="seconds"))
            sleep(wait)
        run_once(settings, dataset, inputs, **batch_options)
        ticks += 1
        if max_runs is not None and ticks >= max_runs:
            break
    return ticks
