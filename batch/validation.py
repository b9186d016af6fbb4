"""Batch validation: the declaration's rules as Spark column expressions.

Each record gets `_failed_rules` (array of rule names) and `_errors` (one readable message per
failure naming the record, the field and the rule). The rule list, the type patterns and the
order come from schemas/rules.py, shared with the speed layer's RecordValidator.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from batch.source import LINE, LINE_NUMBER, PARSE_ERROR, PARSE_RULE, SOURCE_FILE
from schemas.declaration import Constraint, CustomCheck, Dataset, FieldSpec
from schemas.engines import spark_type
from schemas.rules import TRIMMED, TYPE_PATTERNS, Rule, _field_rules, anchored

FAILED_RULES = "_failed_rules"
ERRORS = "_errors"
RAW = "_raw"
# A number for each record of a run (unique, stable while the validated records are cached): the
# duplicate step joins the conflicts' lines back by it (batch/duplicates.py).
RECORD_ID = "_record_id"


def _normalised(field: FieldSpec, column: str) -> Column:
    """schemas.rules.normalised: typed values trimmed of TRIMMED, blank is missing."""
    text = F.col(column)
    if field.type != "string":
        text = F.btrim(text, F.lit(TRIMMED))
    return F.when(text == "", None).otherwise(text)


def with_text_fields(frame: DataFrame, dataset: Dataset) -> DataFrame:
    """Rename input columns to field names, normalise the text, and add derived fields (still text).

    `_raw` is the line as it arrived where the reader kept it (CSV, JSON lines), else the record's
    columns as JSON (Parquet, Delta).
    """
    columns = [_normalised(field, field.input_name).alias(field.name) for field in dataset.input_fields]
    carried = [_normalised(field, field.name).alias(f"_carried_{field.name}") for field in dataset.derived_fields]
    read = [field.input_name for field in dataset.input_fields] + [field.name for field in dataset.derived_fields]
    raw = F.coalesce(F.col(LINE), F.to_json(F.struct(*read)))
    frame = frame.select(
        *columns, *carried, SOURCE_FILE, LINE_NUMBER, PARSE_RULE, PARSE_ERROR, raw.alias(RAW),
        F.monotonically_increasing_id().alias(RECORD_ID),
    )
    timestamps = {field.name for field in dataset.fields if field.type == "timestamp"}
    for field in dataset.derived_fields:
        frame = frame.withColumn(field.name, F.coalesce(F.col(f"_carried_{field.name}"), _derive(field, timestamps)))
        frame = frame.drop(f"_carried_{field.name}")
    return frame


def _instant_id_text(column: str) -> Column:
    """schemas.rules.instant_id_text: the instant in UTC (to the millisecond when it has one), or
    the text as written when it is not a valid timestamp."""
    text = F.col(column)
    instant = F.date_trunc("millisecond", F.expr(f"try_cast(`{column}` AS TIMESTAMP)"))
    millisecond = F.date_format(instant, "SSS")
    written = F.concat(
        F.date_format(instant, "yyyy-MM-dd HH:mm:ss"),
        F.when(millisecond != "000", F.concat(F.lit("."), millisecond)).otherwise(F.lit("")),
    )
    return F.when(text.rlike(anchored(TYPE_PATTERNS["timestamp"])) & instant.isNotNull(), written).otherwise(text)


def _derive(field: FieldSpec, timestamps: set[str]) -> Column:
    derivation = field.derive
    if derivation.file_stem:
        # Last path segment without its extension, as PurePosixPath(...).stem in the speed layer.
        name = F.element_at(F.split(F.col(SOURCE_FILE), "/"), -1)
        return F.when(F.col(SOURCE_FILE) == "", None).otherwise(F.regexp_replace(name, r"\.[^.]*$", ""))
    # concat_ws skips nulls, so a missing part must null the whole id explicitly.
    parts = [_instant_id_text(name) if name in timestamps else F.col(name) for name in derivation.join]
    any_missing = F.greatest(*[part.isNull().cast("int") for part in parts]) == 1 if len(parts) > 1 else parts[0].isNull()
    return F.when(any_missing, None).otherwise(F.concat_ws(derivation.separator, *parts))


def _typed(field: FieldSpec) -> Column:
    text = F.col(field.name)
    if field.type == "string":
        return text
    if field.type == "timestamp":
        # Millisecond precision, as schemas.rules.parse_timestamp (Trino reads timestamp(3)).
        return F.date_trunc("millisecond", F.expr(f"try_cast(`{field.name}` AS TIMESTAMP)"))
    return F.expr(f"try_cast(`{field.name}` AS {spark_type(field.type)})")


def _type_ok(field: FieldSpec, typed: Column) -> Column:
    text = F.col(field.name)
    ok = text.rlike(anchored(TYPE_PATTERNS[field.type])) & typed.isNotNull()
    if field.type == "double":
        ok = ok & ~F.isnan(typed) & (F.abs(typed) != float("inf"))
    return ok


def _violation(rule: Rule, field: FieldSpec, typed: Column, type_ok: Column) -> Column:
    """True when the record breaks the rule; null-safe, and only if the field's earlier rules held.
    `typed` and `type_ok` are the field's columns computed once (validate)."""
    text = F.col(field.name)
    present = text.isNotNull()
    if rule.kind == "not_null":
        return ~present
    if rule.kind == "type":
        return present & ~type_ok
    type_holds = present if TYPE_PATTERNS[field.type] is None else present & type_ok
    if rule.kind == "range":
        broken = F.lit(False)
        if field.minimum is not None:
            broken = broken | (typed < F.lit(field.minimum))
        if field.maximum is not None:
            broken = broken | (typed > F.lit(field.maximum))
        return type_holds & broken
    if rule.kind == "allowed_values":
        return type_holds & ~text.isin(*field.allowed)
    if rule.kind == "pattern":
        return type_holds & ~text.rlike(anchored(field.pattern))
    raise ValueError(f"unknown rule kind {rule.kind}")


def text_column(field: FieldSpec) -> str:
    """Column that holds a field's text as read, after validation: `_text_<field>` beside the typed
    value, or the field's own column for a string field (its text is its value: no copy)."""
    return field.name if field.type == "string" else f"_text_{field.name}"


def _cast_column(name: str) -> str:
    return f"_cast_{name}"


def _type_ok_column(name: str) -> str:
    return f"_type_ok_{name}"


def validate(frame: DataFrame, dataset: Dataset) -> DataFrame:
    """Add typed values, `_failed_rules` and `_errors`; a record is valid when `_failed_rules` is empty.

    As in the speed layer, every rule a field breaks is reported, except that a missing value is
    checked for presence only and a value of the wrong type for its type only. A typed value is
    null when its text is missing or of the wrong type; the text stays in `text_column(field)`.
    """
    frame = with_text_fields(frame, dataset)
    # Each typed field is cast and its type pattern matched once, in a projection of its own:
    # the rules, the messages and the typed output below refer to these columns. Spark does not
    # merge a projection into the next one when that would repeat a costly expression, and
    # without them each rule re-ran its field's regex and cast (the executed plan of a
    # sensor_events frame, measured 2026-12-03: 160 cast occurrences and 26 RLIKE before, 8 and 8
    # after).
    typed_fields = [field for field in dataset.fields if TYPE_PATTERNS[field.type] is not None]
    frame = frame.select("*", *[_typed(field).alias(_cast_column(field.name)) for field in typed_fields])
    frame = frame.select("*", *[_type_ok(field, F.col(_cast_column(field.name))).alias(_type_ok_column(field.name)) for field in typed_fields])
    record_id = F.coalesce(F.col(dataset.event_id), F.lit("<no event id>"))
    failures: list[tuple[str, Column]] = []  # (rule name, broken)
    messages: list[Column] = []
    typed_columns: dict[str, Column] = {}
    for field in dataset.fields:
        is_typed = TYPE_PATTERNS[field.type] is not None
        typed = F.col(_cast_column(field.name)) if is_typed else F.col(field.name)
        holds = F.col(_type_ok_column(field.name)) if is_typed else F.lit(True)
        typed_columns[field.name] = F.when(F.col(field.name).isNotNull() & holds, typed) if is_typed else typed
        for rule in _field_rules(field):
            broken = _violation(rule, field, typed, holds)
            failures.append((rule.name, broken))
            messages.append(
                F.when(
                    broken,
                    F.format_string(
                        "record %s: field '%s' %s (rule %s), got %s",
                        record_id,
                        F.lit(field.name),
                        F.lit(rule.description),
                        F.lit(rule.name),
                        F.coalesce(F.concat(F.lit("'"), F.col(field.name), F.lit("'")), F.lit("None")),
                    ),
                )
            )
    for check in dataset.checks:
        broken = _check_violation(check, typed_columns)
        rule = f"check.{check.name}"
        failures.append((rule, broken))
        messages.append(
            F.when(
                broken,
                F.format_string(
                    "record %s: field '%s' %s (rule %s), got '%s' with %s='%s'",
                    record_id, F.lit(check.then.field), F.lit(check.description), F.lit(rule),
                    F.col(check.then.field), F.lit(check.when.field), F.col(check.when.field),
                ),
            )
        )
    # A record-level failure (not one object, a wrong field count) is the record's only rule: its
    # fields were never read, so no field rule applies.
    not_a_record = F.col(PARSE_RULE).isNotNull()
    none = F.array().cast("array<string>")
    field_failures = F.array_compact(F.array(*[F.when(broken, F.lit(name)) for name, broken in failures])) if failures else none
    field_messages = F.array_compact(F.array(*messages)) if messages else none
    # The array of broken rules is built for rejected records only: array_compact is a
    # higher-order function, which Spark evaluates row by row outside generated code together
    # with the whole array under it (a sixth of the executors' CPU in building the cache of 1M
    # records, JFR, 2026-12-03); "any rule broken" is plain generated code, and nearly every
    # record is valid.
    any_broken = reduce(lambda left, right: left | right, [broken for _, broken in failures]) if failures else F.lit(False)
    frame = frame.withColumn(
        FAILED_RULES, F.when(not_a_record, F.array(F.col(PARSE_RULE))).when(any_broken, field_failures).otherwise(none)
    )
    # The messages are built for rejected records only: a valid row (nearly all of them) pays for
    # one empty array, not for formatting and compacting a message per rule.
    frame = frame.withColumn(
        ERRORS,
        F.when(not_a_record, F.array(F.col(PARSE_ERROR)))
        .when(F.size(F.col(FAILED_RULES)) == 0, none)
        .otherwise(field_messages),
    )
    # Typed values replace the text ones; the text stays beside them and, whole, in `_raw`. A
    # string field is its text: it keeps its one column (a copy would be cached for every record).
    for field in typed_fields:
        frame = frame.withColumn(f"_typed_{field.name}", typed_columns[field.name])
    frame = frame.drop(*[_cast_column(field.name) for field in typed_fields], *[_type_ok_column(field.name) for field in typed_fields])
    for field in typed_fields:
        frame = frame.withColumnRenamed(field.name, text_column(field)).withColumnRenamed(f"_typed_{field.name}", field.name)
    return frame


def constraint_column(constraint: Constraint, value: Column) -> Column:
    """Spark side of schemas.rules.constraint_holds."""
    holds = F.lit(True)
    if constraint.minimum is not None:
        holds = holds & (value >= F.lit(constraint.minimum))
    if constraint.maximum is not None:
        holds = holds & (value <= F.lit(constraint.maximum))
    if constraint.allowed:
        holds = holds & value.isin(*constraint.allowed)
    if constraint.pattern is not None:
        holds = holds & value.rlike(anchored(constraint.pattern))
    return holds


def _check_violation(check: CustomCheck, typed_columns: dict[str, Column]) -> Column:
    # typed_columns[name] is null exactly when the field is missing or of the wrong type.
    when, then = typed_columns[check.when.field], typed_columns[check.then.field]
    return when.isNotNull() & then.isNotNull() & constraint_column(check.when, when) & ~constraint_column(check.then, then)


def parsed(validated: DataFrame) -> DataFrame:
    """The records whose fields were read (no record-level rule broken): what Great Expectations checks."""
    return validated.where(F.col(PARSE_RULE).isNull())


def split(validated: DataFrame, dataset: Dataset) -> tuple[DataFrame, DataFrame]:
    """(valid records with the declared typed columns and where each was read, rejected records with their reasons)."""
    is_valid = F.size(F.col(FAILED_RULES)) == 0
    valid = validated.where(is_valid).select(*[field.name for field in dataset.fields], SOURCE_FILE, LINE_NUMBER, RAW, RECORD_ID)
    rejected = validated.where(~is_valid)
    return valid, rejected
