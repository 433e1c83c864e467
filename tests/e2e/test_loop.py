"""The whole loop on a real `airflow standalone`, driven over its REST API as an external client would.

A compressed `make demo`: the same orchestration (flywheel.demo.loop) with smaller phases. Airflow runs
every stage; the retraining is started by Airflow itself from the retrain asset the drift monitor
updates. The assertions are on what a user would check: nothing lost or duplicated on the way to
the store and to the predictions topic, two versions, and live AUC back after the hot swap.
"""

from __future__ import annotations

import json

import pytest
from flywheel.demo.loop import DemoPlan, format_summary, run_loop
from flywheel.settings import Settings
from flywheel.specs import find_spec

from tests.fixtures.kafka_broker import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

PLAN = DemoPlan(history=6_000, live=1_500, drifted=8_000, after_swap=1_500, rate=300, bad_every=500,
                stage_timeout_s=300)


def test_the_loop_turns_and_recovers_after_drift(airflow_standalone):
    env = airflow_standalone.env
    settings = Settings.from_env(env)
    spec = find_spec(settings.specs_dir, "fraud")
    airflow_standalone.client.wait_for_dags(["feature_drain", "model_training_fraud", "drift_monitor_fraud"])

    report = run_loop(settings, spec, PLAN, airflow_standalone.client, env=env, reset=True)
    summary = format_summary(report)
    print(summary)
    artifacts = REPO / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "loop-summary.json").write_text(json.dumps(report.as_dict(), indent=1, default=str))

    counts = report.counts
    assert counts["produced"] >= PLAN.history + PLAN.live + PLAN.drifted + PLAN.after_swap
    assert counts["drained"] == counts["produced"] and counts["drain_missing"] == 0, summary
    assert counts["drain_duplicates"] == 0, summary
    assert counts["scored"] == counts["produced"] and counts["score_missing"] == 0, summary
    assert counts["rejected"] == counts["malformed_sent"] > 0, summary

    assert [(v["version"], v["status"]) for v in report.versions] == [(1, "promoted"), (2, "promoted")], summary
    auc = report.live_auc
    assert auc["after_drift_v1"] < auc["before_drift"] - 0.1, f"the drift did not hurt v1: {summary}"
    assert auc["after_swap_v2"] >= 0.95 * auc["before_drift"], f"live AUC did not recover: {summary}"
    assert report.drift["data_drift"], summary
    assert report.swap_seconds is not None and report.swap_seconds < 10, summary
