"""Watching the predictions topic as a downstream consumer would: who was scored, by which version, how well.

The demo's ground truth (every label it sent) is joined with what the scorer actually published, so
the counts it reports (scored, missing, duplicated) and the live AUC per phase are measured on the
stream itself, not taken from the scorer's own word.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from flywheel.kafka_config import client_config
from flywheel.settings import Settings


@dataclass
class Prediction:
    version: int
    score: float
    scored_at_ms: int
    copies: int = 1


class PredictionCollector(threading.Thread):
    """Reads ``topic`` from the offsets it is given; keeps the first prediction per event id."""

    def __init__(self, settings: Settings, topic: str, key_field: str, start_offsets: dict[int, int]) -> None:
        super().__init__(name="demo-predictions", daemon=True)
        self.settings, self.topic, self.key_field = settings, topic, key_field
        self.start_offsets = start_offsets
        self.predictions: dict[str, Prediction] = {}
        self.first_scored_ms: dict[int, int] = {}  # version -> when it scored its first event
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(client_config(self.settings, "consumer", **{
            "group.id": "flywheel-demo-observer", "enable.auto.commit": False, "isolation.level": "read_committed"}))
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in self.start_offsets.items()])
        try:
            while not self._halt.is_set():
                for message in consumer.consume(2000, timeout=0.5):
                    value = message.value()
                    if message.error() or not value:
                        continue
                    self._add(orjson.loads(value))
        finally:
            consumer.close()

    def _add(self, value: dict[str, Any]) -> None:
        event_id = value.get(self.key_field)
        if not isinstance(event_id, str):
            return
        seen = self.predictions.get(event_id)
        if seen is not None:
            seen.copies += 1
            return
        version = int(value["model_version"])
        self.predictions[event_id] = Prediction(version, float(value["score"]), int(value["scored_at_ms"]))
        if version not in self.first_scored_ms or value["scored_at_ms"] < self.first_scored_ms[version]:
            self.first_scored_ms[version] = int(value["scored_at_ms"])

    def wait_scored(self, ids: Iterable[str], timeout_s: float) -> list[str]:
        """Wait until every id has a prediction; returns those still missing at the deadline."""
        wanted = list(ids)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.error:
                raise RuntimeError(f"reading predictions failed: {self.error}")
            missing = [i for i in wanted if i not in self.predictions]
            if not missing or time.monotonic() > deadline:
                return missing
            wanted = missing
            time.sleep(0.3)

    def wait_version(self, version: int, timeout_s: float) -> int:
        """Wall-clock ms at which ``version`` scored its first event."""
        deadline = time.monotonic() + timeout_s
        while version not in self.first_scored_ms:
            if self.error:
                raise RuntimeError(f"reading predictions failed: {self.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no prediction by v{version} within {timeout_s:.0f}s")
            time.sleep(0.2)
        return self.first_scored_ms[version]


def live_auc(collector: PredictionCollector, labels: dict[str, int], ids: Iterable[str],
             version: int | None = None) -> tuple[float | None, int]:
    """AUC of the published scores against the true labels (optionally of one version's predictions)."""
    from sklearn.metrics import roc_auc_score

    scores, truth = [], []
    for event_id in ids:
        p = collector.predictions.get(event_id)
        if p is None or (version is not None and p.version != version):
            continue
        scores.append(p.score)
        truth.append(labels[event_id])
    if len(set(truth)) < 2:
        return None, len(truth)
    return float(roc_auc_score(truth, scores)), len(truth)


def high_watermarks(settings: Settings, topic: str, timeout_s: float = 60.0) -> dict[int, int]:
    """Partition -> end offset now: where a reader interested only in what comes next starts.

    A topic created moments ago has no partition leaders yet; that is waited out, not reported.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(client_config(settings, "consumer", **{"group.id": "flywheel-demo-observer"}))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                metadata = consumer.list_topics(topic, timeout=settings.broker_timeout_s)
                partitions = sorted(metadata.topics[topic].partitions)
                if not partitions:
                    raise KafkaException(f"{topic} has no partitions yet")
                return {p: consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                          timeout=settings.broker_timeout_s)[1] for p in partitions}
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()
