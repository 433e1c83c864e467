"""Drain one topic into the object store: bounded, restartable, exactly once.

Each partition is read in chunks. A chunk is cut by rows or bytes (never by the wall clock), claimed
in the ledger, decoded, written as one Parquet file per event hour, and committed by its manifest.
Only then are the Kafka offsets committed, and only for lag monitoring: the ledger decides where a
partition resumes. The run stops between chunks when its record or time budget is spent, so a
backlog is caught up over several runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Any

from confluent_kafka import Message

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from flywheel.drain.buffer import PartitionBuffer
from flywheel.drain.chunk import ChunkWriter
from flywheel.drain.ledger import Claim, Manifest, PartitionLedger
from flywheel.errors import BrokerUnavailable, ConfigError, FlywheelError
from flywheel.events.dead_letter import dead_letter_topic, produce_dead_letters
from flywheel.events.decode import RawBatch, decode_batch
from flywheel.events.rejections import Rejected
from flywheel.events.schema import TopicSchema
from flywheel.kafka_config import client_config
from flywheel.settings import Settings
from flywheel.storage import ObjectStore

log = logging.getLogger(__name__)

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
    #: Chunks decoded and written at once, each on a thread of its own (Arrow's parser and Parquet writer
    #: run outside the GIL); 0 means one per CPU core, at most 2. A partition always uses the same thread,
    #: so its chunks still commit in offset order. Each worker holds at most one chunk in flight, so more
    #: workers cost memory: two kept the 1M-event benchmark at ~0.8 GiB peak.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"drain workers must be 0 (one per core) or more, not {self.workers}")

    def worker_count(self, partitions: int) -> int:
        wanted = self.workers or min(2, os.cpu_count() or 1)
        return max(1, min(wanted, partitions))


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


def _close_bounded(consumer: Consumer, timeout_s: float, topic: str) -> None:
    """Close the consumer, but never wait on a broker that is gone for longer than ``timeout_s``.

    librdkafka's close waits for outstanding offset commits, which with the broker down means until
    it is back: a drain task would hang for the whole outage instead of failing with its clear error
    and letting Airflow retry. Nothing is lost by not waiting: the store's ledger, not the group's
    offsets, says where the drain stopped.
    """
    closer = threading.Thread(target=consumer.close, name=f"drain-close-{topic}", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        log.warning("%s: the consumer did not close within %.0fs (broker unreachable?); not waiting for it",
                    topic, timeout_s)


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
        self.writer = ChunkWriter(store, schema, settings.parquet_compression)
        self.group_id = f"{settings.group_prefix}-drain"

    # -- Kafka --------------------------------------------------------------------------------------

    def _consumer(self) -> Consumer:
        from confluent_kafka import Consumer

        config = client_config(
            self.settings, "consumer", **{"group.id": self.group_id, "client.id": f"flywheel-drain-{self.topic}",
                                          "queued.min.messages": 500_000,
                                          "isolation.level": "read_committed"},
        )
        config.update(self.consumer_overrides)
        return Consumer(config)

    def _partitions(self, consumer: Consumer) -> list[int]:
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

    # -- writing ------------------------------------------------------------------------------------

    def _dead_letter(self, producer: Producer | None, rejected: list[Rejected], partition: int) -> None:
        """Copy rejected records to ``<topic>.dlq`` (at least once; the store's copy is exactly once)."""
        if producer is None or not rejected:
            return
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err.str())

        produce_dead_letters(producer, "drain", self.topic, partition, rejected, on_delivery)
        remaining = producer.flush(self.settings.broker_timeout_s)
        if remaining or errors:
            raise BrokerUnavailable(f"dead-letter topic {dead_letter_topic(self.topic)}: {remaining} undelivered; "
                                    f"{errors[:3]}")

    # -- the run ------------------------------------------------------------------------------------

    def run(self, partitions: list[int] | None = None) -> DrainResult:
        """Drain until every chosen partition is at its end or the record/time budget is spent."""
        from confluent_kafka import KafkaError, Producer, TopicPartition

        started = time.monotonic()
        deadline = started + self.limits.max_seconds
        result = DrainResult(self.topic)
        consumer = self._consumer()
        producer = Producer(client_config(self.settings, "producer")) if self.limits.dead_letter_topic else None
        self._lanes: list[ThreadPoolExecutor] = []
        self._in_flight: deque[Future[_ChunkDone]] = deque()
        self._kafka_consumer, self._topic_partition, self._result = consumer, TopicPartition, result
        try:
            all_partitions = self._partitions(consumer)
            chosen = partitions if partitions is not None else all_partitions
            unknown = sorted(set(chosen) - set(all_partitions))
            if unknown:
                raise ConfigError(f"topic {self.topic!r} has no partition(s) {unknown}")
            # Before any assignment: once a fetch is parked at the log end, offset queries wait behind it.
            states = {}
            for p in chosen:
                state = self._open_partition(consumer, p, TopicPartition)
                result.partitions[p] = state.start
                if state.start < state.high:
                    states[p] = state
            self._lanes = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"drain-{self.topic}-{i}")
                           for i in range(self.limits.worker_count(len(states)))]
            for i, st in enumerate(states.values()):
                st.lane = i % len(self._lanes)
            if states:
                consumer.assign([TopicPartition(self.topic, p, max(st.start, st.low)) for p, st in states.items()])
            self._consume_loop(consumer, producer, states, result, deadline, KafkaError, TopicPartition)
            self._settle()
            # All partitions, idle ones too, so lag dashboards recover after the group was deleted or expired.
            final = [TopicPartition(self.topic, p, o) for p, o in result.partitions.items() if o > 0]
            if final:
                try:
                    consumer.commit(offsets=final, asynchronous=False)
                except Exception as exc:  # lag metrics only
                    log.warning("%s: could not commit group offsets: %s", self.topic, exc)
        finally:
            for lane in self._lanes:
                lane.shutdown(wait=True, cancel_futures=True)
            _close_bounded(consumer, self.settings.broker_timeout_s, self.topic)
        result.seconds = time.monotonic() - started
        log.info("drained %s: %s", self.topic, result.as_dict())
        if result.reasons.get("internal_error"):
            from flywheel.alerts import alert

            alert("internal_error", self.schema.model,
                  f"{result.reasons['internal_error']} record(s) of {self.topic} made the decoder raise; they were "
                  f"set aside as internal_error (rejected files and {dead_letter_topic(self.topic)}) and the drain "
                  "went on", topic=self.topic)
        return result

    def _open_partition(self, consumer: Consumer, partition: int, topic_partition: type[TopicPartition]) -> _PartitionState:
        try:
            low, high = consumer.get_watermark_offsets(topic_partition(self.topic, partition),
                                                       timeout=self.settings.broker_timeout_s, cached=False)
        except Exception as exc:
            raise BrokerUnavailable(
                f"{self.topic}[{partition}]: could not read the partition's offsets: {exc}"
            ) from None
        ledger = PartitionLedger(self.store, self.topic, partition, self.owner, self.limits.lease_s)
        resume = ledger.resume_offset()
        start = low if resume is None else resume
        if start > high:
            raise FlywheelError(
                f"{self.topic}[{partition}]: the store says the drain stopped at offset {start}, but the partition "
                f"ends at {high}: was the topic deleted and recreated? Move the old data aside before draining it."
            )
        state = _PartitionState(partition, ledger, start, low, high)
        if start < low:
            state.expired = [start, low - 1]
            log.warning("%s[%d]: offsets %d-%d expired (retention) before they were drained", self.topic,
                        partition, start, low - 1)
        return state

    def _consume_loop(self, consumer: Consumer, producer: Producer | None, states: dict[int, _PartitionState], result: DrainResult,
                      deadline: float, kafka_error: type[KafkaError], topic_partition: type[TopicPartition]) -> None:
        budget = self.limits.max_records
        taken = 0  # records consumed in this run
        idle_since = time.monotonic()
        active = dict(states)
        while active:
            out_of_budget = taken >= budget or time.monotonic() >= deadline
            if out_of_budget:
                # Cut what is buffered (unless a pinned replay still needs more) and stop.
                for st in list(active.values()):
                    if st.pinned_end is None or self._ready(st, False):
                        while not st.busy and self._ready(st, True):
                            self._cut_chunk(consumer, producer, st, result, topic_partition)
                        del active[st.partition]
                if not active:
                    break
            messages = consumer.consume(10_000 if out_of_budget else max(1, min(10_000, budget - taken)), 0.1)
            if not messages:
                if time.monotonic() - idle_since > self.settings.broker_timeout_s:
                    raise BrokerUnavailable(
                        f"no data and no end-of-partition from Kafka at {self.settings.kafka_bootstrap} for "
                        f"{self.topic} within {self.settings.broker_timeout_s:g}s"
                    )
                continue
            idle_since = time.monotonic()
            ended: set[int] = set()
            taken += self._take(messages, active, ended, kafka_error)
            for st in list(active.values()):
                at_end = st.partition in ended
                if at_end and st.pinned_end is not None and (not st.buffer or st.buffer.last_offset() < st.pinned_end):
                    raise FlywheelError(
                        f"{self.topic}[{st.partition}]: cannot replay the pinned chunk up to offset "
                        f"{st.pinned_end}: the partition ends before it (truncated or recreated?)"
                    )
                while not st.busy and self._ready(st, at_end):
                    self._cut_chunk(consumer, producer, st, result, topic_partition)
                if st.busy or (at_end and not st.buffer and st.pinned_end is None):
                    del active[st.partition]
                    consumer.pause([topic_partition(self.topic, st.partition)])
            self._bound_memory(consumer, producer, active, result, topic_partition)

    def _take(self, messages: list[Message], active: dict[int, _PartitionState], ended: set[int],
              kafka_error: type[KafkaError]) -> int:
        """Buffer one ``consume()`` batch by partition; returns how many records were taken.

        The consumer returns runs of consecutive records of one partition, so whole runs are moved at
        once: per-record work in Python bytecode held the GIL long enough to starve the decoding thread.
        """
        errors = list(map(Message.error, messages))
        if any(errors):
            kept = []
            for m, err in zip(messages, errors, strict=True):
                if err is None:
                    kept.append(m)
                elif err.code() == kafka_error._PARTITION_EOF:
                    ended.add(m.partition() or 0)
                elif err.fatal() or err.code() in (kafka_error.UNKNOWN_TOPIC_OR_PART,
                                                   kafka_error.TOPIC_AUTHORIZATION_FAILED):
                    raise BrokerUnavailable(f"{self.topic}: {err.str()}")
                else:
                    log.warning("%s: consumer error (retrying): %s", self.topic, err.str())
            messages = kept
        taken = 0
        for partition, run in groupby(messages, Message.partition):
            st = active.get(partition) if partition is not None else None
            if st is None:  # a partition we already finished; its records stay for the next run
                continue
            records = list(run)
            st.buffer.add(records)
            taken += len(records)
        return taken

    def _bound_memory(self, consumer: Consumer, producer: Producer | None, active: dict[int, _PartitionState], result: DrainResult,
                      topic_partition: type[TopicPartition]) -> None:
        """Keep all partitions' buffers together under flush_rows / flush_bytes by cutting the largest.

        The limits bound one chunk; without this, every partition could hold nearly a chunk at once.
        """
        while True:
            rows = sum(len(st.buffer) for st in active.values())
            size = sum(st.buffer.size for st in active.values())
            if rows < self.limits.flush_rows and size < self.limits.flush_bytes:
                return
            candidates = [st for st in active.values() if st.buffer and st.pinned_end is None and not st.busy]
            if not candidates:
                return
            largest = max(candidates, key=lambda st: (st.buffer.size, len(st.buffer)))
            self._cut_chunk(consumer, producer, largest, result, topic_partition)
            if largest.busy:
                del active[largest.partition]
                consumer.pause([topic_partition(self.topic, largest.partition)])

    def _ready(self, st: _PartitionState, at_end: bool) -> bool:
        """Whether the buffered records make a chunk: cut by rows or bytes, never by the clock."""
        if not st.buffer:
            return False
        if st.pinned_end is not None:
            return st.buffer.last_offset() >= st.pinned_end
        return len(st.buffer) >= self.limits.flush_rows or st.buffer.size >= self.limits.flush_bytes or at_end

    def _cut_chunk(self, consumer: Consumer, producer: Producer | None, st: _PartitionState, result: DrainResult,
                   topic_partition: type[TopicPartition]) -> None:
        """Claim, write and commit the buffered records of one partition as one chunk."""
        if st.pinned_end is not None:
            last = st.pinned_end
        else:  # up to flush_rows records and up to flush_bytes bytes
            last = int(st.buffer.offsets()[st.buffer.natural_cut(self.limits.flush_rows, self.limits.flush_bytes) - 1])
        if st.pinned_end is None:
            claim: Claim = st.ledger.claim(st.start, last)
            if claim.status == "busy":
                log.info("%s[%d]: chunk at %d is being drained by %s; skipping", self.topic, st.partition,
                         st.start, claim.holder)
                result.busy[st.partition] = claim.holder
                st.busy = True
                return
            if claim.status == "committed":
                self._settle()
                resumed = st.ledger.resume_offset()
                st.start = st.start if resumed is None else resumed
                st.clear()
                consumer.seek(topic_partition(self.topic, st.partition, st.start))
                return
            if claim.end > last:  # an earlier attempt pinned a longer chunk: read on to its end
                st.pinned_end = claim.end
                return
            last = claim.end
        batch, size = st.buffer.take(self.topic, st.partition, last)
        st.pinned_end = None
        start, expired = st.start, st.expired
        st.expired = None
        st.start = last + 1
        result.partitions[st.partition] = st.start
        # Decoding and writing run on the partition's worker thread while this one keeps consuming. A
        # partition's chunks go through one thread, so they commit in offset order; at most one chunk per
        # worker is in flight, which bounds memory.
        self._submit(st.lane, lambda: self._write_chunk(producer, batch, st.ledger, start, last, expired, size))

    def _submit(self, lane: int, work: Any) -> None:
        self._in_flight.append(self._lanes[lane].submit(work))
        while len(self._in_flight) > len(self._lanes):
            self._finish_oldest()

    def _settle(self) -> None:
        """Wait for every chunk in flight; an error in any of them fails the run."""
        while self._in_flight:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        done = self._in_flight.popleft().result()  # re-raises the worker's error here
        manifest, result = done.manifest, self._result
        if done.committed:  # counted here, on one thread, rather than by the workers
            result.rows += manifest.rows
            result.rejected += manifest.rejected
            result.reasons.update(manifest.reasons)
            result.files += len(manifest.files) + len(manifest.rejected_files)
            result.bytes_in += done.size
            result.chunks += 1
        self._commit_group_offset(self._kafka_consumer, manifest.partition, manifest.next_offset,
                                  self._topic_partition)

    def _write_chunk(self, producer: Producer | None, batch: RawBatch, ledger: PartitionLedger, start: int, last: int,
                     expired: list[int] | None, size: int) -> _ChunkDone:
        partition = batch.partition
        decoded = decode_batch(self.schema, batch, max_event_bytes=self.limits.max_event_bytes)
        files = self.writer.write_rows(decoded, partition, start, last)
        rejected_files = self.writer.write_rejected(decoded.rejected, partition, start, last)
        self._dead_letter(producer, decoded.rejected, partition)
        reasons = decoded.reason_counts()
        manifest = Manifest(
            topic=self.topic, partition=partition, start=start, end=last, next_offset=last + 1,
            rows=decoded.table.num_rows, rejected=len(decoded.rejected), reasons=dict(reasons), files=files,
            rejected_files=rejected_files, owner=self.owner, expired=expired,
        )
        return _ChunkDone(manifest, ledger.commit(manifest), size)

    def _commit_group_offset(self, consumer: Consumer, partition: int, offset: int,
                             topic_partition: type[TopicPartition]) -> None:
        """For lag dashboards only; the ledger is what the next run resumes from."""
        try:
            consumer.commit(offsets=[topic_partition(self.topic, partition, offset)], asynchronous=True)
        except Exception as exc:  # a failed commit costs nothing but a stale lag metric
            log.warning("%s[%d]: could not commit group offset %d: %s", self.topic, partition, offset, exc)


@dataclass(frozen=True)
class _ChunkDone:
    manifest: Manifest
    committed: bool  # False: another drain committed the very same chunk first
    size: int  # bytes of the chunk's values


@dataclass
class _PartitionState:
    """Where one partition stands in this run, and the records buffered for its next chunk."""

    partition: int
    ledger: PartitionLedger
    start: int  # first offset of the chunk being buffered
    low: int
    high: int
    expired: list[int] | None = None
    pinned_end: int | None = None
    busy: bool = False
    lane: int = 0  # the worker thread that decodes and writes this partition's chunks
    buffer: PartitionBuffer = field(default_factory=PartitionBuffer)

    def clear(self) -> None:
        self.buffer.clear()
        self.pinned_end = None
