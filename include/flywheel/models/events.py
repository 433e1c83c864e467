"""Promotion events on the compacted ``flywheel.model-events`` topic, keyed by model name.

Compaction keeps the latest event per model, so a scorer starting at any time reads the current
champion from the topic; the champion pointer in the store stays the source of truth.
"""

from __future__ import annotations

import json
from typing import Any

from flywheel.errors import BrokerUnavailable
from flywheel.kafka_config import client_config, ensure_topics
from flywheel.settings import Settings


def publish_model_event(settings: Settings, event: dict[str, Any]) -> None:
    from confluent_kafka import Producer

    ensure_topics(settings, [settings.model_events_topic], partitions=1, compacted=[settings.model_events_topic])
    # One message, acks=all: the idempotent producer's id handshake would cost more than the send.
    producer = Producer(client_config(settings, "producer", **{"enable.idempotence": False}))
    errors: list[str] = []
    producer.produce(settings.model_events_topic, key=event["model"].encode(),
                     value=json.dumps(event, sort_keys=True, default=str).encode(),
                     on_delivery=lambda err, _m: errors.append(err.str()) if err else None)
    if producer.flush(settings.broker_timeout_s) or errors:
        raise BrokerUnavailable(f"model event for {event['model']} not delivered to {settings.model_events_topic}: "
                                f"{errors or 'timed out'}")
