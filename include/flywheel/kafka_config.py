"""The one Kafka configuration path: every client flywheel creates gets its config from here.

Keeping this single means a security setting (SASL, TLS) given once in the settings reaches the drain,
the scorer, the model-event publisher and the admin checks alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from flywheel.errors import BrokerUnavailable, ConfigError
from flywheel.settings import Settings

if TYPE_CHECKING:  # confluent_kafka is imported where a client is made, not when this module is
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

Role = Literal["consumer", "producer", "admin"]

_ROLE_DEFAULTS: dict[Role, dict[str, Any]] = {
    "consumer": {
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        # Batched consume is the fast path; bigger fetches amortise round trips.
        "fetch.max.bytes": 52428800,
        "max.partition.fetch.bytes": 4194304,
        "queued.max.messages.kbytes": 65536,
    },
    "producer": {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
    },
    "admin": {},
}


class _OncePerMinute(logging.Filter):
    """librdkafka repeats a connection failure every few milliseconds; one line a minute says it."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = text.split("|", 3)[-1][:200] if "|" in text else text[:200]
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < 60:
            return False
        self._last[key] = now
        return True


#: librdkafka's own log lines go through Python logging instead of straight to stderr.
LIBRDKAFKA_LOG = logging.getLogger("flywheel.librdkafka")
LIBRDKAFKA_LOG.addFilter(_OncePerMinute())


def client_config(settings: Settings, role: Role, **overrides: Any) -> dict[str, Any]:
    """Config dict for a confluent-kafka client.

    Precedence, lowest first: role defaults, the settings' passthrough properties (security and
    tuning given by the operator), then per-call overrides (e.g. a group id).
    """
    if not settings.kafka_bootstrap:
        raise ConfigError("no Kafka bootstrap servers: set FLYWHEEL_KAFKA_BOOTSTRAP (host:port[,host:port])")
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": f"flywheel-{role}",
        "logger": LIBRDKAFKA_LOG,
    }
    config.update(_ROLE_DEFAULTS[role])
    config.update(settings.kafka_config)
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return config


def _admin(settings: Settings) -> AdminClient:
    from confluent_kafka.admin import AdminClient

    try:
        return AdminClient(client_config(settings, "admin"))
    except Exception as exc:  # confluent_kafka.KafkaException for bad properties
        raise ConfigError(f"invalid Kafka client configuration: {exc}") from None


def check_broker(settings: Settings, timeout_s: float | None = None) -> Mapping[str, int]:
    """Ask the cluster for its topics; return {topic: partition count} or raise BrokerUnavailable.

    librdkafka retries a dead bootstrap server forever in the background, so without this check a
    wrong address shows up as a silent hang; here it becomes one sentence naming the address.
    """
    timeout = settings.broker_timeout_s if timeout_s is None else timeout_s
    admin = _admin(settings)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as exc:
        raise BrokerUnavailable(
            f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:g}s ({exc}); "
            "is the broker running (make kafka-up) and FLYWHEEL_KAFKA_BOOTSTRAP right?"
        ) from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if not name.startswith("__")}


def ensure_topics(
    settings: Settings,
    topics: Iterable[str],
    *,
    partitions: int = 4,
    config: Mapping[str, str] | None = None,
    compacted: Iterable[str] = (),
) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Safe to call repeatedly."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    existing = check_broker(settings)
    compacted_set = set(compacted)
    wanted = sorted({t for t in topics if t not in existing})
    if not wanted:
        return []
    new = []
    for name in wanted:
        topic_config = dict(config or {})
        if name in compacted_set:
            topic_config["cleanup.policy"] = "compact"
        new.append(NewTopic(name, num_partitions=partitions, replication_factor=-1, config=topic_config))
    admin = _admin(settings)  # must outlive the futures: a collected client cancels them
    futures = admin.create_topics(new, operation_timeout=settings.broker_timeout_s)
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConfigError(f"could not create topic {name!r}: {exc.args[0].str()}") from None
    return sorted(created)


def produce_waiting(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None,
                    **kwargs: Any) -> None:
    """Produce, waiting for room when the client's local queue is full instead of failing.

    confluent-kafka raises BufferError when ``queue.buffering.max.messages`` are pending; polling lets
    librdkafka hand them to the broker (and run delivery callbacks) so the message can be queued.
    """
    while True:
        try:
            producer.produce(topic, value=value, key=key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)
