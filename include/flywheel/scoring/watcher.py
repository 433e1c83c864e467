"""Watches for a new champion and prepares it off the scoring thread.

Two sources, so a swap happens fast and is never missed: the compacted ``flywheel.model-events``
topic (seconds after a promotion) and, as a fallback, a poll of the champion pointer in the store.
An event is only a wake-up call: the pointer is re-read from the store, the source of truth, so a
late or replayed event can never swap an old version back in. A new version is loaded and verified
in this background thread; the scoring loop only picks up a
ready model between two batches, so no event is scored half by one model and half by another.

With ``compile_model`` the verified plain model is offered at once (a swap must not wait seconds for a
compile), and a ``CompileJob`` on a thread of its own then prepares the compiled predictor of the same
version, offered the same way when it is ready. A compile that fails leaves the plain model serving;
one overtaken by a newer version is cancelled, and its result is never offered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.kafka_config import client_config
from flywheel.models.store import ModelStore
from flywheel.scoring.compiler import CompileCancelled, CompileFailed, CompileJob, default_cache_dir
from flywheel.scoring.model import ModelRefused, ServingModel, load_serving_model
from flywheel.settings import Settings
from flywheel.specs import ModelSpec

if TYPE_CHECKING:
    from confluent_kafka import Consumer
    from confluent_kafka.admin import ClusterMetadata

log = logging.getLogger(__name__)


class ChampionWatcher(threading.Thread):
    def __init__(self, settings: Settings, spec: ModelSpec, *, compile_model: bool = False,
                 poll_interval_s: float = 10.0, cache_dir: Path | None = None) -> None:
        super().__init__(name=f"champion-watcher-{spec.name}", daemon=True)
        self.settings, self.spec = settings, spec
        self.models = ModelStore(settings.open_store())
        self.compile_model, self.poll_interval_s, self.cache_dir = compile_model, poll_interval_s, cache_dir
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._pending: ServingModel | None = None
        self.current_version: int | None = None
        #: version -> why it was refused; a refused version is not retried until it is announced again.
        self.refused: dict[int, str] = {}
        #: version -> why no compiled predictor could be made for it (the plain model serves it).
        self.compile_failed: dict[int, str] = {}
        self.last_event_at: float | None = None
        self._compile_job: CompileJob | None = None

    # -- the scoring loop's side ----------------------------------------------------------------------

    def take_ready(self) -> ServingModel | None:
        """The verified model waiting to be swapped in, if any (called between batches)."""
        with self._lock:
            model, self._pending = self._pending, None
            if model is not None:
                self.current_version = model.version
        return model

    def stop(self) -> None:
        self._stop_event.set()
        job = self._compile_job
        if job is not None:
            job.cancel()

    # -- the background side --------------------------------------------------------------------------

    def _offer(self, version: int, source: str) -> None:
        if version == self.current_version or version in self.refused:
            return
        with self._lock:
            if self._pending is not None and self._pending.version == version:
                return
        log.info("%s: champion v%d announced by %s; loading", self.spec.name, version, source)
        try:
            model = load_serving_model(self.models, self.spec, version)  # plain: compiled later, off this path
        except ModelRefused as exc:
            self.refused[version] = str(exc)
            log.error("%s: refused v%d, still serving v%s: %s", self.spec.name, version, self.current_version, exc)
            from flywheel.alerts import alert

            # Delivery takes seconds (Airflow connections, SMTP, Slack): never on the thread that swaps.
            threading.Thread(target=alert, args=("rejected", self.spec.name, f"scorer refused v{version}: {exc}"),
                             name="scorer-alert", daemon=True).start()
            return
        except Exception as exc:  # the store failed, not the model: try again later
            log.warning("%s: could not load v%d (%s); trying again on the next poll or event", self.spec.name,
                        version, exc)
            return
        with self._lock:
            self._pending = model
        if self.compile_model:
            self._compile_later(model)

    # -- the compiled predictor -------------------------------------------------------------------------

    def _compile_later(self, model: ServingModel) -> None:
        """Start preparing ``model``'s compiled predictor; a job still busy with an older version is cancelled."""
        previous = self._compile_job
        if previous is not None:
            previous.cancel()
        job = CompileJob(model, self.cache_dir or default_cache_dir())
        self._compile_job = job
        threading.Thread(target=self._compile, args=(job,), name=f"compile-{self.spec.name}-v{model.version}",
                         daemon=True).start()

    def _compile(self, job: CompileJob) -> None:
        try:
            compiled = job.run()
        except CompileCancelled:
            return
        except CompileFailed as exc:
            self._compile_failed(job.version, str(exc))
            return
        except Exception as exc:  # whatever lleaves or LLVM raised: still no reason to stop scoring
            log.exception("compiling v%d failed unexpectedly", job.version)
            self._compile_failed(job.version, f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            # Only for the version that serves, or waits to: a newer one may have arrived meanwhile.
            if self._pending is not None:
                if self._pending.version != compiled.version:
                    return
            elif self.current_version != compiled.version:
                return
            self._pending = compiled

    def _compile_failed(self, version: int, reason: str) -> None:
        self.compile_failed[version] = reason
        log.error("%s: no compiled predictor for v%d, the plain model keeps serving it: %s", self.spec.name,
                  version, reason)

    def poll_store(self) -> None:
        try:
            champion = self.models.champion(self.spec.name)
        except Exception as exc:  # store away for a while: keep serving, try again later
            log.warning("%s: cannot read the champion pointer: %s", self.spec.name, exc)
            return
        if champion is not None:
            self._offer(champion.version, "the store")

    def _events_consumer(self) -> Consumer:
        from confluent_kafka import OFFSET_END, Consumer, TopicPartition

        consumer = Consumer(client_config(
            self.settings, "consumer", **{"group.id": f"{self.settings.group_prefix}-watcher-{self.spec.name}",
                                          "enable.partition.eof": False}))
        try:
            metadata: ClusterMetadata = consumer.list_topics(self.settings.model_events_topic,
                                                             timeout=self.settings.broker_timeout_s)
            partitions = sorted(metadata.topics[self.settings.model_events_topic].partitions)
        except Exception:
            partitions = [0]
        if not partitions:  # the topic does not exist yet: the first promotion creates it
            consumer.close()
            raise LookupError(f"{self.settings.model_events_topic} does not exist yet")
        # Only new events matter: the current champion is read from the store at start.
        consumer.assign([TopicPartition(self.settings.model_events_topic, p, OFFSET_END) for p in partitions])
        return consumer

    def run(self) -> None:
        consumer: Consumer | None = None
        next_poll = 0.0
        try:
            while not self._stop_event.is_set():
                if time.monotonic() >= next_poll:
                    self.poll_store()
                    next_poll = time.monotonic() + self.poll_interval_s
                if consumer is None:
                    try:
                        consumer = self._events_consumer()
                    except Exception as exc:
                        log.warning("%s: model events unavailable (%s); polling the store", self.spec.name, exc)
                        self._stop_event.wait(min(self.poll_interval_s, 1.0))
                        continue
                    self.poll_store()  # whatever was announced before the consumer was there
                message = consumer.poll(0.5)
                if message is None or message.error() or message.key() != self.spec.name.encode():
                    continue
                value = message.value()  # None for a tombstone: unreadable, but still a reason to look
                try:
                    event = json.loads(value) if value is not None else None
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    action = event.get("action", "promote")
                    version = event.get("version")
                    if isinstance(version, int):
                        self.refused.pop(version, None)  # announced again: worth another try
                else:
                    action = "an unreadable event"
                self.last_event_at = time.time()
                log.info("%s: model event (%s) on %s; checking the champion", self.spec.name, action,
                         self.settings.model_events_topic)
                self.poll_store()
        finally:
            if consumer is not None:
                consumer.close()
