"""The feature_drain DAG run by Airflow's own task runner (dag.test) against the real broker."""

from __future__ import annotations

import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain.reader import read_topic

from tests.fixtures.airflow_env import run_dag, task_results

pytestmark = pytest.mark.integration


def test_drain_dag_drains_each_topic_and_skips_idle_ones(env_for_dags):
    env = env_for_dags
    events = list(event_stream(300, rate_per_s=1))
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events[:100]])
    env.produce(env.spec.topics.features, [b"definitely not json"])

    run = run_dag("feature_drain")
    assert str(run.state) == "success"
    results = task_results(run)
    features_task = "drain_" + env.spec.topics.features.replace(".", "_")
    labels_task = "drain_" + env.spec.topics.labels.replace(".", "_")
    predictions_task = "drain_" + env.spec.topics.predictions.replace(".", "_")
    assert results[features_task][1]["rows"] == 300
    assert results[features_task][1]["reasons"] == {"not_json": 1}
    assert results[labels_task][1]["rows"] == 100
    assert results[predictions_task][0] == "skipped"  # nothing produced there yet
    assert read_topic(env.store, env.spec.topics.features).num_rows == 300

    # A manual run restricted by the Params form drains only the chosen topic.
    env.produce_json(env.spec.topics.labels, [e.label for e in events[100:]])
    env.produce_json(env.spec.topics.features, [e.features for e in event_stream(5, prefix="late")])
    run = run_dag("feature_drain", {"topics": [env.spec.topics.labels]})
    results = task_results(run)
    assert results[labels_task][1]["rows"] == 200
    assert results[features_task][0] == "skipped"
    assert read_topic(env.store, env.spec.topics.features).num_rows == 300
