"""The merged view of each dataset, the heart of the Lambda architecture.

    merged = batch view rows with event_time <= W
             UNION ALL  hot rows with event_time > W, or after their entity's newest batch row

where W, the watermark, is the newest event time the last successful batch run covers. W is
written into the view as a literal when the view is refreshed (`refresh`, which the batch job's
after-write hook calls after every run, and `lakehouse up` and `lakehouse serve refresh`): no
query reads the run log, and Trino prunes both sides' files by the boundary as by any constant
filter. Reading W from batch_runs in every query cost 1.7 to 5.7 times the batch table alone
(docs/benchmarks.md). The price: a batch run whose refresh did not happen (Trino down) leaves
the old boundary until the next refresh, while its expiry has already removed the hot rows it
covers; the hook logs that, and `lakehouse serve refresh` closes the gap.

An entity whose events came late to the batch layer is covered by the batch view only up to its
own newest batch row: its hot rows after that row answer too, though they are before W. Those
entities and their covered-until times are written into the view at refresh as a constant map
(`lagging_entities`), so no query aggregates the batch view; the batch run's expiry removes
hot rows by event id the same way (batch/tables.py). An entity that starts lagging between two
refreshes is served as lagging from the next refresh on.

The batch side keeps its row filter `event_time <= W`, though the batch view holds nothing after W
once its run is logged: with it Trino drops the batch side while planning any query whose own
time filter starts after W (the last hour, one entity's last day: a one-fragment plan over the hot
table), and the filter keeps out the rows of a run that wrote the view but never logged its
success. Reading the batch view at a pinned Delta version (`FOR VERSION AS OF`) without the
filter was measured for issue #16: it saved about a fifth of the full aggregate's CPU (the batch
scan's event_time column) but planned those recent-window queries as three fragments with a
batch scan of zero files, slower; so it was not kept (docs/benchmarks.md, serving).

With no successful batch run yet, W is NULL and every hot row answers. Each event id appears
once: the batch view and the hot table are each unique by event id, and an event's hot row
answers only when the batch view holds no row of its entity at or after its time. The `layer`
column says which side answered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

import schemas
from lakehouse import constants, storage, system_tables
from lakehouse.settings import Settings
from schemas.declaration import Dataset
from serving import trino_client

log = logging.getLogger(__name__)


def _qualified(schema: str, table: str) -> str:
    return f'{constants.CATALOG}."{schema}"."{table}"'


def _create_view(schema: str, name: str, body: str) -> str:
    return f"CREATE OR REPLACE VIEW {_qualified(schema, name)} AS\n{body}"


def timestamp_literal(value: datetime | None) -> str:
    """A Trino literal of the served timestamp type (timestamp(3) with time zone) for an instant."""
    if value is None:
        return "CAST(NULL AS timestamp(3) with time zone)"
    if value.tzinfo is None:
        raise ValueError(f"{value!r}: the watermark must carry its time zone")
    utc = value.astimezone(timezone.utc)
    return f"TIMESTAMP '{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d} UTC'"


def merged_view_sql(
    dataset: Dataset, *, has_batch: bool, has_hot: bool, watermark: datetime | None,
    lagging: tuple[tuple[str, datetime | None], ...] = (), alert_column: bool = False, surprise_column: bool = False,
) -> str:
    """CREATE OR REPLACE VIEW for the dataset's merged view over the sides that exist, with the
    boundary `watermark` (None: no successful batch run, the speed layer answers everything).

    `lagging` lists the entities with hot rows whose newest batch row is older than the watermark
    (or that have none: None), with that row's time: their hot rows after it answer too
    (`lagging_entities`, computed at refresh, so no query aggregates the batch view).

    `alert_column`: every side carries `is_alert` (system_tables.IS_ALERT, written by both
    layers), served after the declared columns; the `alerts` view then reads it.

    `surprise_column`: every side carries the calibrated score (system_tables.SURPRISE), served
    after them."""
    names = [*system_tables.served_columns(dataset), *([system_tables.IS_ALERT.name] if alert_column else []),
             *([system_tables.SURPRISE.name] if surprise_column else [])]
    selected = ", ".join(f'side."{name}"' for name in names)
    boundary = timestamp_literal(watermark)
    event_time = f'side."{dataset.event_time}"'
    parts = []
    if has_batch and watermark is not None:
        parts.append(
            f"SELECT {selected}, '{constants.LAYER_BATCH}' AS layer, {boundary} AS watermark "
            f"FROM {_qualified(dataset.name, constants.BATCH_SCORES)} side WHERE {event_time} <= {boundary}"
        )
    if has_hot:
        hot = f"SELECT {selected}, '{constants.LAYER_SPEED}' AS layer, {boundary} AS watermark FROM {_qualified(dataset.name, constants.HOT_SCORES)} side"
        if watermark is not None and lagging:
            # The lagging entities' hot rows at or before W are a branch of their own: a query
            # whose time filter starts after W drops it while planning (as it drops the batch
            # side), and so runs as if no entity lagged. Each entity's covered-until time comes
            # from a constant map, not a LEFT JOIN with an inline VALUES table: with 199 lagging
            # entities the join cost 100 to 300 ms of planning on every query, the map 20 to 90
            # (docs/benchmarks.md, serving). The lowest covered-until bounds the branch's scan.
            until = {entity: until or _LONG_AGO for entity, until in lagging}
            covered = (
                f"element_at(MAP(ARRAY[{', '.join(_string_literal(entity) for entity in until)}], "
                f"ARRAY[{', '.join(timestamp_literal(time) for time in until.values())}]), side.\"{dataset.entity}\")"
            )
            parts.append(f"{hot} WHERE {event_time} > {boundary}")
            parts.append(
                f"{hot} WHERE {event_time} > {timestamp_literal(min(until.values()))} AND {event_time} <= {boundary} "
                f"AND {event_time} > {covered}"
            )
        elif watermark is not None:
            parts.append(f"{hot} WHERE {event_time} > {boundary}")
        else:
            parts.append(hot)
    if not parts and has_batch:
        # A batch view without a successful run behind it serves nothing yet.
        parts.append(
            f"SELECT {selected}, '{constants.LAYER_BATCH}' AS layer, {boundary} AS watermark "
            f"FROM {_qualified(dataset.name, constants.BATCH_SCORES)} side WHERE false"
        )
    if not parts:
        raise ValueError(f"{dataset.name}: neither a batch view nor a hot table exists yet")
    return _create_view(dataset.name, constants.MERGED_VIEW, "\nUNION ALL\n".join(parts))


# The covered-until of an entity with hot rows and no batch row at all: all its hot rows answer.
_LONG_AGO = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _string_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def lagging_entities(dataset: Dataset, watermark: datetime, settings: Settings) -> tuple[tuple[str, datetime | None], ...]:
    """Entities with hot rows whose newest batch row is before the watermark (their events came
    late to the batch layer), or that have no batch row: (entity, newest batch row's time or
    None). One aggregation per refresh; the batch run's expiry removes hot rows by event id the
    same way (batch/tables.py), so these rows stay in the hot table and answer from it."""
    entity, event_time = f'"{dataset.entity}"', f'"{dataset.event_time}"'
    answer = trino_client.query(
        f"WITH covered AS (SELECT {entity} AS entity, max({event_time}) AS until "
        f"FROM {_qualified(dataset.name, constants.BATCH_SCORES)} GROUP BY 1), "
        f"speed AS (SELECT DISTINCT {entity} AS entity FROM {_qualified(dataset.name, constants.HOT_SCORES)}) "
        f"SELECT speed.entity, covered.until FROM speed LEFT JOIN covered ON covered.entity = speed.entity "
        f"WHERE covered.until IS NULL OR covered.until < {timestamp_literal(watermark)} ORDER BY 1",
        settings=settings,
    )
    return tuple(
        (str(name), None if until is None or pd.isna(until) else pd.Timestamp(until).to_pydatetime())
        for name, until in zip(answer.entity, answer.until)
    )


def current_watermark(dataset: Dataset, settings: Settings) -> datetime | None:
    """The newest watermark of the dataset's successful batch runs, as Trino reads the run log."""
    runs = _qualified(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    answer = trino_client.query(
        f"SELECT max(watermark) AS watermark FROM {runs} WHERE dataset = ? AND status = ?",
        [dataset.name, system_tables.STATUS_SUCCEEDED], settings=settings,
    )
    value = answer.watermark[0] if len(answer) else None
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()


@dataclass(frozen=True)
class Boundary:
    """Where the merged view splits, as literals written into the views at refresh.

    watermark: the newest watermark of a successful batch run (None: no run yet).
    tail_start: the earliest event time among each entity's last `alert_quiet_events` batch
    rows: from there on the `alerts` view runs its window, so that every speed-side row sees the
    batch rows before it (None: no batch side, the window runs over every speed row).
    batch_alerts: the batch view carries its own alert flags (system_tables.IS_ALERT).
    alert_column: the merged view serves `is_alert` from both sides (the hot table's written by
    the speed layer, speed/alert_flags.py): the `alerts` view is a filter on it, no window.
    surprise_column: the merged view serves `surprise` (system_tables.SURPRISE); the anomaly and
    alert views show it.
    """

    watermark: datetime | None = None
    tail_start: datetime | None = None
    batch_alerts: bool = False
    alert_column: bool = False
    surprise_column: bool = False


def convenience_views_sql(dataset: Dataset, boundary: Boundary = Boundary()) -> dict[str, str]:
    """The views users ask for first, all over the merged view: name -> CREATE OR REPLACE VIEW."""
    merged = _qualified(dataset.name, constants.MERGED_VIEW)
    entity, event_time, event_id = (f'"{dataset.entity}"', f'"{dataset.event_time}"', f'"{dataset.event_id}"')
    features = ", ".join(f'"{name}"' for name in dataset.features.fields)
    surprise = f", {system_tables.SURPRISE.name}" if boundary.surprise_column else ""
    flagged_columns = f"{event_id}, {entity}, {event_time}, score{surprise}, model_version, layer, {features}"
    bodies = {
        # Every anomaly, newest first when ordered by event time; the layer that scored it.
        constants.ANOMALIES_VIEW: f"SELECT {flagged_columns} FROM {merged} WHERE is_anomaly",
        # The first alarm of each episode (lakehouse/alerts.py): an alarm none of the entity's
        # previous `alert_quiet_events` events raised; what to page on. See _alerts_body.
        constants.ALERTS_VIEW: _alerts_body(dataset, merged, flagged_columns, boundary),
        # Per entity and hour: events, anomalies, highest score. "The last N hours" is a filter on
        # `hour` (`lakehouse anomalies --hours N` writes it).
        constants.HOURLY_VIEW: (
            f"SELECT {entity}, date_trunc('hour', {event_time}) AS hour, count(*) AS events, "
            f"count_if(is_anomaly) AS anomalies, max(score) AS max_score "
            f"FROM {merged} GROUP BY 1, 2"
        ),
        # One row per entity: volume, anomaly rate, time span, which layer answered, newest model.
        constants.ENTITY_SUMMARY_VIEW: (
            f"SELECT {entity}, count(*) AS events, count_if(is_anomaly) AS anomalies, "
            f"CAST(count_if(is_anomaly) AS double) / count(*) AS anomaly_rate, "
            f"min({event_time}) AS first_event, max({event_time}) AS last_event, "
            f"max(CASE WHEN is_anomaly THEN {event_time} END) AS last_anomaly, max(score) AS max_score, "
            f"avg(score) AS mean_score, count_if(layer = '{constants.LAYER_BATCH}') AS batch_events, "
            f"count_if(layer = '{constants.LAYER_SPEED}') AS speed_events, max(model_version) AS model_version "
            f"FROM {merged} GROUP BY 1"
        ),
    }
    return {name: _create_view(dataset.name, name, body) for name, body in bodies.items()}


def _alerts_body(dataset: Dataset, merged: str, columns: str, boundary: Boundary) -> str:
    """Where both sides carry `is_alert` (the batch job's over each entity's whole history, the
    speed layer's from each entity's previous flags in its state, revised after late events), a
    filter on that column, as cheap as the `anomalies` view's.

    Otherwise (tables from before the speed layer wrote the flag), batch rows answer from the
    flag the batch job wrote; speed rows
    from a window over the speed side plus each entity's batch tail (the rows from
    `boundary.tail_start` on, enough to look `alert_quiet_events` events back across the
    boundary). A window over all history, as before, cannot have a filter on time pushed below
    it and cost 1.7x the `anomalies` view on a small warehouse; this one is bounded by what the
    hot table holds since the last batch run. Late speed events are ordered into the window like
    any other; late batch-side events wait for the next batch run, as in the merged view."""
    quiet = dataset.detector.alert_quiet_events
    if quiet == 0:
        return f"SELECT {columns} FROM {merged} WHERE is_anomaly"
    if boundary.alert_column:
        return f"SELECT {columns} FROM {merged} WHERE {system_tables.IS_ALERT.name}"
    entity, event_time, event_id = (f'"{dataset.entity}"', f'"{dataset.event_time}"', f'"{dataset.event_id}"')
    recent = (
        f"max(CAST(is_anomaly AS integer)) OVER (PARTITION BY {entity} ORDER BY {event_time}, {event_id} "
        f"ROWS BETWEEN {quiet} PRECEDING AND 1 PRECEDING)"
    )
    if boundary.watermark is None or not boundary.batch_alerts:
        # No batch side (or one from before the flag existed): the window over every merged row.
        return (
            f"SELECT {columns} FROM (SELECT *, {recent} AS recent_alarms FROM {merged}) "
            f"WHERE is_anomaly AND coalesce(recent_alarms, 0) = 0"
        )
    watermark = timestamp_literal(boundary.watermark)
    batch = _qualified(dataset.name, constants.BATCH_SCORES)
    tail = f" WHERE {event_time} >= {timestamp_literal(boundary.tail_start)}" if boundary.tail_start is not None else ""
    return (
        f"SELECT {columns} FROM (SELECT *, '{constants.LAYER_BATCH}' AS layer FROM {batch} "
        f"WHERE {event_time} <= {watermark}) WHERE {system_tables.IS_ALERT.name}\n"
        f"UNION ALL\n"
        f"SELECT {columns} FROM (SELECT *, {recent} AS recent_alarms FROM {merged}{tail}) "
        f"WHERE layer = '{constants.LAYER_SPEED}' AND is_anomaly AND coalesce(recent_alarms, 0) = 0"
    )


def alert_tail_start(dataset: Dataset, watermark: datetime, settings: Settings) -> datetime | None:
    """The earliest event time among each entity's last `alert_quiet_events` batch rows (at or
    before the watermark): the `alerts` view's window starts there. One window over the batch
    view per refresh, instead of one per query."""
    entity, event_time, event_id = (f'"{dataset.entity}"', f'"{dataset.event_time}"', f'"{dataset.event_id}"')
    batch = _qualified(dataset.name, constants.BATCH_SCORES)
    answer = trino_client.query(
        f"SELECT min({event_time}) AS tail_start FROM (SELECT {event_time}, row_number() OVER "
        f"(PARTITION BY {entity} ORDER BY {event_time} DESC, {event_id} DESC) AS back "
        f"FROM {batch} WHERE {event_time} <= {timestamp_literal(watermark)}) WHERE back <= ?",
        [dataset.detector.alert_quiet_events], settings=settings,
    )
    value = answer.tail_start[0] if len(answer) else None
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()


def quality_views_sql() -> dict[str, str]:
    """Data-quality views over the run log and the quarantine (schema `lakehouse`)."""
    runs = _qualified(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)
    quarantine = _qualified(constants.SYSTEM_SCHEMA, constants.QUARANTINE)
    bodies = {
        # One row per batch run: its counts, whether they add up, its share of rejected rows.
        constants.DQ_RUNS_VIEW: (
            "SELECT run_id, dataset, status, started_at, finished_at, input_rows, valid_rows, quarantined_rows, "
            "duplicate_rows, CAST(quarantined_rows AS double) / nullif(input_rows, 0) AS quarantine_rate, "
            "input_rows = valid_rows + quarantined_rows + duplicate_rows AS counts_add_up, watermark, error "
            f"FROM {runs}"
        ),
        # Rejections per rule: per batch run, and per day for the speed layer (no run there).
        constants.DQ_RULES_VIEW: (
            "SELECT dataset, layer, run_id, date_trunc('day', quarantined_at) AS day, rule, count(*) AS records, "
            "min(quarantined_at) AS first_seen, max(quarantined_at) AS last_seen, "
            "min(element_at(errors, 1)) AS example_error "
            f"FROM {quarantine} CROSS JOIN UNNEST(failed_rules) AS failure(rule) GROUP BY 1, 2, 3, 4, 5"
        ),
    }
    return {name: _create_view(constants.SYSTEM_SCHEMA, name, body) for name, body in bodies.items()}


def refresh(dataset_name: str, settings: Settings) -> list[str]:
    """Register the dataset's tables and the system tables in Trino, then (re)create its merged view."""
    dataset = schemas.load(dataset_name)
    messages = []
    present = {}
    for schema, table in [
        *((constants.SYSTEM_SCHEMA, name) for name in constants.SYSTEM_TABLES),
        *((dataset.name, name) for name in constants.DATASET_TABLES),
    ]:
        uri = settings.table_uri(schema, table)
        present[(schema, table)] = storage.table_exists(uri)
        if present[(schema, table)]:
            trino_client.register_table(schema, table, uri, settings=settings)
            messages.append(f"registered {schema}.{table}")
    has_runs = present[(constants.SYSTEM_SCHEMA, constants.BATCH_RUNS)]
    has_batch = present[(dataset.name, constants.BATCH_SCORES)] and has_runs
    has_hot = present[(dataset.name, constants.HOT_SCORES)]
    if has_batch or has_hot:
        watermark = current_watermark(dataset, settings) if has_runs else None
        lagging = lagging_entities(dataset, watermark, settings) if has_batch and has_hot and watermark is not None else ()
        flag = system_tables.IS_ALERT.name
        batch_alerts = has_batch and _has_column(dataset.name, constants.BATCH_SCORES, flag, settings)
        # Every side the view reads carries the flag (a hot table from before it gets the column
        # when the speed layer next starts, speed/tables.ensure_table).
        alert_column = (batch_alerts or not has_batch) and (not has_hot or _has_column(dataset.name, constants.HOT_SCORES, flag, settings))
        # The same for the calibrated score: served once every side the view reads carries it.
        surprise = system_tables.SURPRISE.name
        surprise_column = ((not has_batch or _has_column(dataset.name, constants.BATCH_SCORES, surprise, settings))
                           and (not has_hot or _has_column(dataset.name, constants.HOT_SCORES, surprise, settings)))
        sql = merged_view_sql(dataset, has_batch=has_batch, has_hot=has_hot, watermark=watermark, lagging=lagging,
                              alert_column=alert_column, surprise_column=surprise_column)
        trino_client.execute(sql, settings=settings)
        messages.append(f"created view {dataset.name}.{constants.MERGED_VIEW} (batch: {has_batch}, speed: {has_hot}, watermark: {watermark})")
        boundary = Boundary(watermark=watermark, alert_column=alert_column, surprise_column=surprise_column)
        if not alert_column and batch_alerts and watermark is not None:
            boundary = Boundary(watermark, alert_tail_start(dataset, watermark, settings), batch_alerts=True,
                                surprise_column=surprise_column)
        for name, sql in convenience_views_sql(dataset, boundary).items():
            trino_client.execute(sql, settings=settings)
            messages.append(f"created view {dataset.name}.{name}")
    if has_runs and present[(constants.SYSTEM_SCHEMA, constants.QUARANTINE)]:
        for name, sql in quality_views_sql().items():
            trino_client.execute(sql, settings=settings)
            messages.append(f"created view {constants.SYSTEM_SCHEMA}.{name}")
    return messages


def _has_column(schema: str, table: str, column: str, settings: Settings, role: str = "admin") -> bool:
    answer = trino_client.query(
        f"SELECT count(*) AS n FROM {constants.CATALOG}.information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? AND column_name = ?",
        [schema, table, column], settings=settings, role=role,
    )
    return bool(answer.n[0])


def recent_anomalies(dataset_name: str, hours: float, *, settings: Settings, role: str = "admin"):
    """Anomalies per entity in the last `hours` of data (ending at the newest event in the merged
    view, so a replay of old data answers as live data does), as a DataFrame."""
    dataset = schemas.load(dataset_name)
    entity = f'"{dataset.entity}"'
    hourly = _qualified(dataset.name, constants.HOURLY_VIEW)
    sql = (
        f"WITH newest AS (SELECT max(hour) AS hour FROM {hourly}) "
        f"SELECT h.{entity}, sum(h.anomalies) AS anomalies, sum(h.events) AS events, max(h.max_score) AS max_score "
        f"FROM {hourly} h CROSS JOIN newest "
        f"WHERE h.hour > newest.hour - parse_duration(?) "
        f"GROUP BY 1 ORDER BY anomalies DESC, 1"
    )
    # Whole hours, since the view counts per hour: the newest hour plus the N - 1 before it.
    return trino_client.query(sql, [f"{max(1, round(hours))}h"], settings=settings, role=role)


def recent_alerts(dataset_name: str, hours: float, *, settings: Settings, role: str = "admin"):
    """The alerts (first alarm of each episode) of the last `hours` of data, newest first, ending
    at the newest event in the merged view, as a DataFrame."""
    dataset = schemas.load(dataset_name)
    entity, event_time, event_id = (f'"{dataset.entity}"', f'"{dataset.event_time}"', f'"{dataset.event_id}"')
    alerts = _qualified(dataset.name, constants.ALERTS_VIEW)
    merged = _qualified(dataset.name, constants.MERGED_VIEW)
    # The calibrated score, where the views serve it (both layers' tables carry it).
    surprise = system_tables.SURPRISE.name
    calibrated = f", round(a.{surprise}, 1) AS {surprise}" if _has_column(dataset.name, constants.ALERTS_VIEW, surprise, settings, role) else ""
    sql = (
        f"WITH newest AS (SELECT max({event_time}) AS at FROM {merged}) "
        f"SELECT a.{event_time}, a.{entity}, a.{event_id}, round(a.score, 3) AS score{calibrated}, a.layer, a.model_version "
        f"FROM {alerts} a CROSS JOIN newest WHERE a.{event_time} > newest.at - parse_duration(?) "
        f"ORDER BY 1 DESC, 2"
    )
    return trino_client.query(sql, [f"{hours:g}h"], settings=settings, role=role)


def refresh_all(settings: Settings) -> list[str]:
    """refresh() for every declared dataset that has tables in the warehouse."""
    messages = []
    for name in schemas.available():
        if any(storage.table_exists(settings.table_uri(name, table)) for table in constants.DATASET_TABLES):
            messages += refresh(name, settings)
    return messages
