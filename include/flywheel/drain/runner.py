"""Drain one topic into the object store: bounded, restartable, exactly once.

Each partition is read in chunks. A chunk is cut by rows or bytes (never by the wall clock), claimed
in the ledger, decoded, written as one Parquet file per event hour, and committed by its manifest.
Only then are the Kafka offsets committed, and only for lag monitoring: the ledger decides where a
partition resumes. The run stops between chunks when its record or time budget is spent, so a
backlog is caught up over several runs.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.drain import layout
from flywheel.drain.decode import DecodedBatch, RawBatch, Rejected, decode_batch
from flywheel.drain.ledger import Claim, Manifest, PartitionLedger
from flywheel.drain.schema import TopicSchema
from flywheel.errors import BrokerUnavailable, ConfigError, FlywheelError
from flywheel.kafka_config import client_config
from flywheel.settings import Settings
from flywheel.storage import ObjectStore

log = logging.getLogger(__name__)

REJECTED_SCHEMA = pa.schema([
    ("_topic", pa.string()), ("_partition", pa.int32()), ("_offset", pa.int64()),
    ("_timestamp", pa.timestamp("ms", tz="UTC")), ("_key", pa.binary()), ("value", pa.binary()),
    ("reason", pa.string()), ("detail", pa.string()),
])


@dataclass(frozen=True)
class DrainLimits:
    max_records: int = 1_000_000
    max_seconds: float = 120.0
    flush_rows: int = 250_000
    flush_bytes: int = 64 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024
    dead_letter_topic: bool = True
    #: How long another drain's unfinished claim is respected before it is taken over.
    lease_s: float = 60.0


@dataclass
class DrainResult:
    """What one run did; small enough for XCom and a log line."""

    topic: str
    rows: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    files: int = 0
    bytes_in: int = 0
    chunks: int = 0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    busy: dict[int, str] = field(default_factory=dict)  # partition -> holder of the claim
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "rows": self.rows, "rejected": self.rejected, "reasons": dict(self.reasons),
            "files": self.files, "bytes_in": self.bytes_in, "chunks": self.chunks,
            "partitions": {str(p): o for p, o in sorted(self.partitions.items())},
            "busy": {str(p): h for p, h in self.busy.items()}, "seconds": round(self.seconds, 3),
        }


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _hour_of_rows(table: pa.Table, time_field: str | None) -> np.ndarray:
    """Event hour (from the event-time field, else the Kafka timestamp) of every row."""
    kafka_us = pc.cast(table.column("_timestamp"), pa.int64()).to_numpy() * 1000
    if time_field:
        event_us = pc.cast(table.column(time_field), pa.int64()).to_numpy(zero_copy_only=False)
        if np.issubdtype(event_us.dtype, np.floating):  # nulls came back as NaN
            event_us = np.where(np.isnan(event_us), kafka_us, event_us).astype(np.int64)
        kafka_us = event_us
    return kafka_us // 3_600_000_000


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", write_statistics=True)
    return buffer.getvalue()


class TopicDrain:
    def __init__(
        self,
        settings: Settings,
        schema: TopicSchema,
        store: ObjectStore,
        limits: DrainLimits = DrainLimits(),
        owner: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings, self.schema, self.store, self.limits = settings, schema, store, limits
        self.owner = owner or default_owner()
        self.consumer_overrides = consumer_overrides or {}
        self.topic = schema.topic
        self.group_id = f"{settings.group_prefix}-drain"

    # -- Kafka --------------------------------------------------------------------------------------

    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        config = client_config(
            self.settings, "consumer", **{"group.id": self.group_id, "client.id": f"flywheel-drain-{self.topic}",
                                          "queued.min.messages": 500_000,
                                          "isolation.level": "read_committed"},
        )
        config.update(self.consumer_overrides)
        return Consumer(config)

    def _partitions(self, consumer: Any) -> list[int]:
        try:
            metadata = consumer.list_topics(self.topic, timeout=self.settings.broker_timeout_s)
        except Exception as exc:
            raise BrokerUnavailable(
                f"Kafka at {self.settings.kafka_bootstrap} did not answer within "
                f"{self.settings.broker_timeout_s:g}s ({exc})"
            ) from None
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ConfigError(
                f"topic {self.topic!r} does not exist on {self.settings.kafka_bootstrap} "
                "(create it, or run: flywheel check --create-topics)"
            )
        return sorted(topic.partitions)

    def _fetch(self, consumer: Any, partition: int, max_rows: int, max_bytes: int, until: int | None,
               deadline: float) -> tuple[RawBatch, int, bool]:
        """Read up to a chunk of one partition; return the batch, its byte size and whether at the end.

        With ``until`` set (replaying a pinned chunk) the row and byte limits do not apply: the chunk
        must end exactly at ``until``.
        """
        from confluent_kafka import KafkaError

        values: list[bytes | None] = []
        offsets: list[int] = []
        stamps: list[int] = []
        keys: list[bytes | None] = []
        size = 0
        idle_since = time.monotonic()
        while True:
            if until is None and (len(offsets) >= max_rows or size >= max_bytes):
                return RawBatch(self.topic, partition, values, offsets, stamps, keys), size, False
            if until is not None and offsets and offsets[-1] >= until:
                return RawBatch(self.topic, partition, values, offsets, stamps, keys), size, False
            want = 10_000 if until is not None else max(1, min(10_000, max_rows - len(offsets)))
            messages = consumer.consume(want, 0.1)
            if not messages:
                if time.monotonic() - idle_since > self.settings.broker_timeout_s or time.monotonic() > deadline + 30:
                    raise BrokerUnavailable(
                        f"no data and no end-of-partition from Kafka at {self.settings.kafka_bootstrap} for "
                        f"{self.topic}[{partition}] within {self.settings.broker_timeout_s:g}s"
                    )
                continue
            idle_since = time.monotonic()
            at_end = False
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end = True
                        continue
                    if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED):
                        raise BrokerUnavailable(f"{self.topic}[{partition}]: {err.str()}")
                    log.warning("%s[%d]: consumer error (retrying): %s", self.topic, partition, err.str())
                    continue
                value = m.value()
                values.append(value)
                offsets.append(m.offset())
                stamps.append(m.timestamp()[1])
                keys.append(m.key())
                if value is not None:
                    size += len(value)
            if until is not None and offsets and offsets[-1] > until:
                cut = int(np.searchsorted(np.asarray(offsets), until, side="right"))
                del values[cut:], offsets[cut:], stamps[cut:], keys[cut:]
            if at_end:
                if until is not None and (not offsets or offsets[-1] < until):
                    raise FlywheelError(
                        f"{self.topic}[{partition}]: cannot replay the pinned chunk up to offset {until}: the "
                        f"partition now ends at {offsets[-1] if offsets else 'its start'} (truncated or recreated?)"
                    )
                return RawBatch(self.topic, partition, values, offsets, stamps, keys), size, True

    # -- writing ------------------------------------------------------------------------------------

    def _write_rows(self, decoded: DecodedBatch, partition: int, start: int, end: int) -> list[dict[str, Any]]:
        table = decoded.table
        if table.num_rows == 0:
            return []
        hours = _hour_of_rows(table, self.schema.time_field)
        files = []
        distinct = np.unique(hours)
        for hour in distinct:
            part = table if len(distinct) == 1 else table.filter(pa.array(hours == hour))
            key = layout.data_key(self.topic, layout.hour_bucket(int(hour)), partition, start, end)
            self.store.put(key, _parquet_bytes(part))
            offsets = part.column("_offset")
            files.append({"key": key, "rows": part.num_rows, "min_offset": pc.min(offsets).as_py(),
                          "max_offset": pc.max(offsets).as_py()})
        return files

    def _write_rejected(self, rejected: list[Rejected], partition: int, start: int, end: int) -> list[str]:
        if not rejected:
            return []
        table = pa.table({
            "_topic": [self.topic] * len(rejected),
            "_partition": pa.array([partition] * len(rejected), pa.int32()),
            "_offset": [r.offset for r in rejected],
            "_timestamp": pa.array([r.timestamp_ms for r in rejected], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "_key": pa.array([r.key for r in rejected], pa.binary()),
            "value": pa.array([r.value for r in rejected], pa.binary()),
            "reason": [r.reason for r in rejected],
            "detail": [r.detail for r in rejected],
        }, schema=REJECTED_SCHEMA)
        bucket = layout.hour_bucket(rejected[0].timestamp_ms // 3_600_000)
        key = layout.rejected_key(self.topic, bucket, partition, start, end)
        self.store.put(key, _parquet_bytes(table))
        return [key]

    def _dead_letter(self, producer: Any, rejected: list[Rejected], partition: int) -> None:
        """Copy rejected records to ``<topic>.dlq`` (at least once; the store's copy is exactly once)."""
        if producer is None or not rejected:
            return
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err.str())

        for r in rejected:
            headers = [("flywheel.source.topic", self.topic.encode()), ("flywheel.source.partition", str(partition).encode()),
                       ("flywheel.source.offset", str(r.offset).encode()), ("flywheel.reason", r.reason.encode()),
                       ("flywheel.detail", r.detail.encode()[:1000])]
            producer.produce(f"{self.topic}.dlq", value=r.value, key=r.key, headers=headers, on_delivery=on_delivery)
        remaining = producer.flush(self.settings.broker_timeout_s)
        if remaining or errors:
            raise BrokerUnavailable(f"dead-letter topic {self.topic}.dlq: {remaining} undelivered; {errors[:3]}")

    # -- the run ------------------------------------------------------------------------------------

    def run(self, partitions: list[int] | None = None) -> DrainResult:
        from confluent_kafka import Producer, TopicPartition

        started = time.monotonic()
        deadline = started + self.limits.max_seconds
        result = DrainResult(self.topic)
        consumer = self._consumer()
        producer = Producer(client_config(self.settings, "producer")) if self.limits.dead_letter_topic else None
        try:
            all_partitions = self._partitions(consumer)
            chosen = partitions if partitions is not None else all_partitions
            unknown = sorted(set(chosen) - set(all_partitions))
            if unknown:
                raise ConfigError(f"topic {self.topic!r} has no partition(s) {unknown}")
            # Before any assignment: once a fetch is parked at the log end, offset queries wait behind it.
            watermarks = {p: self._watermarks(consumer, p, TopicPartition) for p in chosen}
            for partition in chosen:
                if result.rows + result.rejected >= self.limits.max_records or time.monotonic() >= deadline:
                    break
                self._drain_partition(consumer, producer, partition, watermarks[partition], result, deadline,
                                      TopicPartition)
        finally:
            consumer.close()
        result.seconds = time.monotonic() - started
        log.info("drained %s: %s", self.topic, result.as_dict())
        return result

    def _watermarks(self, consumer: Any, partition: int, topic_partition: Any) -> tuple[int, int]:
        try:
            low, high = consumer.get_watermark_offsets(topic_partition(self.topic, partition),
                                                       timeout=self.settings.broker_timeout_s, cached=False)
        except Exception as exc:
            raise BrokerUnavailable(f"{self.topic}[{partition}]: could not read the partition's offsets: {exc}") from None
        return int(low), int(high)

    def _drain_partition(self, consumer: Any, producer: Any, partition: int, watermarks: tuple[int, int],
                         result: DrainResult, deadline: float, topic_partition: Any) -> None:
        ledger = PartitionLedger(self.store, self.topic, partition, self.owner, self.limits.lease_s)
        low, high = watermarks
        resume = ledger.resume_offset()
        offset = low if resume is None else resume
        if offset > high:
            raise FlywheelError(
                f"{self.topic}[{partition}]: the store says the drain stopped at offset {offset}, but the partition "
                f"ends at {high}: was the topic deleted and recreated? Move the old data aside before draining it."
            )
        expired = [offset, low - 1] if offset < low else None
        if expired:
            log.warning("%s[%d]: offsets %d-%d expired (retention) before they were drained", self.topic,
                        partition, *expired)
        result.partitions[partition] = offset
        if offset >= high:
            return  # nothing new: do not even assign
        consumer.assign([topic_partition(self.topic, partition, max(offset, low))])
        at_end = False
        while not at_end:
            budget = self.limits.max_records - result.rows - result.rejected
            if budget <= 0 or time.monotonic() >= deadline:
                break
            batch, size, at_end = self._fetch(consumer, partition, min(self.limits.flush_rows, budget),
                                              self.limits.flush_bytes, None, deadline)
            if not batch.offsets:
                break
            claim: Claim = ledger.claim(offset, batch.offsets[-1])
            if claim.status == "busy":
                result.busy[partition] = claim.holder
                log.info("%s[%d]: chunk at %d is being drained by %s; skipping", self.topic, partition, offset,
                         claim.holder)
                break
            if claim.status == "committed":
                resumed = ledger.resume_offset()
                offset = offset if resumed is None else resumed
                consumer.seek(topic_partition(self.topic, partition, offset))
                at_end = False
                continue
            if claim.end < batch.offsets[-1]:  # an earlier attempt pinned a shorter chunk
                cut = int(np.searchsorted(np.asarray(batch.offsets), claim.end, side="right"))
                for column in (batch.values, batch.offsets, batch.timestamps_ms, batch.keys):
                    del column[cut:]
                consumer.seek(topic_partition(self.topic, partition, claim.end + 1))
                at_end = False
            elif claim.end > batch.offsets[-1]:  # ... or a longer one: read on to its end
                more, more_size, at_end = self._fetch(consumer, partition, 0, 0, claim.end, deadline)
                for column, extra in ((batch.values, more.values), (batch.offsets, more.offsets),
                                      (batch.timestamps_ms, more.timestamps_ms), (batch.keys, more.keys)):
                    column.extend(extra)
                size += more_size
            end = claim.end
            decoded = decode_batch(self.schema, batch, max_event_bytes=self.limits.max_event_bytes)
            files = self._write_rows(decoded, partition, offset, end)
            rejected_files = self._write_rejected(decoded.rejected, partition, offset, end)
            self._dead_letter(producer, decoded.rejected, partition)
            reasons = decoded.reason_counts()
            manifest = Manifest(
                topic=self.topic, partition=partition, start=offset, end=end, next_offset=end + 1,
                rows=decoded.table.num_rows, rejected=len(decoded.rejected), reasons=dict(reasons), files=files,
                rejected_files=rejected_files, owner=self.owner, expired=expired,
            )
            if ledger.commit(manifest):
                result.rows += manifest.rows
                result.rejected += manifest.rejected
                result.reasons.update(reasons)
                result.files += len(files) + len(rejected_files)
                result.bytes_in += size
                result.chunks += 1
            expired = None
            offset = end + 1
            result.partitions[partition] = offset
            self._commit_group_offset(consumer, partition, offset, topic_partition)

    def _commit_group_offset(self, consumer: Any, partition: int, offset: int, topic_partition: Any) -> None:
        """For lag dashboards only; the ledger is what the next run resumes from."""
        try:
            consumer.commit(offsets=[topic_partition(self.topic, partition, offset)], asynchronous=True)
        except Exception as exc:  # a failed commit costs nothing but a stale lag metric
            log.warning("%s[%d]: could not commit group offset %d: %s", self.topic, partition, offset, exc)
