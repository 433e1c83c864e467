"""The broker the suite runs against is a real Kafka: what goes in comes back, exactly."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from flywheel.kafka_config import check_broker, ensure_topics, produce_waiting
from flywheel.settings import Settings

from tests.fixtures.kafka_broker import unique

pytestmark = pytest.mark.integration


def test_100k_messages_across_partitions_come_back_exactly(kafka_broker, tmp_path):
    settings = Settings.from_env({"FLYWHEEL_HOME": str(tmp_path)}).with_overrides(kafka_bootstrap=kafka_broker.bootstrap)
    topic = unique("roundtrip")
    assert ensure_topics(settings, [topic], partitions=6) == [topic]
    assert ensure_topics(settings, [topic], partitions=6) == []  # idempotent
    assert check_broker(settings)[topic] == 6

    n = 100_000
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for i in range(n):
        produce_waiting(producer, topic, f"message-{i}".encode(), str(i).encode())
    assert producer.flush(60) == 0

    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": unique("g"),
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(6)])
    seen: dict[int, str] = {}
    partitions_used: set[int] = set()
    at_end: set[int] = set()
    while len(at_end) < 6:
        for m in consumer.consume(10_000, 5.0):
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                at_end.add(m.partition())
                continue
            key = int(m.key())
            assert key not in seen, f"message {key} delivered twice"
            seen[key] = m.value().decode()
            partitions_used.add(m.partition())
    consumer.close()
    assert len(seen) == n
    assert all(seen[i] == f"message-{i}" for i in range(n))
    assert partitions_used == set(range(6))
