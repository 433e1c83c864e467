"""Why an event is set aside: one short code per cause, the same from every stage.

The codes are what people count, alert and filter on (the rejected files' ``reason`` column, the
dead-letter header ``flywheel.reason``, the drain's summary); ``detail`` says the rest in words.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every reason a stage may give, with what it means. The README's events section lists the same.
REASONS: dict[str, str] = {
    "tombstone": "the record has no value (a delete marker)",
    "oversized": "the value is larger than the spec's drain.max_event_bytes",
    "not_utf8": "the value is not valid UTF-8",
    "not_json": "the value is not one strict JSON document (RFC 8259): e.g. NaN or Infinity literals, a number "
                "outside the double range, a byte-order mark, trailing data, or nesting deeper than the limit",
    "not_object": "the value is JSON but not an object",
    "wrong_type": "a declared field holds a value of another JSON type (or an integer outside 64 bits)",
    "missing_field": "a required field is missing or null",
    "bad_timestamp": "the event-time field is not an ISO-8601 time",
    "internal_error": "decoding or scoring the record raised an exception (a bug): the record was isolated",
}


@dataclass(frozen=True)
class Rejected:
    """One record set aside, with everything needed to find, replay or inspect it."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    #: A code from :data:`REASONS`.
    reason: str
    detail: str
    #: The record's own Kafka headers, kept on its dead letter.
    headers: tuple[tuple[str, bytes | None], ...] = ()
