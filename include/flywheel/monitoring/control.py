"""Control-topic alarms: what the triggerer runs for each message on ``flywheel.alerts``.

Only control events go through Airflow's triggerer, never feature data. An alarm is a small JSON
object such as ``{"model": "fraud", "reason": "p99 latency", "source": "scorer-3"}``; anything else
is ignored, so a stray message cannot start a drift check.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the triggerer hands over confluent-kafka's own message
    from confluent_kafka import Message


def alarm_payload(message: Message) -> dict[str, Any] | None:
    """apply_function of the Kafka message-queue trigger: the alarm to act on, or None to ignore."""
    raw = message.value()
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return None
    return {"model": body["model"], "reason": str(body.get("reason", "alarm"))[:500],
            "source": str(body.get("source", "unknown"))[:200], "offset": message.offset()}


def alarms_for(model: str, triggering_events: dict[Any, list[Any]] | None) -> list[dict[str, Any]]:
    """The alarms among a run's triggering asset events that concern ``model``."""
    out = []
    for events in (triggering_events or {}).values():
        for event in events:
            payload = (getattr(event, "extra", None) or {}).get("payload")
            if isinstance(payload, dict) and payload.get("model") == model:
                out.append(payload)
    return out
