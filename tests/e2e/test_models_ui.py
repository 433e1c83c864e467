"""The Models view in a real ``airflow standalone``, driven by headless Chromium as a person would use it:
log in, open Models, open a model, open its drift report, roll back to an earlier version (a real,
audited DAG run). Screenshots of each page land in tests/artifacts/test_models_view_in_the_airflow_ui/."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from flywheel.models.store import ModelStore
from flywheel.storage import open_store

from tests.integration.ui.seed import evidently_report_html, seed_models

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_anonymous_requests_to_the_models_view_get_no_data(airflow_standalone):
    base = airflow_standalone.client.url
    for path in ["/flywheel/models", "/flywheel/api/models", "/flywheel/api/models/fraud",
                 "/flywheel/files/reports/fraud/v000001/20260101T000000Z/drift.html"]:
        response = httpx.get(base + path, timeout=30)
        assert response.status_code == 401, (path, response.status_code)
        if "/api/" in path:
            assert response.json() == {"detail": "Not authenticated"}
        else:
            assert "Not signed in" in response.text and "scheduled__" not in response.text


def test_models_view_in_the_airflow_ui(airflow_standalone, chromium, artifacts_dir):
    started = time.monotonic()
    client = airflow_standalone.client
    store = open_store(airflow_standalone.env["FLYWHEEL_STORE_URL"])
    seeded = seed_models(store, "fraud", report_html=evidently_report_html())
    first, champion, rejected = seeded.versions
    client.wait_for_dags(["model_rollback"])

    context = chromium.new_context(viewport={"width": 1440, "height": 1000}, base_url=client.url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        # Log in through Airflow's own login page.
        page.goto("/")
        page.locator("input[name='username']").fill("admin")
        page.locator("input[name='password']").fill(client.password)
        page.locator("button[type='submit']").click()
        page.get_by_role("link", name="Models").or_(page.get_by_role("button", name="Models")).first.click()
        page.wait_for_url("**/plugin/models**")

        # The list: champion, who promoted it, metrics, the last drift verdict.
        frame = page.frame_locator("iframe[title='Models']")
        row = frame.locator("#models tr[data-model='fraud']")
        row.wait_for()
        assert f"v{champion}" in row.inner_text()
        text = row.inner_text()
        assert "0.9310" in text and "scheduled__seed_1" in text and f"on v{champion}, 38% of features drifted" in text
        # Scorer figures load after the page: "unknown" without a recent scorer snapshot (or the figures of
        # the one the loop test ran), never a cell stuck at "...".
        row.locator("td.lag").filter(has_text=re.compile(r"unknown|events/s")).wait_for()
        page.screenshot(path=artifacts_dir / "1-models.png", full_page=True)

        # The model page: versions with gates and verdicts, the chart, the reports.
        row.get_by_role("link", name="fraud").click()
        versions = frame.locator("#versions")
        versions.wait_for()
        assert frame.locator("svg.chart circle").count() >= 3
        rejected_row = versions.locator(f"tr[data-version='{rejected}']")
        assert "rejected" in rejected_row.inner_text() and "failed: min_auc, vs_champion" in rejected_row.inner_text()
        assert versions.locator(f"tr[data-version='{champion}'] .champion-badge").count() == 1
        rejected_row.locator("details summary").click()
        assert "threshold 0.9000" in rejected_row.inner_text()
        page.screenshot(path=artifacts_dir / "2-model.png", full_page=True)

        # A drift report: Evidently's stored HTML, whose scripts render it inside a sandbox (no access to
        # Airflow's origin, so not to the session either).
        frame.locator(f"a.report-link[href$='/reports/{champion}/{seeded.report_stamp}']").click()
        frame.locator("#report-summary").wait_for()
        assert "amount, hour_of_day, ip_risk" in frame.locator("#report-summary").inner_text()
        report = frame.frame_locator("iframe.report")
        report.get_by_text("Share of Drifted Columns").wait_for()  # drawn by the report's own scripts
        assert "Dataset Drift" in report.locator("body").inner_text()
        page.screenshot(path=artifacts_dir / "3-report.png", full_page=True)

        # Roll back to the first version, after confirming, through Airflow's API as the signed-in user.
        frame.get_by_role("link", name="fraud").click()
        frame.get_by_role("button", name=f"Roll back to v{first}").click()
        dialog = frame.locator("#rollback-dialog")
        dialog.wait_for()
        assert f"v{first}" in dialog.inner_text() and f"now v{champion}" in dialog.inner_text()
        dialog.locator("#rb-reason").fill("e2e: roll back from the Models view")
        page.screenshot(path=artifacts_dir / "4-confirm.png", full_page=True)
        dialog.get_by_role("button", name="Roll back").click()
        run_link = frame.locator("#rollback-status a.run-id")
        run_link.wait_for()
        run_id = run_link.inner_text()
        page.screenshot(path=artifacts_dir / "5-triggered.png", full_page=True)

        assert client.wait_run("model_rollback", run_id, timeout_s=180) == "success"
        run = client._request("GET", f"/api/v2/dags/model_rollback/dagRuns/{run_id}")
        assert run["run_type"] == "manual" and run["conf"] == {
            "model": "fraud", "version": first, "reason": "e2e: roll back from the Models view"}
        assert run.get("triggering_user_name") == "admin"
        current = ModelStore(store).champion("fraud")
        assert current.version == first and current.action == "rollback" and current.run_id == run_id

        # The page follows the run and reloads with the new champion.
        frame.locator(f"#versions tr[data-version='{first}'] .champion-badge").wait_for(timeout=60_000)
        assert "rolled back" in frame.locator("#champion").inner_text()
        page.screenshot(path=artifacts_dir / "6-rolled-back.png", full_page=True)
    except Exception:
        page.screenshot(path=artifacts_dir / "failure.png", full_page=True)
        raise
    finally:
        context.close()
    assert time.monotonic() - started < 120
