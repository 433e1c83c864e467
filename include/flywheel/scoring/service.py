"""The streaming scorer: one consumer-group member that embeds the champion and scores micro-batches.

Per batch: decode all events at once (the drain's vectorised decoder, so both agree on what a bad
event is), score the feature matrix in one call, produce one prediction per event, then commit the
consumed offsets, only after the broker acknowledged every prediction. In exactly-once mode the
predictions, dead letters and consumed offsets form one Kafka transaction. A failed batch is rewound
and retried, so an event is never skipped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from flywheel.events.decode import RawBatch, decode_batch
from flywheel.events.schema import topic_schemas
from flywheel.errors import BrokerUnavailable
from flywheel.features import to_matrix
from flywheel.kafka_config import client_config
from flywheel.scoring.metrics import ScorerMetrics
from flywheel.scoring.model import ServingModel
from flywheel.scoring.watcher import ChampionWatcher
from flywheel.settings import Settings
from flywheel.specs import ModelSpec

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
        self.dlq_topic = f"{spec.topics.features}.dlq"
        self.metrics = ScorerMetrics(spec.name)
        self.model: ServingModel | None = None
        self._failures = 0
        #: Delivery failures reported since the batch in hand started (the producer's one callback).
        self._delivery_errors: list[str] = []
        #: Latest committed position per partition, committed once more synchronously at shutdown.
        self._last_offsets: dict[tuple[str, int], Any] = {}
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

    def _clients(self) -> tuple[Any, Any, Any]:
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

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(err.str())

    def _revoked(self, partitions: list[Any]) -> None:
        """Forget revoked partitions: their new owner commits them from now on."""
        log.info("revoked %s", [p.partition for p in partitions])
        for p in partitions:
            self._last_offsets.pop((p.topic, p.partition), None)

    # -- one batch ----------------------------------------------------------------------------------

    def _process(self, consumer: Any, producer: Any, messages: list[Any]) -> None:
        from confluent_kafka import KafkaError

        started = time.perf_counter()
        by_partition: dict[int, list[Any]] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise BrokerUnavailable(f"scorer consumer: {err.str()}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("scorer consumer error (retrying): %s", err.str())
                continue
            by_partition.setdefault(m.partition(), []).append(m)
        if not by_partition:
            return
        try:
            self._score_and_deliver(consumer, producer, by_partition, started)
            self._failures = 0
        except Exception as exc:
            if _fatal(exc):  # e.g. fenced by a newer member with the same transactional.id: a zombie
                raise BrokerUnavailable(f"scorer producer failed for good, stopping: {exc}") from exc
            # Give the batch back to Kafka: rewind and let the loop consume it again, so no event is
            # skipped (at-least-once may then repeat a prediction; exactly-once aborted the transaction).
            self._failures += 1
            log.warning("batch of %d failed (%s); rewinding, retry %d", len(messages), exc, self._failures)
            self._rewind(consumer, by_partition)
            self.stopping.wait(min(0.5 * 2 ** self._failures, 10))

    def _rewind(self, consumer: Any, by_partition: dict[int, list[Any]]) -> None:
        from confluent_kafka import TopicPartition

        for partition, batch in by_partition.items():
            try:
                consumer.seek(TopicPartition(self.spec.topics.features, partition, batch[0].offset()))
            except Exception as exc:  # revoked meanwhile: its new owner resumes from the committed offset
                log.info("partition %d not rewound (%s)", partition, exc)

    def _score_and_deliver(self, consumer: Any, producer: Any, by_partition: dict[int, list[Any]],
                           started: float) -> None:
        from confluent_kafka import TopicPartition

        model = self.model
        assert model is not None
        topic = self.spec.topics.features
        errors = self._delivery_errors
        errors.clear()
        eos = self.options.exactly_once
        if eos:
            producer.begin_transaction()
        consumed = scored = dead = 0
        latencies = []
        try:
            for partition, batch in by_partition.items():
                raw = RawBatch(topic, partition, [m.value() for m in batch], [m.offset() for m in batch],
                               [m.timestamp()[1] for m in batch], [m.key() for m in batch])
                decoded = decode_batch(self.schema, raw, max_event_bytes=self.spec.drain.max_event_bytes)
                consumed += len(batch)
                table = decoded.table
                if table.num_rows:
                    X = to_matrix(table, model.schema)
                    scores = np.asarray(model.predict(X), dtype=np.float64)
                    now_ms = int(time.time() * 1000)
                    source_ms = table.column("_timestamp").cast("int64").to_numpy()
                    latencies.append(now_ms - source_ms)
                    self._produce_predictions(producer, table, scores, model.version, now_ms)
                    scored += table.num_rows
                if decoded.rejected:
                    headers_by_offset = {m.offset(): m.headers() or [] for m in batch}
                    for r in decoded.rejected:
                        producer.produce(self.dlq_topic, value=r.value, key=r.key,
                                         headers=[*headers_by_offset.get(r.offset, []),
                                                  ("flywheel.stage", b"scorer"),
                                                  ("flywheel.source.topic", topic.encode()),
                                                  ("flywheel.source.partition", str(partition).encode()),
                                                  ("flywheel.source.offset", str(r.offset).encode()),
                                                  ("flywheel.reason", r.reason.encode()),
                                                  ("flywheel.detail", r.detail.encode()[:1000])])
                    dead += len(decoded.rejected)
            offsets = [TopicPartition(topic, p, batch[-1].offset() + 1) for p, batch in by_partition.items()]
            if eos:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(),
                                                     self.settings.broker_timeout_s)
                producer.commit_transaction(self.settings.broker_timeout_s * 3)
            else:
                remaining = producer.flush(self.settings.broker_timeout_s)
                if remaining or errors:
                    raise BrokerUnavailable(f"{remaining} predictions unacknowledged; errors {errors[:3]}")
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
        e2e = np.concatenate(latencies) if latencies else np.empty(0)
        self.metrics.record_batch(consumed, scored, dead, (time.perf_counter() - started) * 1000, e2e,
                                  predictor=model.predictor)

    def _produce_predictions(self, producer: Any, table: Any, scores: np.ndarray, version: int, now_ms: int) -> None:
        """One prediction per event. Columns are converted in bulk (event times formatted by numpy), so
        the per-event Python work is one small dict, one orjson call and one produce."""
        key_field = self.spec.key_field
        time_field = self.spec.event_time_field
        ids = table.column(key_field).to_pylist()
        keys = table.column("_key").to_pylist()
        source_ms = table.column("_timestamp").cast("int64").to_pylist()
        times = _format_times(table.column(time_field)) if time_field else [None] * len(ids)
        decisions = (scores >= self.spec.scoring.threshold).tolist()
        topic = self.spec.topics.predictions
        version_s = str(version)
        produce = producer.produce
        dumps = orjson.dumps
        for i, score in enumerate(scores.tolist()):
            value = {key_field: ids[i], "score": score, "decision": decisions[i], "model_version": version_s,
                     "source_ts_ms": source_ms[i], "scored_at_ms": now_ms}
            if times[i] is not None:
                value[time_field] = times[i]  # type: ignore[index]
            payload = dumps(value)
            while True:
                try:
                    produce(topic, payload, keys[i])
                    break
                except BufferError:  # the local queue is full: let librdkafka send, then go on
                    producer.poll(0.05)


def _format_times(column: Any) -> list[str | None]:
    """Event times as ISO 8601 UTC strings with the column's sub-second digits ("...T00:00:00.010000Z"),
    as Arrow's ``strftime("%Y-%m-%dT%H:%M:%SZ")`` writes them. numpy does it ~5x faster (it was ~1 µs of
    the scorer's per-event cost); Arrow still does it for nulls and for other time zones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_timestamp(kind) and kind.tz in (None, "UTC", "+00:00", "Z") and not column.null_count:
        values = column.to_numpy() if isinstance(column, pa.Array) else column.combine_chunks().to_numpy()
        return np.datetime_as_string(values, unit=kind.unit, timezone="UTC").tolist()
    return pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ").to_pylist()


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

