"""Live scorer metrics: logged and published to ``flywheel.metrics`` so monitoring can react via Kafka."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger(__name__)


@dataclass
class ScorerMetrics:
    model: str
    member: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    consumed: int = 0
    scored: int = 0
    dead_lettered: int = 0
    #: Records that made scoring raise, isolated and dead-lettered (``internal_error``): each one a bug.
    internal_errors: int = 0
    swaps: int = 0
    refused: int = 0
    batches: int = 0
    model_version: int | None = None
    #: Which code scores now, ``plain`` (LightGBM) or ``compiled`` (lleaves), and how much each scored.
    predictor: str | None = None
    scored_by: dict[str, int] = field(default_factory=dict)
    #: Switches to another predictor of the same version (plain -> compiled), apart from version swaps.
    predictor_switches: int = 0
    compile_failures: int = 0
    _window_started: float = field(default_factory=time.monotonic)
    _window_scored: int = 0
    _batch_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    _e2e_ms: deque[float] = field(default_factory=lambda: deque(maxlen=20000))

    def record_batch(self, consumed: int, scored: int, dead: int, batch_ms: float, e2e_ms: np.ndarray,
                     predictor: str = "plain") -> None:
        self.consumed += consumed
        self.scored += scored
        self.scored_by[predictor] = self.scored_by.get(predictor, 0) + scored
        self.dead_lettered += dead
        self.batches += 1
        self._window_scored += scored
        self._batch_ms.append(batch_ms)
        self._e2e_ms.extend(e2e_ms.tolist())

    def snapshot(self) -> dict[str, Any]:
        """Figures since the last snapshot (rates, percentiles) plus running totals."""
        elapsed = max(time.monotonic() - self._window_started, 1e-9)
        e2e = np.asarray(self._e2e_ms) if self._e2e_ms else np.asarray([np.nan])
        batch = np.asarray(self._batch_ms) if self._batch_ms else np.asarray([np.nan])

        def pct(values: np.ndarray, q: float) -> float | None:  # None, not NaN: JSON has no NaN
            value = float(np.nanpercentile(values, q)) if np.isfinite(values).any() else float("nan")
            return round(value, 2) if np.isfinite(value) else None
        snap = {
            "kind": "scorer", "model": self.model, "member": self.member, "model_version": self.model_version,
            "at": time.time(), "events_per_s": round(self._window_scored / elapsed, 1),
            "e2e_ms_p50": pct(e2e, 50), "e2e_ms_p99": pct(e2e, 99),
            "batch_ms_p50": pct(batch, 50), "batch_ms_p99": pct(batch, 99),
            "consumed": self.consumed, "scored": self.scored, "dead_lettered": self.dead_lettered,
            "internal_errors": self.internal_errors,
            "swaps": self.swaps, "refused": self.refused, "batches": self.batches,
            "predictor": self.predictor, "scored_plain": self.scored_by.get("plain", 0),
            "scored_compiled": self.scored_by.get("compiled", 0), "predictor_switches": self.predictor_switches,
            "compile_failures": self.compile_failures,
        }
        self._window_started, self._window_scored = time.monotonic(), 0
        self._batch_ms.clear()
        self._e2e_ms.clear()
        return snap

    def publish(self, producer: Producer, topic: str) -> dict[str, Any]:
        snap = self.snapshot()
        log.info("scorer %s v%s (%s): %.0f ev/s, e2e p50 %s ms p99 %s ms, scored %d, dlq %d, swaps %d",
                 self.model, self.model_version, self.predictor, snap["events_per_s"], snap["e2e_ms_p50"],
                 snap["e2e_ms_p99"], self.scored, self.dead_lettered, self.swaps)
        try:
            producer.produce(topic, key=self.model.encode(), value=json.dumps(snap).encode())
        except Exception as exc:  # metrics must never stop scoring
            log.warning("could not publish metrics to %s: %s", topic, exc)
        return snap
