"""The system tables are declared once (lakehouse/system_tables.py): what delta-rs writes and what
the serving views name is that declaration. The Spark-written tables are checked in test_batch.py."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timezone

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

import schemas
from batch import run_log
from lakehouse import constants, registry, system_tables
from serving import views
from speed import tables

from fixtures_engines import delta_schema

NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_the_speed_layer_writes_the_declared_quarantine_and_hot_table(warehouse):
    dataset = schemas.load("metrics")
    quarantine_uri = tables.quarantine_uri(warehouse)
    tables.ensure_table(quarantine_uri, system_tables.QUARANTINE_SCHEMA)
    dead_letter = system_tables.quarantine_row(
        dataset.name, raw="{", source="kafka://topic/0@1", event_id=None, failed_rules=["record.json"],
        errors=["malformed JSON"], layer=constants.LAYER_SPEED, run_id=None, quarantined_at=NOW,
    )
    tables.insert_new(
        quarantine_uri, pa.Table.from_pylist([dead_letter], schema=system_tables.QUARANTINE_SCHEMA), list(system_tables.QUARANTINE_KEY)
    )
    assert delta_schema(quarantine_uri) == delta_schema(system_tables.QUARANTINE_SCHEMA)

    hot_uri = tables.hot_table_uri(warehouse, dataset)
    tables.ensure_table(hot_uri, system_tables.hot_scores_schema(dataset))
    record = {"event_id": "cpu@0", "entity_id": "cpu", "event_time": NOW, "value": 1.0, "_features": None}
    row = system_tables.hot_row(dataset, record, score=0.5, is_anomaly=False, model_version=1, scored_at=NOW, revision=1)
    tables.upsert_by_key(
        hot_uri, pa.Table.from_pylist([row], schema=system_tables.hot_scores_schema(dataset)), system_tables.scored_row_key(dataset), newest="revision"
    )
    assert delta_schema(hot_uri) == delta_schema(system_tables.hot_scores_schema(dataset))


def test_speed_tables_checkpoint_every_ten_commits_old_ones_too(tmp_path):
    """Readers replay the log from the last checkpoint on every query (serving)."""
    schema = pa.schema([pa.field("event_id", pa.string())])
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    tables.ensure_table(new, schema)
    write_deltalake(old, schema.empty_table())  # as an earlier release created it
    tables.ensure_table(old, schema)
    for uri in (new, old):
        assert DeltaTable(uri).metadata().configuration["delta.checkpointInterval"] == "10"
        for index in range(12):
            write_deltalake(uri, pa.table({"event_id": [str(index)]}, schema=schema), mode="append")
        assert any(name.endswith(".checkpoint.parquet") for name in os.listdir(f"{uri}/_delta_log"))


def test_a_hot_table_of_an_earlier_release_gains_the_likelihood_peak_and_keeps_its_rows(tmp_path):
    """The likelihood state gained `peak` (lakehouse/likelihood.py): a hot table written before has
    the struct without it; the speed layer's start evolves it, old rows read with no peak (0 when
    stepped on from), and rows with a peak are written after."""
    from lakehouse.likelihood import LikelihoodState

    dataset = schemas.load("metrics")
    schema = system_tables.hot_scores_schema(dataset)
    old_state = pa.field("likelihood", pa.struct([child for child in system_tables.LIKELIHOOD.type if child.name != "peak"]))
    old_schema = pa.schema([old_state if field.name == "likelihood" else field for field in schema])
    uri = str(tmp_path / "hot")
    record = {"event_id": "cpu@0", "entity_id": "cpu", "event_time": NOW, "value": 1.0, "_features": None}
    row = system_tables.hot_row(dataset, record, score=0.5, is_anomaly=False, model_version=1, scored_at=NOW, revision=1)
    row["likelihood"] = {"count": 11, "mean": 0.1, "variance": 0.2, "recent": [0.5]}
    write_deltalake(uri, pa.Table.from_pylist([row], schema=old_schema))
    tables.ensure_table(uri, schema)
    assert delta_schema(uri) == delta_schema(schema)
    (stored,) = DeltaTable(uri).to_pyarrow_table().to_pylist()
    assert stored["likelihood"]["peak"] is None and stored["likelihood"]["count"] == 11
    assert LikelihoodState.of_record(stored["likelihood"]) == LikelihoodState([0.5], 11, 0.1, 0.2, 0.0)
    newer = dict(row, event_id="cpu@1", likelihood={**row["likelihood"], "peak": 3.5})
    tables.upsert_by_key(uri, pa.Table.from_pylist([newer], schema=schema), system_tables.scored_row_key(dataset), newest="revision")
    peaks = {stored["event_id"]: stored["likelihood"]["peak"] for stored in DeltaTable(uri).to_pyarrow_table().to_pylist()}
    assert peaks == {"cpu@0": None, "cpu@1": 3.5}


def _hot_commits(uri: str, dataset, commits: int, per_commit: int) -> set[str]:
    """Streaming-like commits: each a MERGE of events of every entity, as the sink writes them."""
    from datetime import timedelta

    ids = set()
    for commit in range(commits):
        rows = []
        for number in range(per_commit):
            minute = commit * per_commit + number
            entity = f"host-{(minute * 7) % 13:02d}"
            record = {"event_id": f"{entity}@{minute}", "entity_id": entity, "event_time": NOW + timedelta(minutes=minute), "value": 1.0}
            rows.append(system_tables.hot_row(dataset, record, score=0.5, is_anomaly=False, model_version=1, scored_at=NOW, revision=1))
            ids.add(record["event_id"])
        tables.upsert_by_key(uri, pa.Table.from_pylist(rows, schema=system_tables.hot_scores_schema(dataset)), "event_id", newest="revision")
    return ids


def test_the_hot_table_is_compacted_sorted_by_entity_into_row_groups_trino_can_skip(warehouse, monkeypatch):
    """Its compacted file holds the rows sorted by entity (as the batch view is laid out), in row
    groups whose statistics each cover a narrow range of entities; every row kept."""
    import pyarrow.parquet as pq

    dataset = schemas.load("metrics")
    uri = tables.hot_table_uri(warehouse, dataset)
    tables.ensure_table(uri, system_tables.hot_scores_schema(dataset))
    monkeypatch.setattr(tables, "SORTED_ROW_GROUP_ROWS", 100)  # 800 rows: 8 row groups
    ids = _hot_commits(uri, dataset, commits=16, per_commit=50)
    assert tables.compact(uri, min_files=32, sort_by=["entity_id"]) == 0  # too few small files yet
    assert tables.compact(uri, min_files=16, sort_by=["entity_id"]) >= 16
    table = DeltaTable(uri)
    [path] = table.file_uris()
    assert set(table.to_pandas().event_id) == ids
    parquet = pq.ParquetFile(path.removeprefix("file://"))
    entities = parquet.read(columns=["entity_id"]).column("entity_id").to_pylist()
    assert entities == sorted(entities)
    groups = [parquet.metadata.row_group(index) for index in range(parquet.metadata.num_row_groups)]
    assert len(groups) == 8
    column = parquet.schema_arrow.get_field_index("entity_id")
    spans = [(group.column(column).statistics.min, group.column(column).statistics.max) for group in groups]
    # One entity is in at most two row groups of the eight.
    assert max(sum(low <= f"host-{entity:02d}" <= high for low, high in spans) for entity in range(13)) <= 2


def test_a_hot_table_too_big_to_rewrite_whole_is_compacted_unsorted(warehouse, monkeypatch):
    dataset = schemas.load("metrics")
    uri = tables.hot_table_uri(warehouse, dataset)
    tables.ensure_table(uri, system_tables.hot_scores_schema(dataset))
    ids = _hot_commits(uri, dataset, commits=16, per_commit=50)
    monkeypatch.setattr(tables, "SORTED_TABLE_BYTES", 1024)
    assert tables.compact(uri, min_files=16, sort_by=["entity_id"]) >= 16
    table = DeltaTable(uri)
    assert len(table.file_uris()) == 1 and set(table.to_pandas().event_id) == ids
    entities = table.to_pandas().entity_id.tolist()
    assert entities != sorted(entities)  # bin-packed as committed


def test_rows_built_for_the_speed_layer_hold_exactly_the_declared_columns():
    dataset = schemas.load("sensor_events")
    record = {"event_id": "e", "entity_id": "sensor-000", "event_time": NOW, "temperature": 1.0, "pressure": 2.0,
              "vibration": 3.0, "status": "ok"}
    row = system_tables.hot_row(dataset, record, score=1, is_anomaly=1, model_version=2, scored_at=NOW, revision=3)
    assert list(row) == system_tables.hot_scores_schema(dataset).names
    assert (row["score"], row["is_anomaly"]) == (1.0, True)
    dead_letter = system_tables.quarantine_row(
        dataset.name, raw="x", source=None, event_id=None, failed_rules=[], errors=[],
        layer=constants.LAYER_SPEED, run_id=None, quarantined_at=NOW,
    )
    assert list(dead_letter) == system_tables.QUARANTINE_SCHEMA.names


def test_the_run_log_and_the_registry_are_written_as_declared(warehouse):
    run_log.append(warehouse, run_log.RunRecord(
        run_id="run-1", dataset="metrics", status=system_tables.STATUS_SUCCEEDED, started_at=NOW, finished_at=NOW, inputs=[],
    ))
    assert delta_schema(run_log.table_uri(warehouse)) == delta_schema(system_tables.BATCH_RUNS_SCHEMA)
    registry.register(warehouse, [{
        "dataset": "metrics", "entity_id": system_tables.DATASET_WIDE_ENTITY, "version": 1, "detector": "knn",
        "artifact_uri": "memory://model.pkl",
    }])
    assert delta_schema(registry.table_uri(warehouse)) == delta_schema(system_tables.MODELS_SCHEMA)


def test_the_run_record_has_a_field_for_every_run_log_column_in_order():
    # RunRecord is the run log's row in Python; a column added to one must be added to the other.
    assert [field.name for field in dataclasses.fields(run_log.RunRecord)] == system_tables.BATCH_RUNS_SCHEMA.names


def test_both_scored_tables_share_the_served_columns():
    dataset = schemas.load("sensor_events")
    served = system_tables.served_columns(dataset)
    assert served == ["event_id", "entity_id", "event_time", "temperature", "pressure", "vibration", "score", "is_anomaly", "model_version"]
    for schema in (system_tables.batch_scores_schema(dataset), system_tables.hot_scores_schema(dataset)):
        assert schema.names[: len(served)] == served
        assert list(schema)[: len(served)] == system_tables.scored_fields(dataset)


def test_an_entity_is_scored_by_its_own_model_else_the_dataset_wide_one():
    own = {"cpu": "model of cpu"}
    assert system_tables.model_for(own, "cpu") == "model of cpu"
    assert system_tables.model_for(own, "disk") is None
    both = {**own, system_tables.DATASET_WIDE_ENTITY: "dataset-wide model"}
    assert system_tables.model_for(both, "cpu") == "model of cpu"
    assert system_tables.model_for(both, "disk") == "dataset-wide model"


def test_the_merged_view_serves_the_declared_columns_split_at_a_literal_watermark():
    dataset = schemas.load("metrics")
    watermark = datetime(2024, 1, 1, 0, 9, 30, 123456, tzinfo=timezone.utc)
    sql = views.merged_view_sql(dataset, has_batch=True, has_hot=True, watermark=watermark)
    assert ", ".join(f'side."{name}"' for name in system_tables.served_columns(dataset)) in sql
    # The boundary is a constant (no query reads the run log), at the served millisecond precision.
    assert constants.BATCH_RUNS not in sql
    assert "<= TIMESTAMP '2024-01-01 00:09:30.123 UTC'" in sql and "> TIMESTAMP '2024-01-01 00:09:30.123 UTC'" in sql
    # No successful run yet: the hot table answers everything, unfiltered.
    speed_only = views.merged_view_sql(dataset, has_batch=True, has_hot=True, watermark=None)
    assert constants.BATCH_SCORES not in speed_only.split("UNION ALL")[-1] and "WHERE" not in speed_only.split("UNION ALL")[-1]


def test_the_merged_view_maps_lagging_entities_to_their_covered_until_times():
    dataset = schemas.load("metrics")
    watermark = datetime(2024, 1, 1, 0, 9, 30, tzinfo=timezone.utc)
    lagging = (("cpu", datetime(2024, 1, 1, 0, 5, tzinfo=timezone.utc)), ("it's", None))
    sql = views.merged_view_sql(dataset, has_batch=True, has_hot=True, watermark=watermark, lagging=lagging)
    batch, hot, lagging_hot = sql.split("UNION ALL")
    # The batch side keeps its filter: Trino drops it while planning a query that starts after W.
    assert "WHERE side.\"event_time\" <= TIMESTAMP '2024-01-01 00:09:30.000 UTC'" in batch
    # Hot rows after W answer unconditionally; the lagging entities' rows at or before W are a
    # branch of their own (dropped by a query that starts after W), their covered-until times
    # from a constant map, no join, the lowest one bounding the scan.
    assert hot.strip().endswith("WHERE side.\"event_time\" > TIMESTAMP '2024-01-01 00:09:30.000 UTC'")
    assert "JOIN" not in sql
    assert ("WHERE side.\"event_time\" > TIMESTAMP '1970-01-01 00:00:00.000 UTC' "
            "AND side.\"event_time\" <= TIMESTAMP '2024-01-01 00:09:30.000 UTC' AND side.\"event_time\" > element_at(") in lagging_hot
    assert "MAP(ARRAY['cpu', 'it''s'], ARRAY[TIMESTAMP '2024-01-01 00:05:00.000 UTC', TIMESTAMP '1970-01-01 00:00:00.000 UTC'])" in lagging_hot


def test_the_record_hash_joins_the_record_and_its_source():
    assert system_tables.record_hash("{}", "a.jsonl") != system_tables.record_hash("{}", "b.jsonl")
    assert system_tables.record_hash("{}", None) == system_tables.record_hash("{}", "")
