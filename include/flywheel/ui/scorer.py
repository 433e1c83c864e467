"""The scorers' live figures for the Models view, read from ``flywheel.metrics``: cheap, bounded, optional.

Scorers publish a snapshot every few seconds (``flywheel.scoring.metrics``), keyed by model. The view
reads only the tail of each partition of the topic, with one deadline for the whole read, and caches
the answer briefly; with no broker, no topic or no recent snapshot it says "unknown". A page never
waits on Kafka: the browser asks for this separately, and the server gives up at the deadline.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from flywheel.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka.admin import ClusterMetadata

#: How many of the newest messages of each partition to look at: a few minutes of snapshots.
TAIL_MESSAGES = 200
#: A snapshot older than this no longer describes a running scorer.
STALE_AFTER_S = 300.0
CACHE_S = 15.0

_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
_in_flight: set[tuple[str, str]] = set()
_lock = threading.Lock()


def unknown(reason: str) -> dict[str, Any]:
    return {"known": False, "reason": reason}


class MetricsUnavailable(Exception):
    """The metrics topic could not be read: the reason is shown instead of figures."""


def read_snapshots(settings: Settings, model: str, timeout_s: float) -> list[dict[str, Any]]:
    """The scorer snapshots of ``model`` among the newest messages of the metrics topic, within timeout_s.

    MetricsUnavailable when the broker does not answer in time or the topic does not exist.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    from flywheel.kafka_config import client_config

    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(deadline - time.monotonic(), 0.01)

    topic = settings.metrics_topic
    consumer = Consumer(client_config(settings, "consumer", **{
        "group.id": f"{settings.group_prefix}-ui-metrics-reader", "socket.timeout.ms": max(int(timeout_s * 1000), 100),
        "enable.partition.eof": True, "fetch.wait.max.ms": 100}))
    try:
        try:
            meta: ClusterMetadata = consumer.list_topics(topic, timeout=left())
        except KafkaException as exc:
            raise MetricsUnavailable(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc.args[0]}") from None
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise MetricsUnavailable(f"no {topic} topic yet")
        assignment: list[TopicPartition] = []
        ends: dict[int, int] = {}  # partition -> its end offset when the read began
        for partition in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=left())
            if high > low:
                assignment.append(TopicPartition(topic, partition, max(low, high - TAIL_MESSAGES)))
                ends[partition] = high
        if not assignment:
            return []
        consumer.assign(assignment)
        snapshots: list[dict[str, Any]] = []
        done: set[int] = set()
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=min(left(), 0.2)):
                part, offset, error = msg.partition(), msg.offset(), msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF and part is not None:
                        done.add(part)
                    continue
                if part is not None and offset is not None and offset + 1 >= ends.get(part, 0):
                    done.add(part)
                raw = msg.value()
                if msg.key() != model.encode() or raw is None:
                    continue
                try:
                    value = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(value, dict) and value.get("kind") == "scorer":
                    snapshots.append(value)
        return snapshots
    except KafkaException as exc:
        raise MetricsUnavailable(f"{topic} not readable: {exc.args[0]}") from None
    finally:
        consumer.close()


def summarize(snapshots: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """One line for the page: the newest snapshot of each scorer member, added up."""
    now = time.time() if now is None else now
    latest: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        member = str(snap.get("member", "?"))
        if member not in latest or (snap.get("at") or 0) >= (latest[member].get("at") or 0):
            latest[member] = snap
    fresh = [s for s in latest.values() if now - float(s.get("at") or 0) <= STALE_AFTER_S]
    if not fresh:
        if latest:
            newest = max(float(s.get("at") or 0) for s in latest.values())
            return unknown(f"no scorer snapshot in the last {STALE_AFTER_S:.0f} s (newest {now - newest:.0f} s old)")
        return unknown("no scorer has published metrics")

    def worst(name: str) -> float | None:
        values = [s[name] for s in fresh if isinstance(s.get(name), int | float)]
        return max(values) if values else None

    return {
        "known": True,
        "members": len(fresh),
        "events_per_s": round(sum(float(s.get("events_per_s") or 0) for s in fresh), 1),
        "e2e_ms_p50": worst("e2e_ms_p50"),
        "e2e_ms_p99": worst("e2e_ms_p99"),
        "model_versions": sorted({s.get("model_version") for s in fresh if s.get("model_version") is not None}),
        "age_s": round(now - max(float(s.get("at") or 0) for s in fresh), 1),
    }


def scorer_lag(settings: Settings, model: str, timeout_s: float = 1.5) -> dict[str, Any]:
    """The cached figures for ``model``, or a fresh bounded read; "unknown" instead of an error."""
    key = (settings.kafka_bootstrap, model)
    with _lock:
        cached = _cache.get(key)
        if cached and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        if key in _in_flight:  # a slow read is still going: do not pile up more on a sick broker
            return cached[1] if cached else unknown("still asking the broker")
        _in_flight.add(key)
    try:
        try:
            result = summarize(read_snapshots(settings, model, timeout_s))
        except MetricsUnavailable as exc:
            result = unknown(str(exc))
        except Exception as exc:  # a bad Kafka configuration must not break the page either
            result = unknown(f"metrics topic not readable: {exc}")
        with _lock:
            _cache[key] = (time.monotonic(), result)
        return result
    finally:
        with _lock:
            _in_flight.discard(key)
