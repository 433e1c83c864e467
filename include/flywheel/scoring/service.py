"""The streaming scorer: one consumer-group member that embeds the champion and scores micro-batches.

Per batch: the pure core (``core.score_batch``: decode through the one event contract, predict, format)
runs per partition, then one prediction per event and one dead letter per rejected record are
produced, and the consumed offsets committed only after the broker acknowledged all of them. In
exactly-once mode the predictions, dead letters and consumed offsets form one Kafka transaction. A
record that makes scoring raise is dead-lettered as ``internal_error``; a failure of the broker (or of
the whole batch) is retried, so an event is never skipped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from flywheel.errors import BrokerUnavailable
from flywheel.events.dead_letter import produce_dead_letters
from flywheel.events.decode import RawBatch
from flywheel.events.schema import topic_schemas
from flywheel.kafka_config import client_config
from flywheel.scoring.core import ScoredBatch, score_batch
from flywheel.scoring.metrics import ScorerMetrics
from flywheel.scoring.model import ServingModel
from flywheel.scoring.watcher import ChampionWatcher
from flywheel.settings import Settings
from flywheel.specs import ModelSpec

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

    from flywheel.events.decode import Headers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScorerOptions:
    exactly_once: bool = False
    compile_model: bool = False
    batch_size: int | None = None  # default: the spec's
    batch_timeout_ms: int | None = None
    metrics_interval_s: float = 10.0
    poll_interval_s: float = 10.0
    #: Distinguishes members in exactly-once mode (transactional.id must be unique per member).
    member_id: str = "0"


class Scorer:
    def __init__(self, settings: Settings, spec: ModelSpec, options: ScorerOptions = ScorerOptions()) -> None:
        self.settings, self.spec, self.options = settings, spec, options
        self.schema = next(s for s in topic_schemas(spec) if s.kind == "features")
        self.batch_size = options.batch_size or spec.scoring.batch_size
        self.batch_timeout_s = (options.batch_timeout_ms or spec.scoring.batch_timeout_ms) / 1000
        self.group_id = f"{settings.group_prefix}-scorer-{spec.name}"
        self.metrics = ScorerMetrics(spec.name)
        self.model: ServingModel | None = None
        self._failures = 0
        #: Delivery failures reported since the batch in hand started (the producer's one callback).
        self._delivery_errors: list[str] = []
        #: The messages the broker refused since the batch in hand started: produced again, alone.
        self._undelivered: list[tuple[str, bytes | None, bytes | None, Headers]] = []
        #: Latest committed position per partition, committed once more synchronously at shutdown.
        self._last_offsets: dict[tuple[str, int], TopicPartition] = {}
        self.stopping = threading.Event()
        self.watcher = ChampionWatcher(settings, spec, compile_model=options.compile_model,
                                       poll_interval_s=options.poll_interval_s,
                                       cache_dir=settings.home / ".cache" / "lleaves")

    # -- lifecycle ----------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            log.info("%s received: finishing the batch, committing, leaving the group", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def stop(self) -> None:
        self.stopping.set()

    def _wait_for_champion(self) -> bool:
        announced = 0.0
        while not self.stopping.is_set():
            model = self.watcher.take_ready()
            if model is not None:
                self._swap(model)
                return True
            if time.monotonic() - announced > 30:
                log.info("%s: no champion yet; waiting for one to be promoted", self.spec.name)
                announced = time.monotonic()
            self.stopping.wait(0.2)
        return False

    def _swap(self, model: ServingModel) -> None:
        """Between two batches: a new version, or the compiled predictor of the version that serves."""
        previous = self.model
        self.model = model
        self.metrics.model_version = model.version
        self.metrics.predictor = model.predictor
        if previous is not None and previous.version == model.version:
            self.metrics.predictor_switches += 1
            log.info("%s: v%d now scored by the %s predictor (was %s)", self.spec.name, model.version,
                     model.predictor, previous.predictor)
            return
        if previous is not None:
            self.metrics.swaps += 1
        log.info("%s: now scoring with v%d, %s predictor (was v%s)", self.spec.name, model.version, model.predictor,
                 previous.version if previous else None)

    def _clients(self) -> tuple[Consumer, Producer, Producer]:
        from confluent_kafka import Consumer, Producer

        consumer = Consumer(client_config(self.settings, "consumer", **{
            "group.id": self.group_id, "enable.partition.eof": False, "isolation.level": "read_committed",
            "client.id": f"flywheel-scorer-{self.spec.name}-{self.options.member_id}",
            "fetch.wait.max.ms": 10, "max.poll.interval.ms": 300000}))
        # Delivery reports only for failures: a Python callback per prediction costs more than the produce.
        # One callback for the producer, not one passed with each produce: that costs ~0.4 µs per event.
        producer_config = client_config(self.settings, "producer", **{"linger.ms": 2, "compression.type": "lz4",
                                                                      "delivery.report.only.error": True})
        producer_config["on_delivery"] = self._on_delivery  # after client_config, which would turn _ into .
        if self.options.exactly_once:
            producer_config["transactional.id"] = f"{self.group_id}-{self.options.member_id}"
        producer = Producer(producer_config)
        side = Producer(client_config(self.settings, "producer", **{"linger.ms": 50}))  # metrics, outside txns
        return consumer, producer, side

    def run(self, max_events: int | None = None, max_seconds: float | None = None) -> ScorerMetrics:
        """Score until stopped (SIGTERM/SIGINT, ``stop()``), or until a bound for tests and benchmarks."""
        self.watcher.start()
        deadline = time.monotonic() + max_seconds if max_seconds else None
        if not self._wait_for_champion():
            self.watcher.stop()
            return self.metrics
        consumer, producer, side = self._clients()
        if self.options.exactly_once:
            producer.init_transactions(self.settings.broker_timeout_s * 3)
        consumer.subscribe([self.spec.topics.features],
                           on_assign=lambda c, ps: log.info("assigned %s", [p.partition for p in ps]),
                           on_revoke=lambda c, ps: self._revoked(ps))
        next_metrics = time.monotonic() + self.options.metrics_interval_s
        try:
            while not self.stopping.is_set():
                if max_events is not None and self.metrics.consumed >= max_events:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                ready = self.watcher.take_ready()
                if ready is not None:
                    self._swap(ready)
                messages = consumer.consume(self.batch_size, self.batch_timeout_s)
                if messages:
                    self._process(consumer, producer, messages)
                if time.monotonic() >= next_metrics:
                    self.metrics.refused = len(self.watcher.refused)
                    self.metrics.compile_failures = len(self.watcher.compile_failed)
                    self.metrics.publish(side, self.settings.metrics_topic)
                    side.poll(0)
                    next_metrics = time.monotonic() + self.options.metrics_interval_s
        finally:
            self.watcher.stop()
            side.flush(5)
            if self._last_offsets and not self.options.exactly_once:
                try:  # make the asynchronous commits durable before leaving the group
                    consumer.commit(offsets=list(self._last_offsets.values()), asynchronous=False)
                except Exception as exc:  # e.g. partitions already revoked: their new owner resumes
                    log.info("final offset commit skipped: %s", exc)
            consumer.close()  # leaves the group: the others take over its partitions at once
        log.info("%s scorer stopped: %s", self.spec.name, self.metrics.snapshot())
        return self.metrics

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(err.str())
            self._undelivered.append((msg.topic() or "", msg.value(), msg.key(), cast("Headers", msg.headers())))

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        """Forget revoked partitions: their new owner commits them from now on."""
        log.info("revoked %s", [p.partition for p in partitions])
        for p in partitions:
            self._last_offsets.pop((p.topic, p.partition), None)

    # -- one batch ----------------------------------------------------------------------------------

    def _process(self, consumer: Consumer, producer: Producer, messages: list[Message]) -> None:
        from confluent_kafka import KafkaError

        started = time.perf_counter()
        by_partition: dict[int, list[Message]] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise BrokerUnavailable(f"scorer consumer: {err.str()}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("scorer consumer error (retrying): %s", err.str())
                continue
            by_partition.setdefault(cast(int, m.partition()), []).append(m)
        if not by_partition:
            return
        try:
            self._score_and_deliver(consumer, producer, by_partition, started)
            self._failures = 0
        except Exception as exc:
            if _fatal(exc):  # e.g. fenced by a newer member with the same transactional.id: a zombie
                raise BrokerUnavailable(f"scorer producer failed for good, stopping: {exc}") from exc
            # Give the batch back to Kafka: rewind and let the loop consume it again, so no event is
            # skipped. Only what was never acknowledged is produced again (exactly-once: the transaction
            # was aborted, so nothing of it is visible).
            self._failures += 1
            log.warning("batch of %d failed (%s); rewinding, retry %d", len(messages), exc, self._failures)
            if self._failures in (3, 20) or self._failures % 100 == 0:
                self._alert("scorer_failing", f"scoring keeps failing ({self._failures} retries of one batch): {exc}")
            self._rewind(consumer, by_partition)
            self.stopping.wait(min(0.5 * 2 ** self._failures, 10))

    def _alert(self, kind: str, message: str) -> None:
        """Alerts from the scoring loop go out on a thread of their own: delivery may take seconds."""
        from flywheel.alerts import alert

        threading.Thread(target=alert, args=(kind, self.spec.name, message), daemon=True,
                         name="scorer-alert").start()

    def _rewind(self, consumer: Consumer, by_partition: dict[int, list[Message]]) -> None:
        from confluent_kafka import TopicPartition

        for partition, batch in by_partition.items():
            try:
                consumer.seek(TopicPartition(self.spec.topics.features, partition, cast(int, batch[0].offset())))
            except Exception as exc:  # revoked meanwhile: its new owner resumes from the committed offset
                log.info("partition %d not rewound (%s)", partition, exc)

    def _score(self, partition: int, batch: list[Message]) -> ScoredBatch:
        """The pure core over one partition's messages. A record that made it raise is dead-lettered like
        any rejected one, even when every record of the batch did: retrying input that fails alone would
        stall the partition for good (a model that fails on everything is refused before it serves)."""
        model = self.model
        assert model is not None
        headers = cast("list[Headers | None]", [m.headers() for m in batch])
        raw = RawBatch(self.spec.topics.features, partition, [m.value() for m in batch],
                       cast("list[int]", [m.offset() for m in batch]), [m.timestamp()[1] for m in batch],
                       [m.key() for m in batch], headers=headers if any(headers) else None)
        scored = score_batch(self.spec, self.schema, raw, model)
        if scored.internal_errors:
            self.metrics.internal_errors += scored.internal_errors
            self._alert("internal_error", f"{scored.internal_errors} record(s) of partition {partition} made scoring raise; "
                        f"dead-lettered as internal_error: {scored.rejected[0].detail}")
        return scored

    def _score_and_deliver(self, consumer: Consumer, producer: Producer, by_partition: dict[int, list[Message]],
                           started: float) -> None:
        from confluent_kafka import TopicPartition

        topic = self.spec.topics.features
        errors = self._delivery_errors
        errors.clear()
        self._undelivered.clear()
        eos = self.options.exactly_once
        results = {p: self._score(p, batch) for p, batch in by_partition.items()}
        consumed = sum(map(len, by_partition.values()))
        if eos:
            producer.begin_transaction()
        try:
            for partition, scored in results.items():
                self._produce_predictions(producer, scored)
                produce_dead_letters(producer, "scorer", topic, partition, scored.rejected)
            offsets = [TopicPartition(topic, p, cast(int, batch[-1].offset()) + 1) for p, batch in by_partition.items()]
            if eos:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(),
                                                     self.settings.broker_timeout_s)
                producer.commit_transaction(self.settings.broker_timeout_s * 3)
            else:
                self._flush_until_acknowledged(producer)
                # Every prediction of the batch is acknowledged: committing asynchronously keeps
                # at-least-once (a lost commit only means a batch is scored again) without a round trip.
                consumer.commit(offsets=offsets, asynchronous=True)
                self._last_offsets.update({(o.topic, o.partition): o for o in offsets})
        except Exception:
            if eos:
                try:
                    producer.abort_transaction(self.settings.broker_timeout_s)
                except Exception as abort_error:  # the original error is what matters
                    log.warning("abort_transaction failed: %s", abort_error)
            raise
        scored_n = sum(len(r.values) for r in results.values())
        dead = sum(len(r.rejected) for r in results.values())
        e2e = np.concatenate([int(time.time() * 1000) - r.source_ms for r in results.values()])
        self.metrics.record_batch(consumed, scored_n, dead, (time.perf_counter() - started) * 1000, e2e,
                                  predictor=self.model.predictor if self.model else "plain")

    def _flush_until_acknowledged(self, producer: Producer) -> None:
        """Wait until the broker acknowledged every message of the batch. A message it refused is produced
        again, alone; one that is still queued is waited for, never produced twice. So a broker that
        comes back after a blip gets each prediction once. Bounded by max.poll.interval.ms (half of
        it): past that the batch is given back to Kafka as a whole."""
        deadline = time.monotonic() + 150
        attempt = 0
        while True:
            remaining = producer.flush(self.settings.broker_timeout_s)
            failed, self._undelivered[:] = list(self._undelivered), []
            if not remaining and not failed:
                return
            if time.monotonic() > deadline or self.stopping.is_set():
                raise BrokerUnavailable(f"{remaining} messages unacknowledged, {len(failed)} refused; "
                                        f"errors {self._delivery_errors[:3]}")
            attempt += 1
            log.warning("%d messages unacknowledged, %d refused (%s); retry %d", remaining, len(failed),
                        self._delivery_errors[-1:] or "timeout", attempt)
            self.stopping.wait(min(0.5 * 2 ** attempt, 10))
            for topic, value, key, headers in failed:
                _produce(producer, topic, value, key, headers)

    def _produce_predictions(self, producer: Producer, scored: ScoredBatch) -> None:
        topic = self.spec.topics.predictions
        produce = producer.produce
        for payload, key in zip(scored.values, scored.keys, strict=True):
            try:
                produce(topic, payload, key)
            except BufferError:  # the local queue is full: let librdkafka send, then go on
                _produce(producer, topic, payload, key, None)


def _produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=cast(Any, headers))
            return
        except BufferError:
            producer.poll(0.05)


def _fatal(exc: BaseException) -> bool:
    from confluent_kafka import KafkaError, KafkaException

    if not isinstance(exc, KafkaException) or not exc.args or not isinstance(exc.args[0], KafkaError):
        return False
    err = exc.args[0]
    return err.fatal() or err.code() in (KafkaError._FATAL, KafkaError._FENCED)


def run_scorer(settings: Settings, spec: ModelSpec, options: ScorerOptions, *, handle_signals: bool = True,
               max_events: int | None = None, max_seconds: float | None = None) -> ScorerMetrics:
    scorer = Scorer(settings, spec, options)
    if handle_signals:
        scorer.install_signal_handlers()
    return scorer.run(max_events=max_events, max_seconds=max_seconds)

