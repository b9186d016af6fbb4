"""Great Expectations in the batch layer: a suite derived from the declaration, run fast.

GX's Spark engine validates about 60-90k rows/s here. This module keeps GX as the validator of
record but runs its pandas engine inside each Spark partition (mapInArrow, one ephemeral
context per Python worker) and adds the per-expectation counts up: the same expectations, the
same GX result fields, at pandas speed on every core.

Each expectation carries the name of the rule it checks (`meta.rule`). The per-record rule
evaluation (batch/validation.py), which decides what is quarantined, must agree with GX count for
count; `cross_check` fails the run when the two ever disagree. A type rule is the one exception:
GX checks the text's shape only (it never sees the rules' casts, so it stays an independent
check), and a text of the right shape can still fail its cast (`2024-13-45T99:00:00Z`), so GX
may count fewer type failures than the rules, never more.

Text reaches GX as Arrow-backed strings, so its regular expressions run in RE2 over whole columns
(pyarrow's kernels) instead of Python's `re` once per value: 1.3 s -> 0.4 s per 251k records, and
no conversion of every string into a Python object (0.28 s), measured on the bench's records
(2026-12-03, docs/benchmarks.md "Seventh round"). RE2 has no look-ahead, so GX's patterns are
anchored as RE2 reads a whole value, `^(?:p)$` (`$` is the end of the text in RE2, never before a
final newline); a dataset with a pattern RE2 cannot compile (a look-around, a back-reference) runs
its suite on Python strings with the rules' own anchoring, as before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import types as T

import schemas
from batch.validation import text_column
from lakehouse.errors import LakehouseError
from schemas.declaration import Dataset
from schemas.rules import TYPE_PATTERNS, Rule, anchored, rules_for

_RESULT_SCHEMA = T.StructType(
    [
        T.StructField("rule", T.StringType()),
        T.StructField("expectation_type", T.StringType()),
        T.StructField("element_count", T.LongType()),
        T.StructField("unexpected_count", T.LongType()),
        T.StructField("missing_count", T.LongType()),
        T.StructField("partial_unexpected_list", T.StringType()),
        T.StructField("partition_rows", T.LongType()),
    ]
)

_RESULT_ARROW_SCHEMA = pa.schema(
    [pa.field(f.name, pa.string() if isinstance(f.dataType, T.StringType) else pa.int64()) for f in _RESULT_SCHEMA.fields]
)

_SAMPLES = 5  # unexpected values kept per expectation in the run report
_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": _SAMPLES}


def _re2_anchored(pattern: str) -> str:
    """A whole-value match in RE2's syntax (schemas.rules.anchored's look-ahead is not RE2)."""
    return f"^(?:{pattern})$"


@lru_cache(maxsize=None)  # asked once per expectation built: each pattern is compiled once a process
def _compiles_in_re2(pattern: str) -> bool:
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), _re2_anchored(pattern))  # an empty array compiles nothing
    except pa.ArrowInvalid:
        return False
    return True


def _declared_patterns(dataset: Dataset) -> list[str]:
    """Every regular expression the suite uses: the types' shapes and the declared patterns."""
    patterns = [TYPE_PATTERNS[field.type] for field in dataset.fields if TYPE_PATTERNS[field.type] is not None]
    patterns += [field.pattern for field in dataset.fields if field.pattern]
    for check in dataset.checks:
        patterns += [constraint.pattern for constraint in (check.when, check.then) if constraint.pattern]
    return patterns


def runs_in_re2(dataset: Dataset) -> bool:
    """Whether the dataset's suite runs on Arrow strings: every pattern it uses compiles in RE2."""
    return all(_compiles_in_re2(pattern) for pattern in _declared_patterns(dataset))


@lru_cache(maxsize=None)
def arrow_strings(dataset_name: str) -> bool:
    return runs_in_re2(schemas.load(dataset_name))


def _expectation(rule: Rule, dataset: Dataset, anchor=None):
    """The GX expectation that checks one rule over the validation frame (text + typed columns).
    `anchor` makes a pattern a whole-value match: RE2's form where the suite runs in RE2."""
    import great_expectations as gx

    anchor = anchor or (_re2_anchored if runs_in_re2(dataset) else anchored)

    spec = dataset.field(rule.field)
    text, typed = text_column(spec), spec.name
    meta = {"rule": rule.name, "description": rule.description}
    if rule.kind == "check":
        return _check_expectation(rule.check, meta, anchor)
    if rule.kind == "not_null":
        return gx.expectations.ExpectColumnValuesToNotBeNull(column=text, meta=meta)
    if rule.kind == "type":
        # The text has the type's shape (GX's own regex, not the rules' typed column): at most the
        # rules' count (module docstring).
        return gx.expectations.ExpectColumnValuesToMatchRegex(column=text, regex=anchor(TYPE_PATTERNS[spec.type]), meta=meta)
    if rule.kind == "range":
        return gx.expectations.ExpectColumnValuesToBeBetween(
            column=typed, min_value=spec.minimum, max_value=spec.maximum, meta=meta
        )
    if rule.kind == "allowed_values":
        return gx.expectations.ExpectColumnValuesToBeInSet(column=text, value_set=list(spec.allowed), meta=meta)
    if rule.kind == "pattern":
        return gx.expectations.ExpectColumnValuesToMatchRegex(column=text, regex=anchor(spec.pattern), meta=meta)
    raise ValueError(f"no expectation for rule kind {rule.kind}")


def _pandas_condition(constraint, anchor) -> str:
    """A constraint as a pandas query over the typed column (null, i.e. unusable, never matches)."""
    column = constraint.field
    parts = [f"{column}.notnull()"]
    if constraint.minimum is not None:
        parts.append(f"({column} >= {constraint.minimum!r})")
    if constraint.maximum is not None:
        parts.append(f"({column} <= {constraint.maximum!r})")
    if constraint.allowed:
        parts.append(f"{column}.isin({list(constraint.allowed)!r})")
    if constraint.pattern is not None:
        parts.append(f"{column}.str.contains({anchor(constraint.pattern)!r}, regex=True, na=False)")
    return " & ".join(parts)


def _check_expectation(check, meta: dict, anchor):
    """A cross-field check: the `then` constraint, expected on the rows where `when` holds."""
    import great_expectations as gx

    then = check.then
    options = {"column": then.field, "row_condition": _pandas_condition(check.when, anchor), "condition_parser": "pandas", "meta": meta}
    if then.minimum is not None or then.maximum is not None:
        return gx.expectations.ExpectColumnValuesToBeBetween(min_value=then.minimum, max_value=then.maximum, **options)
    if then.allowed:
        return gx.expectations.ExpectColumnValuesToBeInSet(value_set=list(then.allowed), **options)
    return gx.expectations.ExpectColumnValuesToMatchRegex(regex=anchor(then.pattern), **options)


def checked_columns(dataset: Dataset) -> list[str]:
    """The columns the suite reads (text or typed, by rule kind): only these go to the Python workers."""
    columns: list[str] = []
    for rule in rules_for(dataset):
        if rule.kind == "check":
            needed = [rule.check.when.field, rule.check.then.field]
        elif rule.kind in ("not_null", "type", "allowed_values", "pattern"):
            needed = [text_column(dataset.field(rule.field))]
        else:  # range
            needed = [rule.field]
        columns += [column for column in needed if column not in columns]
    return columns


def suite_json(dataset: Dataset) -> list[dict]:
    """The suite as GX serialises its expectations (for the run report and for readers)."""
    return [_expectation(rule, dataset).configuration.to_json_dict() for rule in rules_for(dataset)]


@lru_cache(maxsize=None)
def _validator(dataset_name: str):
    """An ephemeral GX context with the dataset's suite; built once per Python worker."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.execution_engine import pandas_execution_engine

    # GX hashes every frame under 1 GB (each partition) for a batch marker nothing here reads.
    pandas_execution_engine.HASH_THRESHOLD = 0
    dataset = schemas.load(dataset_name)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"{dataset_name}_partitions")
    batch_definition = source.add_dataframe_asset("partition").add_batch_definition_whole_dataframe("whole")
    suite = gx.ExpectationSuite(name=f"{dataset_name}_rules")
    for rule in rules_for(dataset):
        suite.add_expectation(_expectation(rule, dataset))
    return batch_definition, context.suites.add(suite)


def _frame(dataset_name: str, table: pa.Table) -> pd.DataFrame:
    """A partition's records as GX's pandas frame: text as Arrow-backed strings where the suite runs
    in RE2 (`arrow_strings`), else as Python objects (GX's pandas expectations treat None and NaN
    alike for those)."""
    if not arrow_strings(dataset_name):
        return table.to_pandas()
    text = pd.StringDtype("pyarrow", na_value=np.nan)  # what astype(str) gives with future.infer_string
    return table.to_pandas(types_mapper={pa.string(): text, pa.large_string(): text}.get)


def _validate_arrow_partition(dataset_name: str, batches) -> Iterator[pa.RecordBatch]:
    """mapInArrow: one partition's record batches -> its per-expectation counts."""
    batches = [batch for batch in batches if batch.num_rows]
    if batches:  # an empty partition reports nothing (and Arrow needs a batch for the schema)
        table = pa.Table.from_batches(batches)
        yield pa.RecordBatch.from_pandas(_validate_partition(dataset_name, table), schema=_RESULT_ARROW_SCHEMA, preserve_index=False)


def _validate_partition(dataset_name: str, table: pa.Table) -> pd.DataFrame:
    """GX's suite over one partition's records: a row of counts per expectation."""
    frame = _frame(dataset_name, table)
    batch_definition, suite = _validator(dataset_name)
    # BASIC: the counts and the few unexpected values the report keeps; SUMMARY also counts every
    # distinct unexpected value and lists their indices.
    # future.infer_string keeps GX's `column.astype(str)` (its regex expectation) on Arrow strings,
    # so `str.contains` runs pyarrow's RE2 kernel over the column.
    with pd.option_context("future.infer_string", arrow_strings(dataset_name)):
        result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format=dict(_RESULT_FORMAT))
    rows = []
    for outcome in result.results:
        failure = _exception_message(outcome.exception_info)
        if failure is not None:
            # GX reports an expectation that raised as a failed result with no counts: taken as
            # counts, it would read as "0 unexpected" and could pass the cross-check (a type
            # rule's GX count may be lower). The run fails instead, naming it.
            raise LakehouseError(
                f"Great Expectations could not evaluate {outcome.expectation_config.type} "
                f"(rule {outcome.expectation_config.meta['rule']}): {failure}"
            )
        details = dict(outcome.result or {})
        rows.append(
            {
                "rule": outcome.expectation_config.meta["rule"],
                "expectation_type": outcome.expectation_config.type,
                "element_count": int(details.get("element_count", 0) or 0),
                "unexpected_count": int(details.get("unexpected_count", 0) or 0),
                "missing_count": int(details.get("missing_count", 0) or 0),
                "partial_unexpected_list": json.dumps(details.get("partial_unexpected_list", [])[:_SAMPLES], default=str),
                "partition_rows": len(frame),
            }
        )
    return pd.DataFrame(rows)


def _exception_message(info: dict | None) -> str | None:
    """The message of an exception GX caught while evaluating an expectation, else None; GX keeps
    it either at the top of `exception_info` or per metric inside it."""
    if not info:
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "an exception") if info["raised_exception"] else None
    messages = [message for value in info.values() if isinstance(value, dict) and (message := _exception_message(value))]
    return "; ".join(messages) or None


@dataclass
class SuiteResult:
    """GX's result for the whole input: per expectation, counts added up over the partitions."""

    dataset: str
    rows: int
    expectations: list[dict] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(item["unexpected_count"] == 0 for item in self.expectations)

    def unexpected_by_rule(self) -> dict[str, int]:
        return {item["rule"]: item["unexpected_count"] for item in self.expectations}

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "engine": "great_expectations (pandas, per Spark partition)", "rows": self.rows,
                "success": self.success, "expectations": self.expectations}


def run_suite(validated: DataFrame, dataset: Dataset) -> SuiteResult:
    """Run the dataset's GX suite over validated records (batch/validation.validate's output)."""
    frame = validated.select(*checked_columns(dataset))
    name = dataset.name
    partials = frame.mapInArrow(lambda batches: _validate_arrow_partition(name, batches), schema=_RESULT_SCHEMA).toPandas()
    # Each partition reports its row count on every one of its result rows: the rows checked are
    # one rule's counts added up, with no second pass over the frame to count them.
    first = partials[partials.rule == partials.rule.iloc[0]] if len(partials) else partials
    rows = int(first.partition_rows.sum())
    expectations = []
    for rule in rules_for(dataset):
        part = partials[partials.rule == rule.name]
        samples = [value for text in part.partial_unexpected_list for value in json.loads(text)][:_SAMPLES]
        expectations.append(
            {
                "rule": rule.name,
                "expectation_type": part.expectation_type.iloc[0] if len(part) else _expectation(rule, dataset).configuration.type,
                "element_count": int(part.element_count.sum()),
                "unexpected_count": int(part.unexpected_count.sum()),
                "missing_count": int(part.missing_count.sum()),
                "partial_unexpected_list": samples,
            }
        )
    return SuiteResult(dataset=name, rows=rows, expectations=expectations)


def _agrees(rule: str, gx_count: int, rule_count: int) -> bool:
    # A type rule's expectation checks the text's shape only: GX may find fewer (module docstring).
    return gx_count <= rule_count if rule.endswith(".type") else gx_count == rule_count


def cross_check(result: SuiteResult, counted: dict[str, int]) -> dict[str, int]:
    """Fail when GX and the per-record rules (`counted`: records per broken rule) count a rule's
    failures differently (for a type rule: when GX counts more than the rules)."""
    disagreements = {
        rule: (unexpected, counted.get(rule, 0))
        for rule, unexpected in result.unexpected_by_rule().items()
        if not _agrees(rule, unexpected, counted.get(rule, 0))
    }
    if disagreements:
        raise LakehouseError(
            "Great Expectations and the record rules disagree (rule: GX count, record count): "
            + ", ".join(f"{rule}: {gx_count} vs {ours}" for rule, (gx_count, ours) in disagreements.items())
        )
    return counted
