"""The scorer on the real broker: waits for a champion, scores every event, swaps, dead-letters bad input."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.scoring.service import Scorer, ScorerOptions
from flywheel.training import pipeline

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.mark.parametrize("exactly_once", [False, True])
def test_every_event_scored_and_bad_ones_dead_lettered(champion_env, read_all, exactly_once):
    """``champion_env`` and ``read_all`` come from this folder's conftest."""
    env = champion_env()
    scorer = Scorer(env.settings, env.spec, ScorerOptions(exactly_once=exactly_once, metrics_interval_s=1,
                                                          poll_interval_s=1))
    live = [e.features for e in event_stream(3000, start=START + timedelta(days=1), prefix="live")]
    total = 6000 + len(live) + 2  # a new group starts at the earliest offset: history is scored too
    thread = threading.Thread(target=scorer.run, kwargs={"max_events": total, "max_seconds": 120})
    thread.start()
    env.produce_json(env.spec.topics.features, live[:1500])
    env.produce(env.spec.topics.features, [b"{oops", orjson.dumps({"event_id": "x", "amount": "NaN?"})])
    env.produce_json(env.spec.topics.features, live[1500:])
    thread.join(150)
    assert not thread.is_alive()
    predictions = [orjson.loads(m.value()) for m in read_all(env.settings.kafka_bootstrap, env.spec.topics.predictions)]
    ids = [p["event_id"] for p in predictions]
    assert set(ids) == {e["event_id"] for e in live} | {f"e{i}" for i in range(6000)}
    if exactly_once:
        assert len(ids) == len(set(ids)) == 6000 + len(live)
    assert {p["model_version"] for p in predictions} == {"1"}
    assert all(0 <= p["score"] <= 1 and p["decision"] == (p["score"] >= env.spec.scoring.threshold) for p in predictions)
    dlq = read_all(env.settings.kafka_bootstrap, f"{env.spec.topics.features}.dlq")
    reasons = sorted(dict(m.headers())["flywheel.reason"].decode() for m in dlq
                     if dict(m.headers()).get("flywheel.stage") == b"scorer")
    assert reasons == ["missing_field", "not_json"] or reasons == ["not_json", "wrong_type"]
    assert scorer.metrics.scored >= 6000 + len(live) and scorer.metrics.dead_lettered == 2


def test_scorer_waits_for_a_champion_then_starts(make_env):
    env = make_env()
    scorer = Scorer(env.settings, env.spec, ScorerOptions(poll_interval_s=0.5))
    thread = threading.Thread(target=scorer.run, kwargs={"max_events": 100, "max_seconds": 120})
    thread.start()
    time.sleep(2)
    assert scorer.model is None and thread.is_alive()
    events = list(event_stream(6000, start=START, rate_per_s=2, seed=5))
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events])
    drain_topic(env.settings, env.spec.topics.features)
    drain_topic(env.settings, env.spec.topics.labels)
    trained = pipeline.train_challenger(env.settings, env.spec, as_of=START + timedelta(hours=2))
    pipeline.validate_challenger(env.settings, env.spec, trained["version"])
    pipeline.promote_or_reject(env.settings, env.spec, trained["version"])
    thread.join(120)
    assert scorer.model is not None and scorer.model.version == 1
    assert scorer.metrics.scored >= 100
