"""Quality rules derived from a declaration, and the per-record validator the speed layer uses.

The batch layer turns the same `Rule` list into Spark column expressions (batch/validation.py).
Both engines see the input as text first and apply identical regular expressions for types, so
they reject the same records for the same reasons (tests/test_parity.py proves it).

Text normalisation shared by both engines: spaces, tabs and line ends around the value of a typed
field (double, long, boolean, timestamp) are trimmed, and an empty string is a missing value; string
fields are kept as written.

Record-level rules come before the field rules: a JSON line that is not valid JSON
(`record.json`) or not one object (`record.object`), a CSV row whose field count differs from
its header's (`record.field_count`), or a message that is not UTF-8 text (`record.encoding`, the
speed layer: a file that is not UTF-8 is quarantined whole by the batch layer, `file.unreadable`),
is one rejected record with that rule alone.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Literal

from schemas.declaration import Constraint, CustomCheck, Dataset, FieldSpec

RuleKind = Literal["not_null", "type", "range", "allowed_values", "pattern", "check"]

# What text each type accepts. Written in the common subset of Java and Python regex syntax.
TYPE_PATTERNS: dict[str, str | None] = {
    "string": None,
    "double": r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?",
    "long": r"[+-]?[0-9]{1,18}",
    "boolean": r"(?:true|false|TRUE|FALSE|True|False)",
    "timestamp": (
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
        r"(?:Z|[+-][0-9]{2}:[0-9]{2})?"
    ),
}


# Around typed values, as Spark's trim(BOTH ...) in batch/validation.py: spaces, tabs and line
# ends (a spreadsheet's CRLF inside a quoted cell, a value copied with its newline).
TRIMMED = " \t\r\n"

# Record-level rules: the text is not one record of the declared shape.
RECORD_JSON = "record.json"
RECORD_OBJECT = "record.object"
RECORD_FIELD_COUNT = "record.field_count"
RECORD_ENCODING = "record.encoding"
RECORD_RULES = (RECORD_JSON, RECORD_OBJECT, RECORD_FIELD_COUNT, RECORD_ENCODING)


def decode_message(data: str | bytes, where: str) -> tuple[str, str | None, str | None]:
    """A message's text as (text, None, None), or (text with \\x escapes, record rule, message) when
    its bytes are not UTF-8. Decoding with replacement characters would invent text; the escaped
    text keeps what arrived, exactly, for the dead letter."""
    if isinstance(data, str):
        return data, None, None
    try:
        return data.decode("utf-8"), None, None
    except UnicodeDecodeError as error:
        message = f"record at {where}: not UTF-8 text (byte 0x{data[error.start]:02x} at position {error.start})"
        return data.decode("utf-8", errors="backslashreplace"), RECORD_ENCODING, message


def parse_json_record(text: str | bytes, where: str) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """One JSON line as (record, None, None), or (None, record rule, message) when it is not one object.

    Both layers decode lines with this (NaN and Infinity are accepted as JSON numbers, as Python
    does, and then fail their field's type rule as non-finite). Bytes must be UTF-8 (decode_message);
    a caller that also needs the text decodes once with decode_message and passes the text.
    """
    if isinstance(text, bytes):
        text, rule, message = decode_message(text, where)
        if rule is not None:
            return None, rule, message
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return None, RECORD_JSON, f"record at {where}: malformed JSON ({error.msg} at column {error.colno})"
    if not isinstance(record, dict):
        return None, RECORD_OBJECT, f"record at {where}: expected a JSON object, got {type(record).__name__}"
    return record, None, None


def anchored(pattern: str) -> str:
    """Whole-value match, the same in Java (Spark rlike) and Python (re.search).

    Not `$`: it matches before a final line terminator in both dialects, and they disagree on what
    one is (Python: `\\n` only; Java: also `\\r`, `\\u0085`, `\\u2028`, `\\u2029`), so `"12\\r"` was
    a long to Spark and not to Python. "No character follows" is the same assertion in both."""
    return f"^(?:{pattern})(?![\\s\\S])"


@dataclass(frozen=True)
class Rule:
    field: str
    kind: RuleKind
    description: str
    check: CustomCheck | None = None  # for kind "check": the declared cross-field rule

    @property
    def name(self) -> str:
        return f"check.{self.check.name}" if self.check else f"{self.field}.{self.kind}"


def rules_for(dataset: Dataset) -> list[Rule]:
    """Every rule of a dataset, in evaluation order (a field's later rules need its earlier ones)."""
    rules: list[Rule] = []
    for field in dataset.fields:
        rules.extend(_field_rules(field))
    for check in dataset.checks:
        rules.append(Rule(check.then.field, "check", check.description, check))
    return rules


def constraint_holds(constraint: Constraint, value: Any) -> bool:
    """Whether a typed, present value meets a constraint (the speed layer's side of a check)."""
    if constraint.minimum is not None and value < constraint.minimum:
        return False
    if constraint.maximum is not None and value > constraint.maximum:
        return False
    if constraint.allowed and value not in constraint.allowed:
        return False
    if constraint.pattern is not None and not re.search(anchored(constraint.pattern), value):
        return False
    return True


def _field_rules(field: FieldSpec) -> list[Rule]:
    rules: list[Rule] = []
    if field.required:
        rules.append(Rule(field.name, "not_null", "must be present and not empty"))
    if TYPE_PATTERNS[field.type] is not None:
        finite = " and finite" if field.type == "double" else ""
        rules.append(Rule(field.name, "type", f"must be a valid {field.type}{finite}"))
    if field.minimum is not None or field.maximum is not None:
        low = "-inf" if field.minimum is None else f"{field.minimum:g}"
        high = "+inf" if field.maximum is None else f"{field.maximum:g}"
        rules.append(Rule(field.name, "range", f"must be within [{low}, {high}]"))
    if field.allowed:
        rules.append(Rule(field.name, "allowed_values", f"must be one of {field.allowed}"))
    if field.pattern:
        rules.append(Rule(field.name, "pattern", f"must match {field.pattern!r}"))
    return rules


@dataclass(frozen=True)
class Failure:
    rule: str
    field: str
    value: str | None
    message: str


class RecordValidator:
    """Validates one decoded record (a dict) against a dataset: the speed layer's validator."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._timestamps = frozenset(field.name for field in dataset.fields if field.type == "timestamp")
        self._type_patterns = {
            name: re.compile(anchored(pattern))
            for name, pattern in TYPE_PATTERNS.items()
            if pattern is not None
        }
        self._value_patterns = {
            field.name: re.compile(anchored(field.pattern))
            for field in dataset.fields
            if field.pattern
        }
        # Built once: the speed layer validates every record, and building them cost a third of it.
        self._rules = {field.name: _field_rules(field) for field in dataset.fields}
        # A compiled form of the same rules for the common case, a valid record: one pass over
        # plain tuples that stops at the first broken rule. The rule walk (`failures`), with its
        # messages, runs only for a record this pass rejects; both give one verdict
        # (tests/test_schemas.py compares them on mutated records).
        self._inputs = [(field.name, field.input_name, field.type != "string") for field in dataset.input_fields]
        self._plans = [
            (field.name, field.required, None if field.type == "string" else self._parser(field.type),
             field.minimum, field.maximum, frozenset(field.allowed) if field.allowed else None,
             self._value_patterns.get(field.name))
            for field in dataset.fields
        ]
        self._checks = [(check.when, check.then) for check in dataset.checks]

    def texts(self, record: dict[str, Any], source_file: str | None = None) -> dict[str, str | None]:
        """The record's declared fields as text, derived fields filled in where the record lacks them."""
        texts: dict[str, str | None] = {}
        for name, key, trimmed in self._inputs:  # normalised(field, as_text(value)), inlined
            value = record.get(key)
            text = value if type(value) is str else as_text(value)
            if text and trimmed:
                text = text.strip(TRIMMED)
            texts[name] = text or None
        for field in self.dataset.derived_fields:
            texts[field.name] = normalised(field, as_text(record.get(field.name))) or derive_text(
                field, texts, source_file, self._timestamps
            )
        return texts

    def validate(
        self, record: dict[str, Any], source_file: str | None = None
    ) -> tuple[dict[str, Any] | None, list[Failure]]:
        """Return (typed record, []) when valid, else (None, the failed rules)."""
        texts = self.texts(record, source_file)
        typed = self.typed_if_valid(texts)
        if typed is not None:
            return typed, []
        return None, self.failures(texts)

    def typed_if_valid(self, texts: dict[str, str | None]) -> dict[str, Any] | None:
        """The typed record when the texts break no rule, else None (the compiled pass)."""
        typed: dict[str, Any] = {}
        for name, required, parse, minimum, maximum, allowed, pattern in self._plans:
            text = texts[name]
            if text is None:
                if required:
                    return None
                typed[name] = None
                continue
            value = text if parse is None else parse(text)
            if value is None:
                return None
            if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
                return None
            if (allowed is not None and text not in allowed) or (pattern is not None and not pattern.search(text)):
                return None
            typed[name] = value
        for when, then in self._checks:
            condition, value = typed[when.field], typed[then.field]
            if condition is not None and value is not None and constraint_holds(when, condition) and not constraint_holds(then, value):
                return None
        return typed

    def failures(self, texts: dict[str, str | None]) -> list[Failure]:
        """Every rule the texts break, with a message naming the record, the field and the rule."""
        typed: dict[str, Any] = {}
        failures: list[Failure] = []
        record_id = texts.get(self.dataset.event_id) or "<no event id>"
        usable: set[str] = set()
        for field in self.dataset.fields:
            text = texts[field.name]
            field_failures = self._check_field(field, text, typed)
            if text is not None and not any(rule.kind in ("not_null", "type") for rule in field_failures):
                usable.add(field.name)
            for failed in field_failures:
                failures.append(
                    Failure(
                        rule=failed.name,
                        field=field.name,
                        value=text,
                        message=f"record {record_id}: field {field.name!r} {failed.description} "
                        f"(rule {failed.name}), got {text!r}",
                    )
                )
        for check in self.dataset.checks:
            when, then = check.when, check.then
            if {when.field, then.field} <= usable and constraint_holds(when, typed[when.field]) and not constraint_holds(then, typed[then.field]):
                rule = f"check.{check.name}"
                failures.append(
                    Failure(
                        rule=rule,
                        field=then.field,
                        value=texts[then.field],
                        message=f"record {record_id}: field {then.field!r} {check.description} (rule {rule}), "
                        f"got {texts[then.field]!r} with {when.field}={texts[when.field]!r}",
                    )
                )
        return failures

    def _check_field(self, field: FieldSpec, text: str | None, typed: dict[str, Any]) -> list[Rule]:
        """Every rule of the field the value breaks. A missing value is checked for presence only,
        and a value of the wrong type for its type only: the value rules cannot be evaluated."""
        typed[field.name] = text
        failed: list[Rule] = []
        for rule in self._rules[field.name]:
            if rule.kind == "not_null":
                if text is None:
                    return [rule]
                continue
            if text is None:
                return []
            if rule.kind == "type":
                value = self._parse(field.type, text)
                if value is None:
                    return [rule]
                typed[field.name] = value
            elif rule.kind == "range":
                value = typed[field.name]
                if (field.minimum is not None and value < field.minimum) or (
                    field.maximum is not None and value > field.maximum
                ):
                    failed.append(rule)
            elif rule.kind == "allowed_values":
                if text not in field.allowed:
                    failed.append(rule)
            elif rule.kind == "pattern":
                if not self._value_patterns[field.name].search(text):
                    failed.append(rule)
        return failed

    def _parser(self, type_name: str):
        """`_parse` for one type, bound once."""
        return lambda text: self._parse(type_name, text)

    def _parse(self, type_name: str, text: str) -> Any:
        if not self._type_patterns[type_name].search(text):
            return None
        if type_name == "double":
            value = float(text)
            return value if math.isfinite(value) else None
        if type_name == "long":
            return int(text)
        if type_name == "boolean":
            return text.lower() == "true"
        return parse_timestamp(text)


def parse_timestamp(text: str) -> datetime | None:
    """ISO 8601 text to an aware UTC datetime; text without an offset is UTC (as Spark's session).

    Kept to millisecond precision: Trino reads Delta timestamps as timestamp(3), and the merged
    view's boundary (event_time <= watermark) must compare the values both layers stored.
    """
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def as_text(value: Any) -> str | None:
    """A decoded JSON value as the text Spark's JSON reader gives for a string-typed column."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    return text if text != "" else None


def normalised(field: FieldSpec, text: str | None) -> str | None:
    """A field's text as the rules see it: typed values trimmed of TRIMMED, blank is missing."""
    if text is not None and field.type != "string":
        text = text.strip(TRIMMED)
    return text if text else None


# How an instant is written inside an id built from a timestamp field (derive.join): UTC, to the
# millisecond when it has one, so `2024-01-01 00:00:00` and `2024-01-01T00:00:00Z` are one event.
# batch/validation.py writes the same text with Spark's date_format.
INSTANT_ID_FORMAT = "%Y-%m-%d %H:%M:%S"


def instant_id_text(text: str) -> str:
    """A timestamp's text as an id part: the normalised instant, or the text as written when it is
    not a valid timestamp (the record is rejected by the field's type rule anyway)."""
    pattern = TYPE_PATTERNS["timestamp"]
    value = parse_timestamp(text) if re.search(anchored(pattern), text) else None
    if value is None:
        return text
    millisecond = value.microsecond // 1000
    return value.strftime(INSTANT_ID_FORMAT) + (f".{millisecond:03d}" if millisecond else "")


def derive_text(field: FieldSpec, texts: dict[str, str | None], source_file: str | None,
                timestamps: frozenset[str] = frozenset()) -> str | None:
    """A derived field's text; `timestamps` names the join's parts that are instants (normalised)."""
    derivation = field.derive
    if derivation.file_stem:
        return PurePosixPath(source_file).stem if source_file else None
    parts = [texts.get(name) for name in derivation.join]
    if any(part is None for part in parts):
        return None
    parts = [instant_id_text(part) if name in timestamps else part for name, part in zip(derivation.join, parts)]
    return derivation.separator.join(parts)
