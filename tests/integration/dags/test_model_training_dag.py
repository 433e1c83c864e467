"""The generated training DAG and the rollback DAG, run by Airflow's task runner on real data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.models.store import ModelStore

from tests.fixtures.airflow_env import run_dag, task_results

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 20, tzinfo=UTC)


def test_training_promotes_then_rollback_restores(env_for_dags):
    env = env_for_dags
    name = env.spec.name
    as_of = (START + timedelta(hours=3)).isoformat()

    # Nothing drained yet: training is skipped with its reason, not failed.
    run = run_dag(f"model_training_{name}", {"as_of": as_of})
    assert str(run.state) == "success"
    assert task_results(run)["train_challenger"][0] == "skipped"

    events = list(event_stream(8000, start=START, rate_per_s=1, seed=3))
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events])
    drain_topic(env.settings, env.spec.topics.features)
    drain_topic(env.settings, env.spec.topics.labels)

    run = run_dag(f"model_training_{name}", {"as_of": as_of, "window": "2d"})
    results = task_results(run)
    assert str(run.state) == "success", results
    assert results["promote_or_reject"][1]["status"] == "promoted"
    assert results["train_challenger"][1]["version"] == 1

    run = run_dag(f"model_training_{name}", {"as_of": as_of})
    assert task_results(run)["promote_or_reject"][1]["version"] == 2

    run = run_dag("model_rollback", {"model": name, "version": 1, "reason": "drill"})
    assert str(run.state) == "success"
    models = ModelStore(env.store)
    assert models.champion(name).version == 1
    assert [h["action"] for h in models.history(name)] == ["promote", "promote", "rollback"]

    # A version that does not exist fails the rollback run and changes nothing.
    run = run_dag("model_rollback", {"model": name, "version": 42, "reason": "typo"})
    assert str(run.state) == "failed"
    assert models.champion(name).version == 1
