"""The scorer's delivery guarantees under change and failure, on the real broker.

Every event gets exactly one prediction (``--exactly-once``, as a read_committed consumer sees the
predictions topic) or at least one (default) across a model swap, a graceful restart, a SIGKILL while
events flow, and a second member joining the group; a bad model is refused while scoring goes on with
the current one. The compiled predictor has its own tests (test_scorer_compiled.py).

Each test starts from a copy of one prepared champion (see conftest: v1 is the champion, v2 a trained
candidate) on fresh topics, and produces live events at a steady rate while it changes something.
Kill and restart tests run ``python -m flywheel score`` as real processes.

Five tests pin down scorer bugs found while writing these and fail until they are fixed: a model-events
topic created after the scorer started is never watched; a fenced exactly-once member keeps its
partitions; idle metrics are not JSON (NaN); a version refused on a store hiccup stays refused when
announced again; a slow alert channel holds up the next swap. Their docstrings say what is expected.
"""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from dataclasses import replace
from itertools import pairwise
from typing import Any

import orjson
import pytest
from flywheel.errors import StoreUnavailable
from flywheel.models.events import publish_model_event
from flywheel.models.store import ModelStore
from flywheel.scoring.service import Scorer, ScorerOptions
from flywheel.training import pipeline

from tests.integration.scoring.conftest import (
    FirstArrival,
    SteadyProducer,
    committed_offsets,
    copy_version,
    end_offsets,
    force_champion,
    live_events,
    read_topic,
    run_in_thread,
    wait_until,
)

pytestmark = pytest.mark.integration
MODES = pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
#: "A swap takes effect within 2 s of the promotion event", plus one batch: the one being scored then
#: (its consume timeout, the spec's batch_timeout_ms, and its work, well under ONE_BATCH_WORK_MS here).
SWAP_BUDGET_MS = 2000
ONE_BATCH_WORK_MS = 250
#: A librdkafka consumer's session outlives a SIGKILL'd process by session.timeout.ms (45 s by default)
#: before its partitions move; the broker's minimum keeps the kill tests short.
SHORT_SESSION = {"FLYWHEEL_KAFKA__SESSION_TIMEOUT_MS": "6000", "FLYWHEEL_KAFKA__HEARTBEAT_INTERVAL_MS": "1000"}


def swap_budget_ms(env: Any) -> int:
    return SWAP_BUDGET_MS + env.spec.scoring.batch_timeout_ms + ONE_BATCH_WORK_MS


def scorer_group(env: Any) -> str:
    return f"{env.settings.group_prefix}-scorer-{env.spec.name}"


def assert_delivery(log: Any, ids: list[str], exactly_once: bool) -> None:
    """Every event has a prediction; in exactly-once mode, exactly one."""
    assert not log.missing(ids), f"{len(log.missing(ids))} events have no prediction, e.g. {sorted(log.missing(ids))[:5]}"
    assert set(log.by_id) == set(ids), "predictions for events that were never produced"
    if exactly_once:
        duplicated = log.duplicated()
        assert not duplicated, f"{len(duplicated)} events scored more than once, e.g. {list(duplicated.items())[:5]}"
        assert len(log.values) == len(ids)


def source_positions(env: Any) -> dict[str, tuple[int, int]]:
    """event id -> (partition, offset) in the features topic."""
    key = env.spec.key_field
    return {orjson.loads(m.value())[key]: (m.partition(), m.offset())
            for m in read_topic(env.settings.kafka_bootstrap, env.spec.topics.features)}


# -- 1. a model swap while scoring ------------------------------------------------------------------


@MODES
def test_swap_while_scoring_changes_version_at_one_point_and_loses_nothing(scoring_env, prediction_log, exactly_once):
    env = scoring_env()
    events = live_events(3000)
    ids = [e["event_id"] for e in events]
    # The store poll is pushed far out, so the swap below can only come from the promotion event.
    scorer = Scorer(env.settings, env.spec, ScorerOptions(exactly_once=exactly_once, poll_interval_s=300,
                                                          metrics_interval_s=1))
    thread = run_in_thread(scorer.run, max_seconds=120)
    try:
        wait_until(lambda: scorer.model is not None, 30, "the scorer to load champion v1")
        producer = SteadyProducer(env, events, rate_per_s=600)
        producer.start()
        log = prediction_log(env)
        wait_until(lambda: len(log.refresh(complete=False).by_id) >= 600, 30, "the first 600 predictions")
        assert pipeline.validate_challenger(env.settings, env.spec, 2)["passed"]
        outcome = pipeline.promote_or_reject(env.settings, env.spec, 2)
        assert outcome["status"] == "promoted" and outcome["previous"] == 1
        sent_at_promotion = producer.sent
        producer.finish()
        assert sent_at_promotion < len(events) - 600, "the promotion came too late to be mid-stream"
        log.wait_for(ids, 60)
    finally:
        scorer.stop()
        thread.join(30)
    assert not thread.is_alive()
    log.refresh()
    assert_delivery(log, ids, exactly_once)

    # Each prediction names its model; the version changes once, at one point in every partition.
    assert {p["model_version"] for p in log.values} == {"1", "2"}
    assert scorer.model.version == 2 and scorer.metrics.swaps == 1
    v1_last = max(p["scored_at_ms"] for p in log.values if p["model_version"] == "1")
    v2_first = min(p["scored_at_ms"] for p in log.values if p["model_version"] == "2")
    assert v1_last <= v2_first, "a v1 prediction was made after the first v2 prediction"
    by_partition: dict[int, list[tuple[int, set[int]]]] = defaultdict(list)
    for event_id, (partition, offset) in source_positions(env).items():
        by_partition[partition].append((offset, {int(p["model_version"]) for p in log.by_id[event_id]}))
    for partition, scored in by_partition.items():
        scored.sort()
        for (_, before), (offset, after) in pairwise(scored):
            assert max(before) <= min(after), f"partition {partition} offset {offset}: v{after} after v{before}"
        assert min(scored[0][1]) == 1 and max(scored[-1][1]) == 2, f"partition {partition} did not see the swap"

    # The swap takes effect within 2 s of the promotion event (its publish time on the topic).
    promotions = [m for m in read_topic(env.settings.kafka_bootstrap, env.settings.model_events_topic)
                  if orjson.loads(m.value())["version"] == 2]
    assert len(promotions) == 1
    published_ms = promotions[0].timestamp()[1]
    latency_ms = v2_first - published_ms
    print(f"\nswap latency ({'exactly-once' if exactly_once else 'at-least-once'}): promotion event -> first v2 "
          f"prediction {latency_ms} ms")
    assert 0 <= latency_ms < swap_budget_ms(env)


def test_swap_follows_the_event_when_the_events_topic_is_created_after_the_scorer_started(scoring_env,
                                                                                         prediction_log):
    """The first promotion creates ``flywheel.model-events`` (publish_model_event ensures it), and a
    scorer may well be running by then: it waits for its first champion. Its watcher must still see the
    events from then on; else every swap waits for the store poll (10 s by default), not 2 s."""
    env = scoring_env()
    late_topic = f"{env.spec.topics.features}-late.model-events"  # does not exist when the scorer starts
    env = replace(env, settings=env.settings.with_overrides(model_events_topic=late_topic))
    scorer = Scorer(env.settings, env.spec, ScorerOptions(poll_interval_s=300))
    thread = run_in_thread(scorer.run, max_seconds=60)
    try:
        wait_until(lambda: scorer.model is not None, 30, "the scorer to load champion v1")
        producer = SteadyProducer(env, live_events(3000), rate_per_s=500)
        producer.start()
        log = prediction_log(env)
        wait_until(lambda: len(log.refresh(complete=False).by_id) >= 300, 30, "the first 300 predictions")
        assert pipeline.validate_challenger(env.settings, env.spec, 2)["passed"]
        assert pipeline.promote_or_reject(env.settings, env.spec, 2)["status"] == "promoted"
        promoted = time.monotonic()
        deadline = promoted + swap_budget_ms(env) / 1000
        while time.monotonic() < deadline and scorer.model.version != 2:
            time.sleep(0.05)
        producer.halt()
        assert scorer.model.version == 2, (
            f"no swap {time.monotonic() - promoted:.1f}s after the promotion event on {late_topic}: the watcher "
            f"assigned its events consumer to no partition (the topic did not exist yet) and never looks again")
    finally:
        scorer.stop()
        thread.join(30)


# -- 2. a graceful restart --------------------------------------------------------------------------


@MODES
def test_sigterm_commits_and_exits_then_a_new_scorer_resumes(scoring_env, prediction_log, start_scorer, exactly_once):
    env = scoring_env()
    events = live_events(3000)
    ids = [e["event_id"] for e in events]
    first = start_scorer(env, exactly_once=exactly_once, label="first")
    first.wait_assigned()
    producer = SteadyProducer(env, events, rate_per_s=500)
    producer.start()
    log = prediction_log(env)
    wait_until(lambda: len(log.refresh(complete=False).by_id) >= 800, 30, "the first 800 predictions")

    took = first.terminate(timeout=10)
    assert first.proc.returncode == 0, first.log()[-3000:]
    assert took < 5, f"SIGTERM to exit took {took:.1f}s"
    before = first.summary()
    assert 0 < before["consumed"] < len(events)
    # It committed exactly what it consumed: the group starts from offset 0, so the committed offsets
    # add up to the events it consumed (no lag for the consumed part, nothing committed beyond it).
    committed = committed_offsets(env.settings, scorer_group(env), env.spec.topics.features)
    assert sum(max(o, 0) for o in committed.values()) == before["consumed"], committed
    log.refresh()
    assert len(log.values) == before["consumed"] == len(log.by_id), "predictions of the first scorer"

    second = start_scorer(env, exactly_once=exactly_once, label="second")
    producer.finish()
    log.wait_for(ids, 60)
    assert second.terminate(timeout=10) < 5 and second.proc.returncode == 0
    after = second.summary()
    log.refresh()
    # A graceful handover repeats nothing, in either mode.
    assert_delivery(log, ids, exactly_once=True)
    assert before["consumed"] + after["consumed"] == len(events)
    assert committed_offsets(env.settings, scorer_group(env), env.spec.topics.features) == \
        end_offsets(env.settings, env.spec.topics.features)


# -- 3. SIGKILL while events flow -------------------------------------------------------------------


@MODES
def test_sigkill_mid_batch_then_restart_loses_nothing(scoring_env, prediction_log, start_scorer, exactly_once):
    env = scoring_env()
    flowing, burst = live_events(2500), live_events(2500, prefix="burst", seed=12)
    ids = [e["event_id"] for e in flowing + burst]
    first = start_scorer(env, exactly_once=exactly_once, args=["--batch-size", "2500"], extra_env=SHORT_SESSION,
                         label="killed")
    first.wait_assigned()
    producer = SteadyProducer(env, flowing, rate_per_s=400)
    producer.start()
    log = prediction_log(env)
    wait_until(lambda: len(log.refresh(complete=False).by_id) >= 600, 30, "the first 600 predictions")
    # A burst on top of the flow keeps the scorer busy with big batches: the kill comes the moment the
    # first prediction of the burst reaches the broker, inside the batch that produced it.
    arrival = FirstArrival(env.settings, env.spec.topics.predictions)
    try:
        env.produce_json(env.spec.topics.features, burst)
        arrival.wait(30, match=lambda value: b'"burst' in value, alive=lambda: first.proc.poll() is None)
        first.kill()
    finally:
        arrival.close()
    assert producer.is_alive(), "events stopped flowing before the kill"
    committed_before = sum(max(o, 0) for o in committed_offsets(env.settings, scorer_group(env),
                                                                 env.spec.topics.features).values())
    assert 600 <= committed_before < len(ids), "the killed scorer should have committed its first batches"

    second = start_scorer(env, exactly_once=exactly_once, args=["--batch-size", "2500"], extra_env=SHORT_SESSION,
                          label="restarted")
    producer.finish()
    log = prediction_log(env)
    log.wait_for(ids, 90)
    assert second.terminate(timeout=10) < 5 and second.proc.returncode == 0
    log.refresh()
    assert_delivery(log, ids, exactly_once)
    restarted = second.summary()["consumed"]
    assert committed_before + restarted == len(ids), "the restart resumed from the committed offsets"
    # What the killed scorer had produced of its interrupted batch is repeated by the restarted one
    # (at-least-once), or was aborted and so is invisible to read_committed (exactly-once). The kill
    # usually lands inside a batch; when the batch's commit wins the race against the signal, there is
    # nothing to repeat or abort, and the guarantees above are all there is to check.
    everything = read_topic(env.settings.kafka_bootstrap, env.spec.topics.predictions, committed=False)
    extra = len(everything) - len(ids)
    print(f"\nSIGKILL after {committed_before} events committed: {extra} predictions of the interrupted batch "
          f"{'aborted' if exactly_once else 'repeated'}; the restarted scorer consumed {restarted}")
    assert extra >= 0
    if not exactly_once:
        assert len(log.duplicated()) == extra


# -- 4. a second member joins the group -------------------------------------------------------------


@MODES
def test_second_scorer_joining_shares_the_work(scoring_env, prediction_log, start_scorer, read_all, exactly_once):
    env = scoring_env()
    events = live_events(3000)
    ids = [e["event_id"] for e in events]
    a = start_scorer(env, exactly_once=exactly_once, member_id="a", label="a")
    a.wait_assigned()
    # The last 1000 events wait until the second member has its partitions, so both score some.
    producer = SteadyProducer(env, events, rate_per_s=500, hold_at=2000)
    producer.start()
    log = prediction_log(env)
    wait_until(lambda: len(log.refresh(complete=False).by_id) >= 300, 30, "the first 300 predictions")
    b = start_scorer(env, exactly_once=exactly_once, member_id="b", label="b")
    b.wait_assigned(60)
    joined_at = producer.sent
    producer.release()
    producer.finish()
    log.wait_for(ids, 60)
    for member in (a, b):
        assert member.terminate(timeout=10) < 5 and member.proc.returncode == 0
    log.refresh()
    assert_delivery(log, ids, exactly_once)
    summaries = {member.label: member.summary() for member in (a, b)}
    print(f"\nsecond member joined after {joined_at} events: {summaries}")
    assert all(s["scored"] > 0 for s in summaries.values()), summaries
    if exactly_once:
        assert sum(s["consumed"] for s in summaries.values()) == len(events), summaries
    # Both members report on the metrics topic, each under its own name (json: see the NaN test below).
    members = {json.loads(m.value())["member"] for m in read_all(env.settings.kafka_bootstrap,
                                                                 env.settings.metrics_topic)}
    assert len(members) == 2, members


def test_a_fenced_exactly_once_member_gives_its_partitions_up(scoring_env, prediction_log, start_scorer):
    """Two exactly-once members with the same --member-id (it defaults to "0") share a transactional.id:
    the second fences the first. The fenced one cannot produce any more; it must stop (and leave the
    group) so that its partitions move, not retry with a dead producer while holding them."""
    env = scoring_env()
    events = live_events(1500)
    ids = [e["event_id"] for e in events]
    a = start_scorer(env, exactly_once=True, label="a")
    a.wait_assigned()
    producer = SteadyProducer(env, events, rate_per_s=500, hold_at=750)
    producer.start()
    log = prediction_log(env)
    wait_until(lambda: len(log.refresh(complete=False).by_id) >= 300, 30, "the first 300 predictions")
    b = start_scorer(env, exactly_once=True, label="b")  # same member id "0": fences a
    b.wait_assigned(60)
    producer.release()
    producer.finish()
    wait_until(lambda: a.proc.poll() is not None, 15,
               lambda: "the fenced scorer to stop; it retries with a fenced producer and keeps its partitions:\n"
                       + "\n".join(line for line in a.log().splitlines() if "fenced" in line)[-1500:])
    assert a.proc.returncode != 0
    log.wait_for(ids, 30)
    assert b.terminate(timeout=10) < 5
    log.refresh()
    assert_delivery(log, ids, exactly_once=True)


def test_metrics_of_an_idle_scorer_are_valid_json(scoring_env, read_all):
    """``flywheel.metrics`` is for anything to consume; a window without events must still be JSON
    (RFC 8259 has no NaN), not ``"e2e_ms_p50": NaN`` that strict parsers (orjson, JSON.parse) reject."""
    env = scoring_env()
    scorer = Scorer(env.settings, env.spec, ScorerOptions(poll_interval_s=300, metrics_interval_s=0.2))
    scorer.run(max_seconds=1.5)  # no events at all
    messages = read_all(env.settings.kafka_bootstrap, env.settings.metrics_topic)
    assert messages, "the scorer published no metrics"
    for m in messages:
        try:
            snapshot = orjson.loads(m.value())
        except orjson.JSONDecodeError as exc:
            pytest.fail(f"metrics message is not JSON ({exc}): {m.value()[:300]!r}")
        assert snapshot["scored"] == 0 and snapshot["member"]


# -- 5. a bad model is refused while scoring continues -----------------------------------------------


def test_bad_models_are_refused_while_v1_keeps_scoring(scoring_env, prediction_log):
    env = scoring_env()
    name = env.spec.name
    models = ModelStore(env.store)
    events = live_events(3000)
    ids = [e["event_id"] for e in events]
    scorer = Scorer(env.settings, env.spec, ScorerOptions(poll_interval_s=300, metrics_interval_s=0.5))
    thread = run_in_thread(scorer.run, max_seconds=120)
    try:
        wait_until(lambda: scorer.model is not None, 30, "the scorer to load champion v1")
        producer = SteadyProducer(env, events, rate_per_s=400)
        producer.start()
        log = prediction_log(env)
        wait_until(lambda: len(log.refresh(complete=False).by_id) >= 400, 30, "the first 400 predictions")

        # v2 (a trained candidate) has its model file changed after it was written.
        key = models.version_key(name, 2, "model.txt")
        env.store.put(key, env.store.get(key).replace(b"learning_rate", b"learning_rat3"))
        force_champion(env, 2)
        wait_until(lambda: 2 in scorer.watcher.refused, 10, "v2 to be refused")
        assert "checksum mismatch" in scorer.watcher.refused[2]

        # v3: v1's model file, intact, but with a feature the spec does not have.
        schema = [dict(e, name="amount_eur") if e["name"] == "amount" else e
                  for e in models.get_version(name, 1).metadata["feature_schema"]]
        v3 = copy_version(env, 1, feature_schema=schema)
        force_champion(env, v3)
        wait_until(lambda: v3 in scorer.watcher.refused, 10, "v3 to be refused")
        assert "differ from the spec" in scorer.watcher.refused[v3]
        assert models.champion(name).version == v3  # the pointer says v3; the scorer still serves v1
        refused_at = producer.sent
        assert refused_at < len(events) - 400, "the refusals came too late to see scoring go on"
        wait_until(lambda: scorer.metrics.refused == 2, 5, "the refusals to show in the metrics")

        producer.finish()
        log.wait_for(ids, 60)
    finally:
        scorer.stop()
        thread.join(30)
    log.refresh()
    assert_delivery(log, ids, exactly_once=False)
    assert {p["model_version"] for p in log.values} == {"1"}
    assert scorer.model.version == 1 and scorer.metrics.swaps == 0
    assert sorted(scorer.watcher.refused) == [2, v3]


def test_a_champion_refused_on_a_store_hiccup_is_loaded_when_announced_again(scoring_env, prediction_log,
                                                                              monkeypatch):
    """The watcher keeps refused versions "not retried until announced again". A refusal caused by the
    store being briefly unavailable (an S3 timeout while reading model.txt) is no verdict on the model:
    once the store answers and the champion is announced again, the scorer must swap to it."""
    env = scoring_env()
    scorer = Scorer(env.settings, env.spec, ScorerOptions(poll_interval_s=300))
    thread = run_in_thread(scorer.run, max_seconds=60)
    try:
        wait_until(lambda: scorer.model is not None, 30, "the scorer to load champion v1")
        producer = SteadyProducer(env, live_events(3000), rate_per_s=500)
        producer.start()
        log = prediction_log(env)
        wait_until(lambda: len(log.refresh(complete=False).by_id) >= 300, 30, "the first 300 predictions")
        store = scorer.watcher.models.store
        real_get, failed = store.get, []

        def get_once_unavailable(key: str, *args: Any, **kwargs: Any) -> bytes:
            if key.endswith("/000002/model.txt") and not failed:
                failed.append(key)
                raise StoreUnavailable("simulated: the object store timed out")
            return real_get(key, *args, **kwargs)

        monkeypatch.setattr(store, "get", get_once_unavailable)
        # A refusal alert blocks the watcher for seconds (see the test below); not what this test is about.
        monkeypatch.setattr("flywheel.alerts.alert", lambda *args, **kwargs: {})
        assert pipeline.validate_challenger(env.settings, env.spec, 2)["passed"]
        assert pipeline.promote_or_reject(env.settings, env.spec, 2)["status"] == "promoted"
        # The watcher handles one thing at a time: the event below is read after this attempt failed.
        wait_until(lambda: failed, 10, "the watcher to try loading v2")

        models = ModelStore(env.store)  # the store answers again; the champion is announced again
        publish_model_event(env.settings, pipeline.model_event(models, env.spec.name, 2, "promote", 1, {}))
        announced = time.monotonic()
        deadline = announced + swap_budget_ms(env) / 1000
        while time.monotonic() < deadline and scorer.model.version != 2:
            time.sleep(0.05)
        producer.halt()
        assert scorer.model.version == 2, (
            f"still serving v{scorer.model.version} {time.monotonic() - announced:.1f}s after v2 was announced "
            f"again; v2 stays refused for good because of a transient store error: {scorer.watcher.refused.get(2)}")
    finally:
        scorer.stop()
        thread.join(30)


def test_a_refusal_does_not_hold_up_the_next_swap(scoring_env, prediction_log, start_scorer):
    """Right after a bad champion is refused, a good one is promoted (the fix, or a rollback): its swap
    must still take effect within 2 s of its event, even when an alert channel is slow. The refusal
    alert is delivered on the watcher's own thread, so a Slack webhook that does not answer (here: a
    local socket that accepts and stays silent) holds every later model event up for its timeout."""
    env = scoring_env()
    assert copy_version(env, 1) == 3  # a good model
    models = ModelStore(env.store)
    key = models.version_key(env.spec.name, 2, "model.txt")
    env.store.put(key, env.store.get(key).replace(b"learning_rate", b"learning_rat3"))
    silent_slack = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    webhook = f"http://127.0.0.1:{silent_slack.getsockname()[1]}/hooks/T000/B000/XXX"
    scorer = start_scorer(env, exactly_once=False, extra_env={
        "AIRFLOW_CONN_FLYWHEEL_SLACK": json.dumps({"conn_type": "slackwebhook", "password": webhook})})
    try:
        scorer.wait_assigned()
        producer = SteadyProducer(env, live_events(4000), rate_per_s=500)
        producer.start()
        log = prediction_log(env)
        wait_until(lambda: len(log.refresh(complete=False).by_id) >= 300, 30, "the first 300 predictions")
        force_champion(env, 2)
        wait_until(lambda: "refused v2" in scorer.log(), 10, "v2 to be refused")
        force_champion(env, 3)
        published_ms = [m for m in read_topic(env.settings.kafka_bootstrap, env.settings.model_events_topic)
                        if orjson.loads(m.value())["version"] == 3][0].timestamp()[1]
        budget_ms = swap_budget_ms(env)

        def first_v3() -> int | None:
            return min((p["scored_at_ms"] for p in log.refresh(complete=False).values
                        if p["model_version"] == "3"), default=None)

        wait_until(lambda: first_v3() or time.time() * 1000 > published_ms + budget_ms + 3000, 30,
                   "a v3 prediction")
        producer.halt()
    finally:
        silent_slack.close()
    first = first_v3()
    late = f"came {(first - published_ms) / 1000:.1f}s" if first else \
        f"had not come {time.time() - published_ms / 1000:.1f}s"
    assert first is not None and first - published_ms < budget_ms, (
        f"the first v3 prediction {late} after v3's promotion event: the watcher was still delivering the "
        f"alert about v2 to a Slack webhook that does not answer")
