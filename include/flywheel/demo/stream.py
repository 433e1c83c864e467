"""Sending the synthetic card-payment stream: a backfill of history, and a live stream at a steady rate.

Labels go to their own topic and arrive late, as they do in practice (a chargeback comes days after
the payment): the live stream holds each label back for ``label_lag_s`` seconds of wall time. A few
malformed events are mixed in so the drain's and the scorer's bad-event handling is always exercised.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import orjson

from flywheel.demo.generator import DemoEvent, make_event
from flywheel.kafka_config import produce_waiting
from flywheel.specs import ModelSpec

if TYPE_CHECKING:
    from confluent_kafka import Producer

MALFORMED = b'{"event_id": "broken", "amount": "lots"}'


@dataclass
class Sent:
    """What was sent, by event id: the ground truth the demo checks counts and live AUC against."""

    labels: dict[str, int] = field(default_factory=dict)
    phase_of: dict[str, str] = field(default_factory=dict)
    malformed: int = 0

    def ids(self, phase: str) -> list[str]:
        snapshot = dict(self.phase_of)  # one C-level copy: the stream thread may be adding to it
        return [i for i, p in snapshot.items() if p == phase]


def send_events(producer: Producer, spec: ModelSpec, events: Iterable[DemoEvent], sent: Sent, phase: str, *,
                bad_every: int = 0) -> int:
    """Features and labels of ``events`` as fast as the client takes them (the history backfill)."""
    assert spec.topics.labels is not None
    n = 0
    for n, event in enumerate(events, start=1):
        key = event.features["event_id"].encode()
        produce_waiting(producer, spec.topics.features, orjson.dumps(event.features), key)
        produce_waiting(producer, spec.topics.labels, orjson.dumps(event.label), key)
        sent.labels[event.features["event_id"]] = event.label["is_fraud"]
        sent.phase_of[event.features["event_id"]] = phase
        if bad_every and n % bad_every == 0:
            produce_waiting(producer, spec.topics.features, MALFORMED, b"bad")
            sent.malformed += 1
        if n % 5000 == 0:
            producer.poll(0)
    producer.flush(30)
    return n


def history(n: int, *, end: datetime, event_rate: float, seed: int, prefix: str) -> Iterable[DemoEvent]:
    """``n`` pre-drift events whose event times are spaced ``1/event_rate`` apart and end at ``end``."""
    rng = random.Random(seed)
    start = end - timedelta(seconds=n / event_rate)
    for i in range(n):
        yield make_event(rng, i, start + timedelta(seconds=i / event_rate), prefix=prefix)


class LiveStream(threading.Thread):
    """A steady stream at ``rate`` events/s until stopped; ``phase`` and ``drift`` can change on the fly.

    Event times are the wall clock minus ``clock_offset`` (see DemoPlan.clock_offset for why).
    """

    def __init__(self, producer: Producer, spec: ModelSpec, sent: Sent, *, rate: float, seed: int, prefix: str,
                 clock_offset: timedelta, label_lag_s: float = 2.0, bad_every: int = 0) -> None:
        super().__init__(name="demo-stream", daemon=True)
        self.producer, self.spec, self.sent = producer, spec, sent
        self.rate, self.prefix, self.clock_offset = rate, prefix, clock_offset
        self.label_lag_s, self.bad_every = label_lag_s, bad_every
        self.rng = random.Random(seed)
        self.phase = "live"
        self.drift = False
        self.count = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.drift_started_at: float | None = None  # wall clock of the first drifted event
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def switch(self, phase: str, *, drift: bool | None = None) -> None:
        with self._lock:
            self.phase = phase
            if drift is not None:
                self.drift = drift

    def stop(self) -> None:
        self._halt.set()
        self.join(60)

    def wait_for(self, phase: str, n: int, timeout_s: float, check: Callable[[], None] | None = None) -> None:
        """Block until ``n`` events of ``phase`` were sent."""
        deadline = time.monotonic() + timeout_s
        while self.counts[phase] < n:
            if self.error:
                raise RuntimeError(f"the demo stream failed: {self.error}")
            if check:
                check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.counts[phase]} of {n} {phase} events sent in {timeout_s:.0f}s")
            time.sleep(0.2)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced to the orchestrator by wait_for
            self.error = exc

    def _run(self) -> None:
        assert self.spec.topics.labels is not None
        pending: collections.deque[tuple[float, bytes, bytes]] = collections.deque()
        began = time.monotonic()
        while not self._halt.is_set():
            with self._lock:
                phase, drift = self.phase, self.drift
            now = time.time()
            if drift and self.drift_started_at is None:
                self.drift_started_at = now
            when = datetime.fromtimestamp(now, UTC) - self.clock_offset
            event = make_event(self.rng, self.count, when, drift=drift, prefix=f"{self.prefix}{phase}-")
            event_id = event.features["event_id"]
            key = event_id.encode()
            produce_waiting(self.producer, self.spec.topics.features, orjson.dumps(event.features), key)
            label = event.label | {"labelled_at": (when + timedelta(seconds=self.label_lag_s)).isoformat()}
            pending.append((now + self.label_lag_s, key, orjson.dumps(label)))
            self.sent.labels[event_id] = event.label["is_fraud"]
            self.sent.phase_of[event_id] = phase
            self.count += 1
            self.counts[phase] += 1
            if self.bad_every and self.count % self.bad_every == 0:
                produce_waiting(self.producer, self.spec.topics.features, MALFORMED, b"bad")
                self.sent.malformed += 1
            while pending and pending[0][0] <= now:
                _, k, v = pending.popleft()
                produce_waiting(self.producer, self.spec.topics.labels, v, k)
            self.producer.poll(0)
            ahead = self.count / self.rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
        for _, k, v in pending:  # the remaining labels "arrive" now
            produce_waiting(self.producer, self.spec.topics.labels, v, k)
        self.producer.flush(30)
