"""Model specs: one YAML file per model declares everything the generated DAGs and the scorer need.

A user adds a model by adding a spec, so the loader is strict: unknown fields are typos, not options,
and every error names the file, the field and the reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.errors import SpecError

FeatureType = Literal["float", "int", "bool", "category"]
KeyType = Literal["string", "int"]
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """'90s', '15m', '6h', '7d', '2w' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 6h, 7d)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


Duration = Annotated[timedelta, Field(description="e.g. 30s, 15m, 6h, 7d")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    name: str = Field(pattern=_NAME)
    type: FeatureType = "float"
    #: A nullable feature may be missing or null in an event; LightGBM treats it as missing.
    nullable: bool = False
    description: str = ""


class TopicsSpec(_Strict):
    features: str = Field(pattern=_TOPIC)
    labels: str | None = Field(default=None, pattern=_TOPIC)
    predictions: str = Field(pattern=_TOPIC)


class LabelSpec(_Strict):
    field: str = Field(pattern=_NAME)
    #: JSON type of the label value: 0/1 integers or true/false.
    type: Literal["int", "bool"] = "int"
    #: Labels are joined to features on this field of both events (defaults to the spec's key_field).
    key_field: str | None = Field(default=None, pattern=_NAME)
    #: How long after an event its label may still arrive; younger events are not used for training.
    max_delay: Duration = timedelta(hours=1)

    _parse = field_validator("max_delay", mode="before")(parse_duration)


class DrainSpec(_Strict):
    schedule_minutes: int = Field(default=5, ge=1, le=1440)
    max_records: int = Field(default=1_000_000, ge=1)
    max_seconds: float = Field(default=120.0, gt=0)
    #: Flush a Parquet file every this many rows or bytes, whichever first: bounds memory.
    flush_rows: int = Field(default=250_000, ge=1)
    flush_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_event_bytes: int = Field(default=1024 * 1024, ge=16)
    dead_letter_topic: bool = True


class TrainingSpec(_Strict):
    schedule: str = "@daily"
    window: Duration = timedelta(days=7)
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    holdout_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    num_boost_round: int = Field(default=200, ge=1)
    early_stopping_rounds: int = Field(default=20, ge=1)
    seed: int = 42
    params: dict[str, Any] = Field(default_factory=lambda: {"objective": "binary", "learning_rate": 0.05})

    _parse = field_validator("window", mode="before")(parse_duration)


class GatesSpec(_Strict):
    min_rows: int = Field(default=1000, ge=1)
    min_positives: int = Field(default=20, ge=0)
    min_auc: float | None = Field(default=0.6, ge=0, le=1)
    max_logloss: float | None = Field(default=None, gt=0)
    #: Challenger AUC minus champion AUC on the same holdout must be at least this (may be negative).
    min_improvement: float = -0.0
    max_latency_us: float | None = Field(default=None, gt=0)
    max_model_bytes: int | None = Field(default=None, gt=0)


class ScoringSpec(_Strict):
    threshold: float = Field(default=0.5, ge=0, le=1)
    batch_size: int = Field(default=1000, ge=1)
    #: How long a micro-batch may wait to fill: the latency floor at low rates.
    batch_timeout_ms: int = Field(default=10, ge=1)


class DriftSpec(_Strict):
    schedule: str = "@hourly"
    window: Duration = timedelta(hours=1)
    drift_share: float = Field(default=0.5, gt=0, le=1)
    max_auc_drop: float = Field(default=0.05, ge=0, le=1)
    cooldown: Duration = timedelta(hours=6)
    sample_rows: int = Field(default=50_000, ge=100)

    _parse = field_validator("window", "cooldown", mode="before")(parse_duration)


class ModelSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    description: str = ""
    topics: TopicsSpec
    key_field: str = Field(pattern=_NAME)
    #: JSON type of the key field (and of the label topic's key field): ``string`` ids or ``int`` ids.
    key_type: KeyType = "string"
    event_time_field: str | None = Field(default=None, pattern=_NAME)
    features: list[FeatureSpec] = Field(min_length=1)
    label: LabelSpec | None = None
    drain: DrainSpec = DrainSpec()
    training: TrainingSpec = TrainingSpec()
    gates: GatesSpec = GatesSpec()
    scoring: ScoringSpec = ScoringSpec()
    drift: DriftSpec = DriftSpec()
    #: Where the spec was loaded from; not part of the spec's identity.
    source: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: duplicate feature names {dupes}")
        reserved = {self.key_field, self.event_time_field} | ({self.label.field} if self.label else set())
        clash = sorted(set(names) & {r for r in reserved if r})
        if clash:
            raise ValueError(f"features: {clash} is also the key, event-time or label field")
        if self.label and not self.topics.labels:
            raise ValueError("topics.labels: required when a label is declared")
        topics = [self.topics.features, self.topics.labels, self.topics.predictions]
        if len({t for t in topics if t}) != len([t for t in topics if t]):
            raise ValueError("topics: features, labels and predictions must be different topics")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def label_key_field(self) -> str:
        return (self.label.key_field if self.label and self.label.key_field else None) or self.key_field

    @property
    def drained_topics(self) -> list[str]:
        """Topics the drain copies to the store for this model."""
        return [t for t in (self.topics.features, self.topics.labels, self.topics.predictions) if t]

    @cached_property
    def spec_hash(self) -> str:
        """Identity of what the spec says, not how it is formatted: recorded with every model version."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_spec(data: Any, source: str = "<spec>") -> ModelSpec:
    if not isinstance(data, dict):
        raise SpecError(source, "(top level)", "a spec must be a YAML mapping")
    try:
        return ModelSpec.model_validate({**data, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            reason = "unknown field (check the spelling)"
        elif first["type"] == "missing":
            reason = "required field is missing"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        field = _location(tuple(first["loc"]))
        if field == "(top level)" and ":" in reason:
            field, _, reason = (p.strip() for p in reason.partition(":"))
        raise SpecError(source, field, reason + more) from None


def load_spec(path: str | Path) -> ModelSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "(file)", "no such file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(str(path), "(file)", f"not valid YAML: {exc}") from None
    return parse_spec(data, str(path))


def load_specs(directory: str | Path) -> list[ModelSpec]:
    """All specs in a folder, sorted by name; two specs may not share a name or a features topic."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError(str(directory), "(folder)", "specs folder does not exist (FLYWHEEL_SPECS_DIR)")
    specs = [load_spec(p) for p in sorted(directory.glob("*.y*ml"))]
    seen: dict[str, str] = {}
    for spec in specs:
        for key in (f"name {spec.name}", f"topic {spec.topics.features}"):
            if key in seen:
                raise SpecError(spec.source, key.split()[0], f"{key!r} is also used by {seen[key]}")
            seen[key] = spec.source
    return sorted(specs, key=lambda s: s.name)


def find_spec(directory: str | Path, name: str) -> ModelSpec:
    """The spec called ``name`` in ``directory``, or a ConfigError listing the ones there are."""
    from flywheel.errors import ConfigError

    specs = load_specs(directory)
    for spec in specs:
        if spec.name == name:
            return spec
    raise ConfigError(f"no spec named {name!r} in {directory} (there are: {', '.join(s.name for s in specs) or 'none'})")
