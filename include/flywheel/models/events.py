"""Promotion events on the compacted ``flywheel.model-events`` topic, keyed by model name.

Compaction keeps the latest event per model, so a scorer starting at any time reads the current
champion from the topic; the champion pointer in the store stays the source of truth.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flywheel.errors import BrokerUnavailable
from flywheel.kafka_config import client_config, ensure_topics
from flywheel.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka.admin import ClusterMetadata


def publish_model_event(settings: Settings, event: dict[str, Any]) -> None:
    from confluent_kafka import Producer

    topic = settings.model_events_topic
    # One client, one connection: the producer's own metadata says whether the compacted topic exists
    # (all topics are listed, never the one topic by name, which a broker may auto-create uncompacted);
    # only when it does not is an admin client opened to create it. One message, acks=all, sent at
    # once (no linger): the idempotent producer's id handshake would cost more than the send.
    producer = Producer(client_config(settings, "producer", **{"enable.idempotence": False, "linger.ms": 0}))
    try:
        metadata: ClusterMetadata = producer.list_topics(timeout=settings.broker_timeout_s)
    except Exception as exc:  # confluent_kafka.KafkaException: no broker answered
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap} did not answer within "
                                f"{settings.broker_timeout_s:g}s ({exc}); model event for {event['model']} not sent") from None
    if topic not in metadata.topics:
        ensure_topics(settings, [topic], partitions=1, compacted=[topic])
    errors: list[str] = []
    producer.produce(topic, key=event["model"].encode(), value=json.dumps(event, sort_keys=True, default=str).encode(),
                     on_delivery=lambda err, _m: errors.append(err.str()) if err else None)
    if producer.flush(settings.broker_timeout_s) or errors:
        raise BrokerUnavailable(f"model event for {event['model']} not delivered to {topic}: "
                                f"{errors or 'timed out'}")
