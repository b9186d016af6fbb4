"""Duplicates and conflicts: which version of an event id silver keeps, and where the others go.

Records of a run that carry one event id are compared by their values (every declared field, typed):
- the **winner** is the version the dataset's `duplicates` policy picks: `first`, silver's version,
  else the run's earliest record (by source file, then line); `latest`, the run's last record (by
  source file, then line), over silver's. A run's files are read in name order, so name files
  so that a later resend sorts after the one it corrects.
- a record with the winner's values is a **duplicate** (an exact repeat; counted, not kept);
- a record with other values is a **conflict**: kept in the quarantine under rule
  `event_id.conflict` with the line as it arrived, counted apart (`conflict_rows`);
- under `latest`, a silver version the run replaces is kept in the quarantine too (rule
  `event_id.conflict`, `raw` its values as JSON, `source` its silver source file). It is not an
  input of the run, so it is not in the run's accounting.

The run's accounting: input = valid + quarantined + duplicates + conflicts, where valid is what the
run wrote into silver (inserted, or under `latest` updated).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from batch.source import LINE_NUMBER, SOURCE_FILE
from batch.validation import ERRORS, FAILED_RULES, RAW, RECORD_ID
from schemas.declaration import Dataset

CONFLICT_RULE = "event_id.conflict"
VALUES = "_values"
_RANK = "_rank"
_WINNER_VALUES = "_winner_values"
_SILVER_VALUES = "_silver_values"


OUTCOME = "_outcome"
WRITE, DUPLICATE, CONFLICT = "write", "duplicate", "conflict"
# Conflicting records up to this many are broadcast to the run's lines (a few MB of values).
_BROADCAST_CONFLICTS = 100_000


@dataclass
class Resolution:
    """One run's valid records sorted out against silver: each record's OUTCOME decided once, so
    the three parts and their counts come from one pass (persist `judged`)."""

    judged: DataFrame  # every valid record with its OUTCOME (write, duplicate or conflict), without its line
    superseded: DataFrame | None  # silver versions the run replaces (`latest`), as quarantine-ready records
    lines: DataFrame  # RECORD_ID -> RAW of the run's valid records: the conflicts' lines are joined back from it

    @property
    def writes(self) -> DataFrame:
        """One row per event id to insert into silver (or, under `latest`, to update it with)."""
        return self.judged.where(F.col(OUTCOME) == WRITE).drop(OUTCOME, FAILED_RULES, ERRORS)

    @property
    def duplicates(self) -> DataFrame:
        """Exact repeats of the winner."""
        return self.judged.where(F.col(OUTCOME) == DUPLICATE).drop(OUTCOME, FAILED_RULES, ERRORS)

    def conflicts(self, count: int | None = None) -> DataFrame:
        """The run's records that lost to another version, with _failed_rules, _errors, _raw.

        `count`, when known (`counts()`): up to _BROADCAST_CONFLICTS of them are broadcast to the
        lines, which are then read where they are (cached), not shuffled."""
        losers = self.judged.where(F.col(OUTCOME) == CONFLICT).drop(OUTCOME)
        if count is not None and count <= _BROADCAST_CONFLICTS:
            losers = F.broadcast(losers)
        return self.lines.join(losers, RECORD_ID, "inner")

    def counts(self) -> dict[str, int]:
        """Records per outcome (one aggregation over `judged`)."""
        found = {row[OUTCOME]: int(row["count"]) for row in self.judged.groupBy(OUTCOME).count().collect()}
        return {outcome: found.get(outcome, 0) for outcome in (WRITE, DUPLICATE, CONFLICT)}


def record_values(dataset: Dataset) -> Column:
    """A record's values: every declared field, typed, as one struct. Compared as they are, not by a
    hash of them: exact, and cheaper than the SHA-256 of their JSON that was here (the duplicate
    step over 1M records: see docs/benchmarks.md, issue #15's sixth round)."""
    return F.struct(*[F.col(field.name) for field in dataset.fields])


def resolve(valid: DataFrame, silver: DataFrame | None, dataset: Dataset) -> Resolution:
    """Sort a run's valid records (declared fields, SOURCE_FILE, LINE_NUMBER, RAW, RECORD_ID) into writes,
    duplicates and conflicts; `silver` is the table as it is (None when it does not exist yet)."""
    key = dataset.event_id
    latest = dataset.duplicates == "latest"
    order = [F.col(SOURCE_FILE), F.col(LINE_NUMBER)]
    order = [column.desc_nulls_last() for column in order] if latest else [column.asc_nulls_last() for column in order]
    # One window over the run's records gives each its rank and the run's winning values (the first
    # in the policy's order), so the winners need no join of their own; silver's version, where it
    # has one, is joined on the same key (one row per id in silver).
    by_id = Window.partitionBy(key).orderBy(*order)
    # The line as it arrived (the widest column) stays out of the window's shuffle: only the
    # conflicts need it, and they get it back by RECORD_ID (Resolution.conflicts).
    lines = valid.select(RECORD_ID, RAW)
    # The run's winning values are each field's first value over the window, made a struct after
    # it: a struct column (or `first` of a struct expression, which Spark projects below the
    # window) would cross the shuffle beside the fields it repeats, doubling its bytes.
    firsts = [F.first(field.name).over(by_id).alias(f"_first_{field.name}") for field in dataset.fields]
    records = valid.drop(RAW).select("*", F.row_number().over(by_id).alias(_RANK), *firsts)
    records = records.withColumn(VALUES, record_values(dataset)).withColumn(
        "_run_values", F.struct(*[F.col(f"_first_{field.name}").alias(field.name) for field in dataset.fields])
    ).drop(*[f"_first_{field.name}" for field in dataset.fields])
    if silver is not None:
        records = records.join(silver.select(key, record_values(dataset).alias(_SILVER_VALUES)), key, "left")
    else:
        records = records.withColumn(_SILVER_VALUES, F.lit(None).cast(records.schema[VALUES].dataType))
    records = records.withColumn(
        _WINNER_VALUES,
        F.col("_run_values") if latest else F.coalesce(F.col(_SILVER_VALUES), F.col("_run_values")),
    )
    winners = records.where(F.col(_RANK) == 1).select(key, _WINNER_VALUES, _SILVER_VALUES)
    # The run's winning record is written unless silver already holds those very values.
    # Null-safe: an optional field missing in both versions is the same value (as Spark's struct
    # equality compares fields), and a record never equals a silver version that is not there.
    same_as_winner = F.col(VALUES).eqNullSafe(F.col(_WINNER_VALUES))
    written = (F.col(_RANK) == 1) & same_as_winner & ~F.col(_SILVER_VALUES).eqNullSafe(F.col(VALUES))
    duplicate = ~written & same_as_winner
    conflict = ~same_as_winner
    message = F.format_string(
        "record %s: another version of event id %s wins (duplicates: %s); this one is kept here",
        F.col(key), F.col(key), F.lit(dataset.duplicates),
    )
    outcome = F.when(written, F.lit(WRITE)).when(duplicate, F.lit(DUPLICATE)).otherwise(F.lit(CONFLICT))
    judged = (
        records.withColumn(OUTCOME, outcome)
        .withColumn(FAILED_RULES, F.when(conflict, F.array(F.lit(CONFLICT_RULE))))
        .withColumn(ERRORS, F.when(conflict, F.array(message)))
    )
    superseded = _superseded(silver, winners, dataset) if latest and silver is not None else None
    judged = judged.drop(VALUES, _RANK, "_run_values", _WINNER_VALUES, _SILVER_VALUES)
    return Resolution(judged=judged, superseded=superseded, lines=lines)


def _superseded(silver: DataFrame, winners: DataFrame, dataset: Dataset) -> DataFrame:
    """Silver versions a `latest` run replaces, shaped as rejected records for the quarantine."""
    key = dataset.event_id
    replaced = winners.where(F.col(_SILVER_VALUES).isNotNull() & ~F.col(_SILVER_VALUES).eqNullSafe(F.col(_WINNER_VALUES)))
    rows = silver.join(replaced.select(key), key, "left_semi")
    message = F.format_string(
        "record %s: replaced in silver by a later version (duplicates: latest); this one is kept here", F.col(key)
    )
    return rows.select(
        *[F.col(field.name) for field in dataset.fields],
        F.col("source_file").alias(SOURCE_FILE),
        F.lit(None).cast("long").alias(LINE_NUMBER),
        F.to_json(F.struct(*[F.col(field.name) for field in dataset.fields])).alias(RAW),
        F.array(F.lit(CONFLICT_RULE)).alias(FAILED_RULES),
        F.array(message).alias(ERRORS),
    )
