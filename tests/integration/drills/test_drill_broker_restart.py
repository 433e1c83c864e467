"""Drill: the Kafka broker goes away in the middle of a drain, and in the middle of scoring.

Both run on the drills' own broker (``drill_broker``), which comes back on the same port with the same
data dir, as a restarted broker does. The drain's broker is killed (SIGKILL, no controlled shutdown)
while the drain is mid-run; the scorer's broker is stopped and started (``kafka.sh down`` / ``up``)
while a live stream is being scored. Afterwards the loop completes: every offset is drained exactly
once, every event has a prediction.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Producer
from flywheel.demo.generator import event_stream
from flywheel.demo.observe import PredictionCollector
from flywheel.demo.stream import LiveStream, Sent
from flywheel.drain import drain_topic
from flywheel.drain.reader import read_topic
from flywheel.errors import BrokerUnavailable
from flywheel.kafka_config import client_config

from tests.integration.drain.test_drain_failures import _ledger, _watermarks, assert_exactly_once
from tests.integration.drills.conftest import SHORT_SESSION, clock_offset
from tests.integration.scoring.conftest import START, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.drill]

N_DRAIN = 3000
#: Small chunks, so the drain commits many of them and the crash lands between two.
FLUSH_ROWS = 40
#: A consumer that fetches little at a time, so the drain still needs the broker when it dies (with the
#: defaults it would have fetched the whole topic into memory in its first round trip).
SLOW_FETCH = {"queued.max.messages.kbytes": "24", "max.partition.fetch.bytes": "4096"}
#: Seconds without an answer before the drain gives up on the broker with BrokerUnavailable.
DRAIN_BROKER_TIMEOUT_S = 3.0
#: The drain's owner is stable across runs, as an Airflow task's is (airflow:<dag>:<task>).
OWNER = "drill:feature_drain:drain_features"
#: How long past its broker_timeout_s a drain may take to fail when the broker is gone.
GIVE_UP_MARGIN_S = 7.0


def _manifests(env: Any, topic: str) -> int:
    return sum(len(chain) for chain in _ledger(env.store, topic)[1].values())


class DrainHangs(AssertionError):
    """The drain did not give up on a dead broker by itself."""


def test_broker_crash_in_the_middle_of_a_drain(drill_broker, fresh_env):
    env = fresh_env(drill_broker.bootstrap)
    topic = env.spec.topics.features
    events = [e.features for e in event_stream(N_DRAIN, start=START, rate_per_s=2, seed=3, prefix="drain-")]
    env.produce_json(topic, events)
    ids = [e["event_id"] for e in events]
    drain_settings = env.settings.with_overrides(kafka_config=SLOW_FETCH, broker_timeout_s=DRAIN_BROKER_TIMEOUT_S)

    outcome: dict[str, Any] = {}

    def first_run() -> None:
        try:
            outcome["summary"] = drain_topic(drain_settings, topic, owner=OWNER, flush_rows=FLUSH_ROWS)
        except Exception as exc:  # what the task would report
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=first_run, daemon=True, name="drill-drain")
    thread.start()
    wait_until(lambda: _manifests(env, topic) >= 3 or not thread.is_alive(), 60, "the drain's first chunks")
    assert thread.is_alive(), f"the drain finished before the broker could be killed under it: {outcome}"
    drill_broker.crash()
    crashed_at = time.monotonic()
    committed_at_crash = _manifests(env, topic)
    # The broker stays away long enough for the drain to give up on it (its broker_timeout_s, and a margin).
    thread.join(DRAIN_BROKER_TIMEOUT_S + GIVE_UP_MARGIN_S)
    gave_up_while_down = not thread.is_alive()
    drill_broker.start()
    restarted_at = time.monotonic()
    thread.join(60)
    assert not thread.is_alive(), "the drain still runs a minute after the broker came back"
    error = outcome.get("error")
    assert isinstance(error, BrokerUnavailable), f"expected a clear BrokerUnavailable, got {outcome}"
    rows_before = sum(m.rows for chain in _ledger(env.store, topic)[1].values() for m in chain)
    assert 0 < rows_before < N_DRAIN, "the crash did not land in the middle of the drain"

    # The next runs (the schedule, or the task's retry) pick up where the ledger says and catch up.
    runs = []
    for _ in range(5):
        runs.append(drain_topic(env.settings, topic, owner=OWNER, flush_rows=FLUSH_ROWS))
        if {int(p): o for p, o in runs[-1]["partitions"].items()} == _watermarks(env.settings, topic):
            break
    assert_exactly_once(env, topic, ids)
    assert rows_before + sum(r["rows"] for r in runs) == N_DRAIN
    print(f"\nbroker killed with {committed_at_crash} chunks committed; the first run ended "
          f"{outcome['ended'] - crashed_at:.1f}s later ({type(error).__name__}: {error}); {len(runs)} rerun(s) "
          f"drained the remaining {N_DRAIN - rows_before} of {N_DRAIN} rows, every offset once")
    if not gave_up_while_down:
        raise DrainHangs(
            f"the drain raised BrokerUnavailable only {outcome['ended'] - restarted_at:.1f}s after the broker was "
            f"back, {outcome['ended'] - crashed_at:.0f}s after it died (broker_timeout_s={DRAIN_BROKER_TIMEOUT_S:g}): "
            "it hung on the dead broker")


def test_broker_restarted_while_scoring(drill_broker, drill_env, start_loop_scorer):
    env = drill_env(drill_broker.bootstrap, broker_timeout_s=5.0)
    spec = env.spec
    scorer = start_loop_scorer(env, "scorer", extra_env=SHORT_SESSION)
    scorer.wait_serving(1)
    scorer.wait_assigned()
    collector = PredictionCollector(env.settings, spec.topics.predictions, spec.key_field, dict.fromkeys(range(4), 0))
    collector.start()
    producer = Producer(client_config(env.settings, "producer", linger_ms=20))
    sent = Sent()
    stream = LiveStream(producer, spec, sent, rate=250, seed=21, prefix="restart-", clock_offset=clock_offset(env))
    try:
        stream.start()
        stream.wait_for("live", 300, 60, _alive(scorer))
        wait_until(lambda: len(collector.predictions) >= 300, 60, "the first 300 predictions")
        away = drill_broker.restart()
        stream.switch("after-restart")
        stream.wait_for("after-restart", 300, 120, _alive(scorer))
        stream.stop()
        assert stream.error is None, stream.error
        missing = collector.wait_scored(list(sent.phase_of), 120)
    finally:
        if stream.is_alive():
            stream.stop()
        collector.stop()
    assert not missing, f"{len(missing)} events got no prediction after the broker restart, e.g. {missing[:5]}"
    assert scorer.alive(), "the scorer died with the broker"
    assert set(collector.predictions) == set(sent.phase_of), "predictions for events that were never sent"
    assert {p.version for p in collector.predictions.values()} == {1}
    duplicates = sum(p.copies - 1 for p in collector.predictions.values())

    # The loop completes: the stream (features and labels) drains exactly once. The idempotent producer
    # retried across the restart without writing any event twice.
    for topic, key in ((spec.topics.features, spec.key_field), (spec.topics.labels, spec.label_key_field)):
        drain_topic(env.settings, topic)
        table = read_topic(env.store, topic, columns=[key])
        drained = table.column(key).to_pylist()
        assert len(drained) == len(set(drained)) == len(sent.phase_of), topic
        assert set(drained) == set(sent.phase_of), topic
    print(f"\nbroker away {away:.1f}s while scoring: {len(sent.phase_of)} events, all scored "
          f"({duplicates} repeated predictions, at least once), all drained once")


def _alive(scorer: Any):
    def check() -> None:
        if not scorer.alive():
            pytest.fail(f"the scorer exited with {scorer.process.returncode}:\n{scorer.log()[-3000:]}")

    return check
