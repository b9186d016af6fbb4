"""The dataset declaration: fields, keys, features, detector and quality rules, declared once in YAML.

Everything else (Spark, Arrow and Trino schemas, the batch rule expressions, the stream's record
validator) is derived from a `Dataset`, so batch and speed cannot drift apart.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakehouse.errors import ConfigurationError

FieldType = Literal["string", "double", "long", "boolean", "timestamp"]
NUMERIC_TYPES = ("double", "long")
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")


def _regex(value: str) -> str:
    # re.error is not a ValueError: raised as is, pydantic would not report it as a field error.
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"{value!r} is not a regular expression: {error}") from None
    return value


def _identifier(kind: str, value: str) -> str:
    """A field or check name: lower-case, usable unquoted in Spark, Trino and Python."""
    if not IDENTIFIER.match(value):
        raise ValueError(f"{kind} name {value!r} must match {IDENTIFIER.pattern}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Derivation(_Strict):
    """How a field not present in the input is built from the record or its source file."""

    join: list[str] | None = None
    separator: str = "@"
    file_stem: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> "Derivation":
        if bool(self.join) == self.file_stem:
            raise ValueError("derive needs exactly one of `join: [fields]` or `file_stem: true`")
        return self


class FieldSpec(_Strict):
    name: str
    type: FieldType
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    allowed: list[str] | None = None
    pattern: str | None = None
    # Column name in the input when it differs from `name` (NAB files call event_time `timestamp`).
    source: str | None = None
    derive: Derivation | None = None
    description: str = ""

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _identifier("field", value)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return _regex(value) if value is not None else None

    @model_validator(mode="after")
    def _rules_fit_type(self) -> "FieldSpec":
        if (self.minimum is not None or self.maximum is not None) and self.type not in NUMERIC_TYPES:
            raise ValueError(f"{self.name}: minimum/maximum need a numeric type, not {self.type}")
        if (self.allowed or self.pattern) and self.type != "string":
            raise ValueError(f"{self.name}: allowed/pattern need type string, not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"{self.name}: minimum {self.minimum} > maximum {self.maximum}")
        return self

    @property
    def input_name(self) -> str:
        return self.source or self.name


class Constraint(_Strict):
    """A condition on one field's (valid) value: within [minimum, maximum], one of `allowed`, or
    matching `pattern`."""

    field: str
    minimum: float | None = None
    maximum: float | None = None
    allowed: list[str] | None = None
    pattern: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Constraint":
        kinds = [self.minimum is not None or self.maximum is not None, bool(self.allowed), self.pattern is not None]
        if sum(kinds) != 1:
            raise ValueError(f"constraint on {self.field!r} needs exactly one of minimum/maximum, allowed or pattern")
        if self.pattern is not None:
            _regex(self.pattern)
        return self


class CustomCheck(_Strict):
    """A per-dataset rule across fields: when `when` holds, `then` must hold too.

    Evaluated only on records whose two fields are present and of the right type (otherwise their
    own rules already reject the record). Its rule name is `check.<name>`.
    """

    name: str
    description: str
    when: Constraint
    then: Constraint

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _identifier("check", value)


class FeatureSpec(_Strict):
    fields: list[str] = Field(min_length=1)
    # Number of previous events of the same entity the rolling statistics look at.
    window: int = Field(default=24, ge=2, le=10_000)
    time_of_day: bool = True
    # The previous `lags` values of each field as features of their own (`<field>_lag<j>`, placed
    # last, oldest first): the recent sub-sequence itself, for detectors that model the sequence
    # (the `context` detector). 0 adds none. They come from the `window` events the speed layer
    # keeps, so they cannot reach further back than the window.
    lags: int = Field(default=0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _lags_within_window(self) -> "FeatureSpec":
        if self.lags > self.window:
            raise ValueError(f"features.lags ({self.lags}) cannot exceed features.window ({self.window}): state keeps only the window")
        return self


DetectorName = Literal["iforest", "hbos", "knn", "lof", "ensemble", "context"]


class DetectorOverride(_Strict):
    """Another detector (or other parameters) for the entities whose id fully matches `match`."""

    match: str
    name: DetectorName | None = None
    scale: Literal["robust", "standard", "none"] | None = None
    contamination: float | None = Field(default=None, gt=0, le=0.5)
    threshold_scale: float | None = Field(default=None, gt=0)
    params: dict[str, Any] | None = None

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _regex(value)


class LikelihoodSpec(_Strict):
    """The calibrated score's settings (lakehouse/likelihood.py): both layers write each event's
    `surprise` with them. Defaults chosen on the 20 NAB series of ../shared/data (in-sample;
    docs/quality.md, "A calibrated score")."""

    recent: int = Field(default=1, ge=1, le=1_000)  # scores averaged into the value judged
    history: int = Field(default=8640, ge=1)  # effective length of the entity's score history, in events
    min_history: int = Field(default=1, ge=1)  # observations (prior included) before any surprise
    prior_weight: int = Field(default=10, ge=0)  # the relative scale's prior, in observations (0: none)
    clip: float = Field(default=6.0, ge=0)  # how far from the mean a value moves the history, in spreads (0: no limit)
    peak_half_life: int = Field(default=48, ge=0)  # report only new peaks of surprise, decaying at this half-life (0: all)


class DetectorSpec(_Strict):
    name: DetectorName = "knn"
    # Features mix units (degrees, bar, z-scores, sin/cos): distance-based detectors need them on
    # one scale. Robust scaling (median/IQR) is not dragged by the anomalies in the history.
    scale: Literal["robust", "standard", "none"] = "robust"
    contamination: float = Field(default=0.01, gt=0, le=0.5)
    # Where the alarm goes off, relative to the contamination threshold: flag a score above
    # mean + threshold_scale * (contamination threshold - mean) of the training scores. 1 flags
    # the `contamination` share of history; `lakehouse eval` reports the best value for labelled
    # data (the relative scale it prints is this one). Contamination alone sets alarms for a
    # fixed share of events, which labelled anomalies rarely follow.
    threshold_scale: float = Field(default=1.0, gt=0)
    # Alerts are the first alarm of an episode: an event whose score is over the threshold raises
    # an alert only when none of the entity's previous `alert_quiet_events` events did (0: every
    # alarm is an alert). A level shift keeps a model alarmed until the next batch run retrains
    # it; one alert for it, not hundreds. Applied where events are in order: the serving layer's
    # `alerts` view and the quality evaluation (lakehouse/alerts.py), never to the stored
    # `is_anomaly`, so the speed layer stays per-event and late events need no state.
    alert_quiet_events: int = Field(default=0, ge=0, le=100_000)
    per: Literal["entity", "dataset"] = "entity"
    min_train_rows: int = Field(default=200, ge=10)
    # Train on the newest N days of history only (all history when unset): behaviour drifts, and
    # a window bounds training time as silver grows.
    training_days: float | None = Field(default=None, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)
    # Detector choice per entity: the first override whose pattern matches an entity applies to
    # it (per: entity only). Entities differ: a level-shift metric and a spiky one want
    # different detectors, and the registry records what each entity's model is.
    overrides: list[DetectorOverride] = Field(default_factory=list)
    # Each scored event's `surprise`: how unlikely its relative score is against the entity's own
    # earlier scores, on a scale where one threshold means the same for every entity.
    likelihood: LikelihoodSpec = Field(default_factory=LikelihoodSpec)

    @model_validator(mode="after")
    def _overrides_need_entities(self) -> "DetectorSpec":
        if self.overrides and self.per != "entity":
            raise ValueError("detector overrides choose per entity: they need `per: entity`")
        return self

    def for_entity(self, entity_id: str) -> "DetectorSpec":
        """The detector an entity trains with: the declared one, or its first matching override."""
        for override in self.overrides:
            if re.fullmatch(override.match, entity_id):
                changes = override.model_dump(exclude={"match"}, exclude_none=True)
                if "name" in changes and "params" not in changes:
                    changes["params"] = {}  # the declared parameters belong to the declared detector
                return self.model_copy(update={**changes, "overrides": []})
        return self


class Dataset(_Strict):
    name: str
    description: str = ""
    format: Literal["csv", "json", "parquet"] = "json"
    event_id: str
    event_time: str
    entity: str
    fields: list[FieldSpec] = Field(min_length=1)
    features: FeatureSpec
    detector: DetectorSpec = DetectorSpec()
    checks: list[CustomCheck] = Field(default_factory=list)
    # Which version of an event id wins when two records carry it with different values (a
    # conflict; exact repeats are duplicates): the first read (silver's, else the run's earliest
    # file and line), or the latest (the run's last file and line, over silver's), so a corrected
    # resend replaces what silver holds. The losing version is kept in the quarantine under rule
    # `event_id.conflict` (batch/job.py).
    duplicates: Literal["first", "latest"] = "first"

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError(f"dataset name {value!r} must match {IDENTIFIER.pattern}")
        return value

    @model_validator(mode="after")
    def _keys_declared(self) -> "Dataset":
        names = [field.name for field in self.fields]
        duplicated = {name for name in names if names.count(name) > 1}
        if duplicated:
            raise ValueError(f"fields declared twice: {sorted(duplicated)}")
        by_name = {field.name: field for field in self.fields}
        for role in ("event_id", "event_time", "entity"):
            key = getattr(self, role)
            if key not in by_name:
                raise ValueError(f"{role} {key!r} is not a declared field")
            if not by_name[key].required:
                raise ValueError(f"{role} {key!r} must be required")
        if by_name[self.event_time].type != "timestamp":
            raise ValueError(f"event_time {self.event_time!r} must have type timestamp")
        for name in self.features.fields:
            if name not in by_name or by_name[name].type not in NUMERIC_TYPES:
                raise ValueError(f"feature field {name!r} must be a declared numeric field")
        for check in self.checks:
            for constraint in (check.when, check.then):
                if constraint.field not in by_name:
                    raise ValueError(f"check {check.name}: unknown field {constraint.field!r}")
                kind = by_name[constraint.field].type
                numeric = constraint.minimum is not None or constraint.maximum is not None
                if numeric and kind not in NUMERIC_TYPES:
                    raise ValueError(f"check {check.name}: minimum/maximum on {constraint.field!r} need a numeric type, not {kind}")
                if not numeric and kind != "string":
                    raise ValueError(f"check {check.name}: allowed/pattern on {constraint.field!r} need type string, not {kind}")
        for field in self.fields:
            if field.derive and field.derive.join:
                unknown = [name for name in field.derive.join if name not in by_name]
                if unknown:
                    raise ValueError(f"{field.name}: derive.join names unknown fields {unknown}")
        return self

    @model_validator(mode="after")
    def _context_detector_fits_features(self) -> "Dataset":
        """The `context` detector reads the features by position: its `fields` must be the number
        of feature fields, and its sub-sequence needs context - 1 lags (lakehouse/context_detector.py)."""
        for spec in [self.detector, *self.detector.overrides]:
            if spec.name != "context":
                continue
            params = spec.params or {}
            fields, context = int(params.get("fields", 1)), int(params.get("context", 1))
            if fields != len(self.features.fields):
                raise ValueError(f"detector context: params.fields is {fields}, but {len(self.features.fields)} feature fields are declared")
            if context - 1 > self.features.lags:
                raise ValueError(f"detector context: params.context {context} needs features.lags >= {context - 1}, not {self.features.lags}")
        return self

    def field(self, name: str) -> FieldSpec:
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(name)

    @cached_property
    def input_fields(self) -> list[FieldSpec]:
        """Fields read from the input (the rest are derived)."""
        return [field for field in self.fields if field.derive is None]

    @cached_property
    def derived_fields(self) -> list[FieldSpec]:
        """Derived fields in dependency order (file-stem ones first, joins after)."""
        return sorted(
            (field for field in self.fields if field.derive is not None),
            key=lambda field: 0 if field.derive.file_stem else 1,
        )

    @property
    def needs_source_file(self) -> bool:
        return any(field.derive and field.derive.file_stem for field in self.fields)


def load_dataset_file(path: Path) -> Dataset:
    try:
        document = yaml.safe_load(path.read_text())
        return Dataset.model_validate(document)
    except (OSError, yaml.YAMLError, ValueError) as error:
        raise ConfigurationError(f"dataset declaration {path}: {error}") from error
