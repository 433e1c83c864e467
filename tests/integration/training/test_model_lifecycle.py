"""Train, validate against the champion, promote, reject, race and roll back: real broker, real stores."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.models.store import ModelIntegrityError, ModelStore, ModelStoreError
from flywheel.specs import load_spec
from flywheel.training import pipeline

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 20, tzinfo=UTC)
N = 8000
AS_OF = START + timedelta(seconds=N / 2) + timedelta(hours=1)


def _prepared_env(make_env, backend="local", **changes):
    env = make_env(backend, **changes)
    events = list(event_stream(N, start=START, rate_per_s=2, seed=11))
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events])
    for topic in (env.spec.topics.features, env.spec.topics.labels):
        assert drain_topic(env.settings, topic)["rows"] == N
    return env


def _full_cycle(env, spec=None, run_id="test"):
    spec = spec or env.spec
    trained = pipeline.train_challenger(env.settings, spec, as_of=AS_OF, run_id=run_id)
    assert trained["status"] == "trained", trained
    validated = pipeline.validate_challenger(env.settings, spec, trained["version"])
    return trained, validated, pipeline.promote_or_reject(env.settings, spec, trained["version"], run_id=run_id)


def _model_events(env):
    consumer = Consumer({"bootstrap.servers": env.settings.kafka_bootstrap, "group.id": "inspect",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(env.settings.model_events_topic, 0, 0)])
    events = []
    while True:
        m = consumer.poll(5)
        if m is None or m.error():
            break
        if m.key() == env.spec.name.encode():
            events.append(json.loads(m.value()))
    consumer.close()
    return events


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_first_run_promotes_v1_and_a_worse_challenger_is_rejected(make_env, backend):
    env = _prepared_env(make_env, backend)
    trained, validated, promoted = _full_cycle(env)
    assert trained["version"] == 1 and validated["passed"], validated
    assert promoted["status"] == "promoted"
    models = ModelStore(env.store)
    assert models.champion(env.spec.name).version == 1
    v1 = models.get_version(env.spec.name, 1)
    assert v1.metrics["auc"] > 0.75
    meta = v1.metadata
    assert meta["spec_hash"] == env.spec.spec_hash and meta["row_counts"]["labelled_events"] > 0
    assert {"lightgbm", "numpy", "pyarrow"} <= set(meta["library_versions"])
    assert meta["files"]["model.onnx"] and meta["sha256"] == meta["files"]["model.txt"]
    onnx_gate = next(g for g in v1.validation["gates"] if g["name"] == "onnx_agreement")
    assert onnx_gate["passed"] and onnx_gate["value"] <= 1e-5

    # A crippled challenger: one tree with a tiny learning rate.
    weak = env.spec.model_copy(update={"training": env.spec.training.model_copy(
        update={"num_boost_round": 1, "params": {"objective": "binary", "learning_rate": 0.001, "num_leaves": 2}})})
    _, validated, outcome = _full_cycle(env, weak)
    assert outcome["status"] == "rejected" and "vs_champion" in outcome["reason"]
    assert models.champion(env.spec.name).version == 1
    assert models.get_version(env.spec.name, 2).status == "rejected"
    events = _model_events(env)
    assert [(e["version"], e["action"]) for e in events] == [(1, "promote")]
    assert events[0]["sha256"] == meta["sha256"]


def test_better_challenger_promoted_then_rollback(make_env):
    env = _prepared_env(make_env, gates__min_auc=0.5)
    weak = env.spec.model_copy(update={"training": env.spec.training.model_copy(
        update={"num_boost_round": 2, "params": {"objective": "binary", "learning_rate": 0.01, "num_leaves": 3}})})
    assert _full_cycle(env, weak)[2]["status"] == "promoted"
    assert _full_cycle(env)[2] == {"status": "promoted", "version": 2, "previous": 1,
                                   "auc": pytest.approx(ModelStore(env.store).get_version(env.spec.name, 2).metrics["auc"])}
    result = pipeline.rollback(env.settings, env.spec.name, 1, reason="drill")
    assert result["previous"] == 2
    models = ModelStore(env.store)
    assert models.champion(env.spec.name).version == 1
    assert [h["action"] for h in models.history(env.spec.name)] == ["promote", "promote", "rollback"]
    assert [(e["version"], e["action"]) for e in _model_events(env)][-1] == (1, "rollback")
    with pytest.raises(ModelStoreError, match="already the champion"):
        pipeline.rollback(env.settings, env.spec.name, 1)
    with pytest.raises(ModelStoreError, match="no complete version 9"):
        pipeline.rollback(env.settings, env.spec.name, 9)


def test_racing_trainings_cannot_both_win_or_share_a_version(make_env):
    env = _prepared_env(make_env)
    results: dict[str, dict] = {}

    def train(name):
        results[name] = pipeline.train_challenger(env.settings, env.spec, as_of=AS_OF, run_id=name)

    threads = [threading.Thread(target=train, args=(f"run{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sorted(r["version"] for r in results.values())
    assert versions == [1, 2]
    for v in versions:  # both validated against "no champion"
        assert pipeline.validate_challenger(env.settings, env.spec, v)["passed"]
    outcomes = [pipeline.promote_or_reject(env.settings, env.spec, v) for v in versions]
    assert sorted(o["status"] for o in outcomes) == ["promoted", "rejected"]
    assert "champion changed" in next(o for o in outcomes if o["status"] == "rejected")["reason"]
    assert ModelStore(env.store).champion(env.spec.name).version == 1


def test_tampered_model_file_is_refused(make_env):
    env = _prepared_env(make_env)
    _full_cycle(env)
    trained = pipeline.train_challenger(env.settings, env.spec, as_of=AS_OF)
    models = ModelStore(env.store)
    key = models.version_key(env.spec.name, trained["version"], "model.txt")
    env.store.put(key, env.store.get(key).replace(b"learning_rate", b"learning_rat3"))
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        pipeline.validate_challenger(env.settings, env.spec, trained["version"])
    with pytest.raises(ModelIntegrityError):
        pipeline.rollback(env.settings, env.spec.name, trained["version"])


def test_too_little_data_skips_with_a_reason(make_env):
    env = make_env()
    outcome = pipeline.train_challenger(env.settings, env.spec, as_of=AS_OF)
    assert outcome["status"] == "skipped" and "no drained" in outcome["reason"]
    events = list(event_stream(50, start=START, rate_per_s=2))
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events])
    drain_topic(env.settings, env.spec.topics.features)
    drain_topic(env.settings, env.spec.topics.labels)
    outcome = pipeline.train_challenger(env.settings, env.spec, as_of=AS_OF)
    assert outcome["status"] == "skipped" and "at least 2000 rows" in outcome["reason"]
    assert load_spec(env.spec.source).name == env.spec.name
