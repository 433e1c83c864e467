"""`make demo`'s Airflow: standalone comes up healthy with every project DAG and no import errors."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_standalone_is_healthy_and_lists_the_project_dags(airflow_standalone):
    client = airflow_standalone.client
    health = client.health()
    assert {k: v["status"] for k, v in health.items()} == {
        "metadatabase": "healthy", "scheduler": "healthy", "triggerer": "healthy", "dag_processor": "healthy"}
    dags = {d["dag_id"]: d for d in client.wait_for_dags(["feature_drain"])}
    assert client.import_errors() == []
    assert not dags["feature_drain"]["is_paused"]

    listed = airflow_standalone.script("dags")
    assert listed.returncode == 0 and "no import errors" in listed.stdout


def test_starting_twice_is_harmless(airflow_standalone):
    again = airflow_standalone.script("up")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr


def test_anonymous_requests_get_no_data(airflow_standalone):
    import httpx

    response = httpx.get(airflow_standalone.client.url + "/api/v2/dags")
    assert response.status_code in (401, 403)
