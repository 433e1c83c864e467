"""The dead-letter record: one format from every stage, so a person reads one topic the same way.

A rejected record goes to ``<source topic>.dlq`` with its original key, value and headers, plus the
``flywheel.*`` headers naming the stage that set it aside, why, and where it came from. Replaying a
dead letter means producing its value back to ``flywheel.source.topic``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flywheel.events.rejections import Rejected

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger(__name__)

#: How much of a detail text a header carries (the rejected file in the store keeps it whole).
DETAIL_BYTES = 1000


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def dead_letter_headers(stage: str, topic: str, partition: int, rejected: Rejected) -> list[tuple[str, bytes | None]]:
    """The record's own headers first, then flywheel's (a consumer reading the last value of a name gets ours)."""
    return [
        *rejected.headers,
        ("flywheel.stage", stage.encode()),
        ("flywheel.source.topic", topic.encode()),
        ("flywheel.source.partition", str(partition).encode()),
        ("flywheel.source.offset", str(rejected.offset).encode()),
        ("flywheel.reason", rejected.reason.encode()),
        ("flywheel.detail", rejected.detail.encode()[:DETAIL_BYTES]),
    ]


def produce_dead_letters(producer: Producer, stage: str, topic: str, partition: int, rejected: list[Rejected],
                         on_delivery: Callable[[Any, Any], None] | None = None) -> None:
    """Queue one dead letter per rejected record (delivery is the caller's flush).

    A value too large to produce once flywheel's headers are added goes without its value (header
    ``flywheel.value.omitted`` gives its size; the source offset still points at it), rather than
    failing the batch on every retry.
    """
    from confluent_kafka import KafkaError, KafkaException

    dlq = dead_letter_topic(topic)
    for r in rejected:
        headers: list[tuple[str, str | bytes | None]] = list(dead_letter_headers(stage, topic, partition, r))
        value = r.value
        while True:
            try:
                if on_delivery is None:  # the producer's own callback (set in its config) reports
                    producer.produce(dlq, value=value, key=r.key, headers=headers)
                else:
                    producer.produce(dlq, value=value, key=r.key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let librdkafka send, then go on
                producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE or value is None:
                    raise
                log.warning("%s[%d]@%d: dead letter too large to produce; sending it without its value",
                            topic, partition, r.offset)
                headers.append(("flywheel.value.omitted", str(len(value)).encode()))
                value = None
