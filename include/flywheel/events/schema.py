"""What each drained topic must look like, derived from the model specs.

The spec declares the features topic fully; labels and predictions have shapes fixed by flywheel
(a label event carries the join key and the label; a prediction is written by the scorer).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from flywheel.specs import ModelSpec

_ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "category": pa.string()}

#: Columns the drain adds to every row; the leading underscore keeps them apart from event fields.
META_FIELDS = [
    pa.field("_topic", pa.string(), nullable=False),
    pa.field("_partition", pa.int32(), nullable=False),
    pa.field("_offset", pa.int64(), nullable=False),
    pa.field("_timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("_key", pa.binary()),
    #: Fields the spec does not (yet) declare, as a JSON object; null when there are none.
    pa.field("_extra", pa.string()),
]
EVENT_TIME_TYPE = pa.timestamp("us", tz="UTC")

#: What the scorer writes for each event (plus the key and event-time fields of the features).
PREDICTION_FIELDS = {
    "score": pa.float64(),
    "decision": pa.bool_(),
    "model_version": pa.string(),
    "source_ts_ms": pa.int64(),
    "scored_at_ms": pa.int64(),
}


@dataclass(frozen=True)
class TopicSchema:
    """The typed contract of one topic's JSON events: shared by the drain, the scorer, training and monitoring."""

    topic: str
    kind: str  # features | labels | predictions
    model: str
    #: name -> Arrow type; JSON values must already have that type (no silent coercion of "1" to 1).
    fields: dict[str, pa.DataType]
    required: frozenset[str]
    #: ISO-8601 event-time field used to partition files by date/hour; the Kafka timestamp otherwise.
    time_field: str | None

    @cached_property
    def parse_schema(self) -> pa.Schema:
        fields = dict(self.fields)
        if self.time_field:
            fields[self.time_field] = pa.string()
        return pa.schema(list(fields.items()))

    @cached_property
    def output_schema(self) -> pa.Schema:
        fields = [pa.field(n, t, nullable=n not in self.required) for n, t in self.fields.items()]
        if self.time_field:
            fields.append(pa.field(self.time_field, EVENT_TIME_TYPE))
        return pa.schema(fields + META_FIELDS)


#: The key field's type per ``key_type``: ids are strings or integers; nothing else identifies an event.
KEY_TYPES = {"string": pa.string(), "int": pa.int64()}


def topic_schemas(spec: ModelSpec) -> list[TopicSchema]:
    key = spec.key_field
    key_type = KEY_TYPES[spec.key_type]
    features = {key: key_type} | {f.name: _ARROW_TYPES[f.type] for f in spec.features}
    required = {key} | {f.name for f in spec.features if not f.nullable}
    schemas = [
        TopicSchema(spec.topics.features, "features", spec.name, features, frozenset(required), spec.event_time_field)
    ]
    if spec.label and spec.topics.labels:
        label_key = spec.label_key_field
        schemas.append(
            TopicSchema(
                spec.topics.labels,
                "labels",
                spec.name,
                {label_key: key_type, spec.label.field: _ARROW_TYPES[spec.label.type]},
                frozenset({label_key, spec.label.field}),
                None,
            )
        )
    predictions = {key: key_type} | PREDICTION_FIELDS
    schemas.append(
        TopicSchema(
            spec.topics.predictions,
            "predictions",
            spec.name,
            predictions,
            frozenset({key, "score", "model_version"}),
            spec.event_time_field,
        )
    )
    return schemas
