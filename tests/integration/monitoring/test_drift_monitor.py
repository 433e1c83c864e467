"""The drift monitor DAG on real drained data, with alerts received by real SMTP and HTTP servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.models.store import ModelStore
from flywheel.training import pipeline
from flywheel.training.model import load_booster

from tests.fixtures.airflow_env import run_dag, task_results

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 20, tzinfo=UTC)


def _live(env, n, start, *, drift, seed, prefix):
    """Live traffic: features, labels, and the champion's predictions for them (as the scorer writes)."""
    events = list(event_stream(n, start=start, rate_per_s=2, seed=seed, prefix=prefix,
                               drift_after=0 if drift else None))
    models = ModelStore(env.store)
    champion = models.champion(env.spec.name)
    booster = load_booster(models.load_file(env.spec.name, champion.version))
    import numpy as np

    X = np.array([[float(e.features[f] if e.features[f] is not None else np.nan) for f in env.spec.feature_names]
                  for e in events])
    scores = booster.predict(X)
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events])
    env.produce(env.spec.topics.predictions, [orjson.dumps({
        "event_id": e.features["event_id"], "score": float(s), "decision": bool(s >= 0.5),
        "model_version": str(champion.version), "event_time": e.features["event_time"],
        "source_ts_ms": 0, "scored_at_ms": 0}) for e, s in zip(events, scores, strict=True)])
    for topic in env.spec.drained_topics:
        drain_topic(env.settings, topic)


def test_stationary_then_shifted_stream_with_one_retrain_request_and_real_alerts(env_for_dags, alert_sinks,
                                                                                  monkeypatch):
    for key, value in alert_sinks.airflow_env().items():
        monkeypatch.setenv(key, value)
    env = env_for_dags
    name = env.spec.name
    history = list(event_stream(8000, start=START, rate_per_s=2, seed=21))
    env.produce_json(env.spec.topics.features, [e.features for e in history])
    env.produce_json(env.spec.topics.labels, [e.label for e in history])
    drain_topic(env.settings, env.spec.topics.features)
    drain_topic(env.settings, env.spec.topics.labels)
    trained = pipeline.train_challenger(env.settings, env.spec, as_of=START + timedelta(hours=2))
    pipeline.validate_challenger(env.settings, env.spec, trained["version"])
    assert pipeline.promote_or_reject(env.settings, env.spec, trained["version"])["status"] == "promoted"

    # Stationary: same process, new events.
    live_start = START + timedelta(hours=3)
    _live(env, 3600, live_start, drift=False, seed=22, prefix="calm")
    run = run_dag(f"drift_monitor_{name}", {"window": "30m", "as_of": (live_start + timedelta(minutes=30)).isoformat()})
    results = task_results(run)
    summary = results["check_drift"][1]
    assert summary["data_drift"] is False, summary
    assert results["request_retrain"][0] == "skipped"

    # Shifted: the customer base and the fraud pattern change.
    shifted_start = live_start + timedelta(hours=1)
    _live(env, 3600, shifted_start, drift=True, seed=23, prefix="shift")
    as_of = (shifted_start + timedelta(minutes=30)).isoformat()
    emails_before, slack_before = len(alert_sinks.emails), len(alert_sinks.slack)
    outcomes = []
    for _ in range(3):  # however often the check runs, one retrain request within the cool-down
        run = run_dag(f"drift_monitor_{name}", {"window": "30m", "as_of": as_of})
        outcomes.append(task_results(run))
    first = outcomes[0]
    assert first["check_drift"][1]["data_drift"] is True
    assert len(first["check_drift"][1]["drifted_columns"]) >= 6
    assert [o["request_retrain"][0] for o in outcomes] == ["success", "skipped", "skipped"]

    conditions = first["decide_and_alert"][1]["alerts"]
    assert "data_drift" in conditions
    assert all(o["decide_and_alert"][1]["alerts"] == [] for o in outcomes[1:])  # deduplicated
    new_emails = alert_sinks.email_texts()[emails_before:]
    new_slack = [m["body"]["text"] for m in alert_sinks.slack[slack_before:]]
    assert len(new_emails) == len(new_slack) == len(conditions), (new_emails, new_slack)
    for text in new_emails + new_slack:
        assert name in text
    assert any("data drift on" in t for t in new_emails) and any("data drift on" in t for t in new_slack)
    if "quality_drop" in conditions:  # the fraud pattern changed too: live AUC fell
        assert any("live AUC" in t for t in new_slack)

    report = first["check_drift"][1]["report_html"]
    key = report.split("/lake/")[-1] if "/lake/" in report else report.split(env.settings.store_url.rstrip("/") + "/")[-1]
    assert env.store.get(key).lstrip().startswith(b"<!DOCTYPE html>")


def test_unreachable_alert_channels_never_fail_the_dag(env_for_dags, monkeypatch):
    from flywheel.alerts import alert

    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_SLACK", '{"conn_type": "slackwebhook", "password": "http://127.0.0.1:1/x"}')
    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_SMTP", '{"conn_type": "smtp", "host": "127.0.0.1", "port": 1, '
                                                     '"extra": {"disable_ssl": true, "disable_tls": true, "retry_limit": 0, "timeout": 2}}')
    monkeypatch.setenv("FLYWHEEL_ALERT_EMAIL_TO", "ops@example.com")
    payload = alert("promoted", "somemodel", "v2 promoted")
    assert payload["delivery"]["slack"].startswith("failed") and payload["delivery"]["email"].startswith("failed")
    monkeypatch.delenv("AIRFLOW_CONN_FLYWHEEL_SLACK")
    monkeypatch.delenv("AIRFLOW_CONN_FLYWHEEL_SMTP")
    assert alert("promoted", "somemodel", "v2 promoted")["delivery"]["slack"].startswith("skipped")
