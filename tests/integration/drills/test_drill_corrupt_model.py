"""Drill: a corrupt model file is promoted into the store by hand, past every gate.

Someone copies a version into the model store and moves the champion pointer to it by hand
(``ModelStore.set_champion``, then the model event), but the file is damaged: cut short by a failed
copy. The scorer serving v1 must refuse it and keep scoring every event with v1; then the loop must go
on: a rollback (``flywheel models rollback``) and the next training.

Three variants:

* the file no longer matches the checksum its metadata recorded: refused, rollback, retraining;
* training while the damaged version is still the champion: the challenger should be judged on the
  absolute gates, the unreadable champion reported (today validation crashes);
* the damaged file was written *with* a matching checksum (a hand-made version): the scorer must refuse
  it too (today LightGBM's parser aborts the scorer process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer
from flywheel.demo.observe import PredictionCollector
from flywheel.demo.stream import LiveStream, Sent
from flywheel.drain import drain_topic
from flywheel.kafka_config import client_config
from flywheel.models.store import ModelStore
from flywheel.training import pipeline

from tests.integration.drills.conftest import HISTORY, clock_offset
from tests.integration.drills.test_drill_broker_restart import _alive
from tests.integration.scoring.conftest import (
    START,
    TRAINING_AS_OF,
    cli_environment,
    copy_version,
    force_champion,
    live_events,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.drill]


class ScorerDied(AssertionError):
    """The scorer process died instead of refusing the model."""


def _cut_short(text: bytes) -> bytes:
    """The model file as a copy interrupted half way would leave it: cut inside the trees."""
    return text[: len(text) // 2]


def _damage_in_place(env, version: int) -> None:
    """Overwrite the version's model.txt with a truncated copy; its metadata keeps the old checksum."""
    key = ModelStore(env.store).version_key(env.spec.name, version, "model.txt")
    env.store.put(key, _cut_short(env.store.get(key)))


def test_a_corrupt_model_promoted_by_hand_is_refused_and_the_loop_recovers(drill_env, start_loop_scorer,
                                                                           champion_template):
    # On the template's topics: the store has drained their history (HISTORY events), which the scorer
    # scores too, and which the retraining below trains on together with the live events.
    env = drill_env(template_topics=True)
    spec, name = env.spec, env.spec.name
    models = ModelStore(env.store)
    scorer = start_loop_scorer(env)
    scorer.wait_serving(1)
    scorer.wait_assigned()
    collector = PredictionCollector(env.settings, spec.topics.predictions, spec.key_field, dict.fromkeys(range(4), 0))
    collector.start()
    sent = Sent()
    stream = LiveStream(Producer(client_config(env.settings, "producer", linger_ms=20)), spec, sent, rate=200,
                        seed=41, prefix="corrupt-", clock_offset=clock_offset(env))
    try:
        stream.start()
        stream.wait_for("live", 300, 60, _alive(scorer))

        v2 = copy_version(env, 1)
        _damage_in_place(env, v2)
        force_champion(env, v2)
        wait_until(lambda: f"refused v{v2}" in scorer.log() or not scorer.alive(), 30, f"the scorer to refuse v{v2}")
        assert scorer.alive(), f"the scorer died on the corrupt v{v2}:\n{scorer.log()[-3000:]}"
        assert "checksum mismatch" in scorer.log()
        assert models.champion(name).version == v2  # the pointer says v2; v1 goes on serving
        stream.switch("refused")
        stream.wait_for("refused", 300, 60, _alive(scorer))

        # The runbook: roll back by hand.
        rolled = subprocess.run([sys.executable, "-m", "flywheel", "models", "rollback", name, "1", "--reason",
                                 f"drill: v{v2} is corrupt"], env=cli_environment(env.settings),
                                capture_output=True, text=True, timeout=120)
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        champion = models.champion(name)
        assert (champion.version, champion.action, champion.previous) == (1, "rollback", v2)
        stream.switch("rolled-back")
        stream.wait_for("rolled-back", 300, 60, _alive(scorer))
        stream.stop()
        assert stream.error is None, stream.error
        everything = [*champion_template.history_ids, *sent.phase_of]
        missing = collector.wait_scored(everything, 120)
        assert not missing, f"{len(missing)} events got no prediction, e.g. {missing[:5]}"
        assert {p.version for p in collector.predictions.values()} == {1}, "an event was scored by another model"
        assert scorer.alive() and f"now scoring with v{v2}" not in scorer.log()

        # The loop goes on: drain, train on history + live, validate against v1, promote or reject.
        for topic in (spec.topics.features, spec.topics.labels):
            drain_topic(env.settings, topic)
        as_of = datetime.now(UTC)
        trained = pipeline.train_challenger(env.settings, spec, as_of=as_of,
                                            window=f"{int((as_of - START).total_seconds()) + 60}s")
        assert trained["status"] == "trained", trained
        assert trained["rows"]["labelled_events"] == HISTORY + len(sent.phase_of), trained["rows"]
        assert trained["rows"]["feature_events"] == HISTORY + len(sent.phase_of), trained["rows"]
        validated = pipeline.validate_challenger(env.settings, spec, trained["version"])
        outcome = pipeline.promote_or_reject(env.settings, spec, trained["version"], run_id="drill")
        assert models.get_version(name, trained["version"]).status == outcome["status"]
        if outcome["status"] == "promoted":
            assert outcome["previous"] == 1
            scorer.wait_serving(trained["version"], 30)
        else:
            assert validated["failed"], outcome
    finally:
        if stream.is_alive():
            stream.stop()
        collector.stop()
    print(f"\ncorrupt v{v2} refused while {len(sent.phase_of)} live events were scored by v1; rolled back by hand; "
          f"retrained v{trained['version']} on {trained['rows']['labelled_events']} labelled events: "
          f"{outcome['status']} (AUC {validated['auc']:.4f})")


def test_training_with_a_corrupt_champion_judges_the_challenger_on_absolute_gates(drill_env):
    env = drill_env(template_topics=True)
    spec, name = env.spec, env.spec.name
    models = ModelStore(env.store)
    v2 = copy_version(env, 1)
    _damage_in_place(env, v2)
    force_champion(env, v2)

    trained = pipeline.train_challenger(env.settings, spec, as_of=TRAINING_AS_OF)
    assert trained["status"] == "trained" and trained["rows"]["labelled_events"] == HISTORY, trained
    validated = pipeline.validate_challenger(env.settings, spec, trained["version"])
    assert validated["passed"], validated
    report = json.loads(env.store.get(models.version_key(name, trained["version"], "validation.json")))
    assert report["champion"]["version"] == v2 and report["champion"]["metrics"] is None, report["champion"]
    assert any(word in json.dumps(report).lower() for word in ("corrupt", "checksum", "unreadable")), \
        "the validation report does not say the champion could not be read"
    outcome = pipeline.promote_or_reject(env.settings, spec, trained["version"], run_id="drill")
    assert (outcome["status"], outcome["previous"]) == ("promoted", v2), outcome


def test_a_corrupt_model_with_a_matching_checksum_is_refused_not_fatal(drill_env, start_loop_scorer):
    env = drill_env()
    spec, name = env.spec, env.spec.name
    models = ModelStore(env.store)
    scorer = start_loop_scorer(env)
    scorer.wait_serving(1)
    scorer.wait_assigned()
    collector = PredictionCollector(env.settings, spec.topics.predictions, spec.key_field, dict.fromkeys(range(4), 0))
    collector.start()
    events = live_events(600, prefix="handmade-")
    ids = [e["event_id"] for e in events]
    try:
        env.produce_json(spec.topics.features, events[:300])
        assert not collector.wait_scored(ids[:300], 60)

        v2 = copy_version(env, 1, model_text=_cut_short(models.load_file(name, 1)))  # checksum of the cut file
        force_champion(env, v2)
        wait_until(lambda: f"refused v{v2}" in scorer.log() or not scorer.alive(), 30, f"the scorer to refuse v{v2}")
        if not scorer.alive():
            raise ScorerDied(f"the scorer died (exit code {scorer.process.returncode}) loading the corrupt "
                             f"v{v2}:\n{scorer.log()[-1500:]}")
        env.produce_json(spec.topics.features, events[300:])
        missing = collector.wait_scored(ids, 60)
    finally:
        collector.stop()
    assert not missing, f"{len(missing)} events got no prediction"
    assert {collector.predictions[i].version for i in ids} == {1}
