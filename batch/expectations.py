"""Great Expectations in the batch layer: a suite derived from the declaration, run fast.

GX's Spark engine validates about 60-90k rows/s here. This module keeps GX as the validator of
record but runs its pandas engine inside each Spark partition (mapInPandas, one ephemeral
context per Python worker) and adds the per-expectation counts up: the same expectations, the
same GX result fields, at pandas speed on every core.

Each expectation carries the name of the rule it checks (`meta.rule`). The per-record rule
evaluation (batch/validation.py), which decides what is quarantined, must agree with GX count for
count; `cross_check` fails the run when the two ever disagree. A type rule is the one exception:
GX checks the text's shape only (it never sees the rules' casts, so it stays an independent
check), and a text of the right shape can still fail its cast (`2024-13-45T99:00:00Z`), so GX
may count fewer type failures than the rules, never more.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

import schemas
from batch.validation import FAILED_RULES, text_column
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


_SAMPLES = 5  # unexpected values kept per expectation in the run report
_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": _SAMPLES}


def _expectation(rule: Rule, dataset: Dataset):
    """The GX expectation that checks one rule over the validation frame (text + typed columns)."""
    import great_expectations as gx

    spec = dataset.field(rule.field)
    text, typed = text_column(spec), spec.name
    meta = {"rule": rule.name, "description": rule.description}
    if rule.kind == "check":
        return _check_expectation(rule.check, meta)
    if rule.kind == "not_null":
        return gx.expectations.ExpectColumnValuesToNotBeNull(column=text, meta=meta)
    if rule.kind == "type":
        # The text has the type's shape (GX's own regex, not the rules' typed column): at most the
        # rules' count (module docstring).
        return gx.expectations.ExpectColumnValuesToMatchRegex(column=text, regex=anchored(TYPE_PATTERNS[spec.type]), meta=meta)
    if rule.kind == "range":
        return gx.expectations.ExpectColumnValuesToBeBetween(
            column=typed, min_value=spec.minimum, max_value=spec.maximum, meta=meta
        )
    if rule.kind == "allowed_values":
        return gx.expectations.ExpectColumnValuesToBeInSet(column=text, value_set=list(spec.allowed), meta=meta)
    if rule.kind == "pattern":
        return gx.expectations.ExpectColumnValuesToMatchRegex(column=text, regex=anchored(spec.pattern), meta=meta)
    raise ValueError(f"no expectation for rule kind {rule.kind}")


def _pandas_condition(constraint) -> str:
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
        parts.append(f"{column}.str.contains({anchored(constraint.pattern)!r}, regex=True, na=False)")
    return " & ".join(parts)


def _check_expectation(check, meta: dict):
    """A cross-field check: the `then` constraint, expected on the rows where `when` holds."""
    import great_expectations as gx

    then = check.then
    options = {"column": then.field, "row_condition": _pandas_condition(check.when), "condition_parser": "pandas", "meta": meta}
    if then.minimum is not None or then.maximum is not None:
        return gx.expectations.ExpectColumnValuesToBeBetween(min_value=then.minimum, max_value=then.maximum, **options)
    if then.allowed:
        return gx.expectations.ExpectColumnValuesToBeInSet(value_set=list(then.allowed), **options)
    return gx.expectations.ExpectColumnValuesToMatchRegex(regex=anchored(then.pattern), **options)


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


def _validate_partition(dataset_name: str, batches) -> pd.DataFrame:
    frames = [frame for frame in batches]
    if not frames:
        return
    frame = pd.concat(frames, ignore_index=True)
    if frame.empty:
        return
    # GX's pandas expectations treat None and NaN alike only for object columns; keep text as object.
    batch_definition, suite = _validator(dataset_name)
    # BASIC: the counts and the few unexpected values the report keeps; SUMMARY also counts every
    # distinct unexpected value and lists their indices.
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
    yield pd.DataFrame(rows)


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
    partials = frame.mapInPandas(lambda batches: _validate_partition(name, batches), schema=_RESULT_SCHEMA).toPandas()
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


def cross_check(result: SuiteResult, validated: DataFrame) -> dict[str, int]:
    """Fail when GX and the per-record rules count a rule's failures differently (for a type
    rule: when GX counts more than the rules)."""
    counted = {
        row["rule"]: int(row["count"])
        for row in validated.select(F.explode(FAILED_RULES).alias("rule")).groupBy("rule").count().collect()
    }
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
