"""The Models view's HTTP surface: Airflow's authentication, what the pages show on both store backends,
safe report serving (no path traversal), and the empty and error states."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from flywheel.settings import Settings

from tests.integration.ui.conftest import local_settings
from tests.integration.ui.seed import REPORT_HTML, seed_models

pytestmark = pytest.mark.integration

ROUTES = ["/models", "/models/fraud", "/api/models", "/api/models/fraud", "/api/models/fraud/scorer"]


@pytest.fixture
def seeded_local(tmp_path):
    settings = local_settings(tmp_path)
    return settings, seed_models(settings.open_store())


def _report_routes(seeded) -> list[str]:
    stamp = seeded.report_stamp
    return [f"/files/{seeded.report_html_key}", f"/files/{seeded.report_prefix}summary.json",
            f"/models/fraud/reports/{seeded.champion}/{stamp}"]


# -- authentication ---------------------------------------------------------------------------------

@pytest.mark.parametrize("token, status", [(None, 401), ("expired", 401), ("forged", 403)])
def test_no_valid_session_gets_no_data(make_client, seeded_local, token, status):
    settings, seeded = seeded_local
    client = make_client(settings, token=token)
    for path in ROUTES + _report_routes(seeded):
        response = client.get(path)
        assert response.status_code == status, (path, response.status_code, response.text[:200])
        body = response.text
        assert "0.931" not in body and "scheduled__seed" not in body and "evidently-title" not in body, path


def test_a_forged_session_cookie_is_refused_like_a_forged_bearer(make_client, seeded_local, ui_tokens):
    settings, _ = seeded_local
    client = make_client(settings, token=None)
    client.cookies.set("_token", ui_tokens.forged)
    assert client.get("/api/models").status_code == 403


def test_the_ui_session_cookie_and_a_bearer_token_are_both_accepted(make_client, seeded_local, ui_tokens):
    settings, _ = seeded_local
    assert make_client(settings).get("/api/models").status_code == 200
    cookie_client = make_client(settings, token=None)
    cookie_client.cookies.set("_token", ui_tokens.valid)
    assert cookie_client.get("/api/models").status_code == 200


def test_an_unauthenticated_page_says_to_sign_in_instead_of_failing(make_client, seeded_local):
    settings, _ = seeded_local
    response = make_client(settings, token=None).get("/models")
    assert response.status_code == 401 and "text/html" in response.headers["content-type"]
    assert "Not signed in" in response.text and "Sign in to Airflow" in response.text


# -- what the pages show, on both backends ---------------------------------------------------------

def test_models_list_and_model_page_on_each_backend(make_client, store_settings: Settings):
    seeded = seed_models(store_settings.open_store())
    client = make_client(store_settings)
    first, champion, rejected = seeded.versions

    listed = client.get("/api/models").json()["models"]
    assert [m["name"] for m in listed] == ["fraud"]
    fraud = listed[0]
    assert fraud["champion"] == champion and fraud["champion_action"] == "promote"
    assert fraud["champion_run"] == "scheduled__seed_1" and fraud["metrics"]["auc"] == pytest.approx(0.931)
    assert fraud["drift"]["label"] == "drift" and fraud["drift"]["drift_share"] == pytest.approx(0.375)
    assert fraud["drift"]["report_key"] == seeded.report_html_key
    assert fraud["last_retrain_request"] is not None

    page = client.get("/models")
    assert page.status_code == 200
    assert "/models/fraud" in page.text and f"v{champion}" in page.text and "0.9310" in page.text
    assert "scheduled__seed_1" in page.text and "drift" in page.text

    detail = client.get("/api/models/fraud").json()
    by_version = {v["version"]: v for v in detail["versions"]}
    assert by_version[champion]["is_champion"] and by_version[champion]["status"] == "promoted"
    assert by_version[rejected]["status"] == "rejected" and by_version[rejected]["failed_gates"] == ["min_auc", "vs_champion"]
    gate = next(g for g in by_version[rejected]["gates"] if g["name"] == "min_auc")
    assert gate == {"name": "min_auc", "passed": False, "value": pytest.approx(0.884), "threshold": 0.9,
                    "detail": "holdout AUC 0.8840"}
    assert by_version[first]["row_counts"]["labelled_events"] == 5000 and by_version[first]["window"]["start"]
    assert [p["version"] for p in detail["chart"]] == seeded.versions
    assert [h["action"] for h in detail["history"]] == ["promote", "promote"]
    assert detail["reports"][0]["html_key"] == seeded.report_html_key

    html = client.get("/models/fraud").text
    assert '<svg class="chart"' in html and "AUC by version" in html
    assert f'data-version="{first}"' in html and f"Roll back to v{first}" in html
    assert f"Roll back to v{champion}" not in html and f"Roll back to v{rejected}" not in html  # champion, rejected
    assert "failed: min_auc, vs_champion" in html and "threshold 0.9000" in html
    assert "Open report" in html and 'id="rollback-dialog" data-dag="model_rollback"' in html


def test_a_rolled_back_version_is_marked_in_the_history_and_versions(make_client, seeded_local):
    from flywheel.models.store import ModelStore

    settings, seeded = seeded_local
    models = ModelStore(settings.open_store())
    _, etag = models.champion_with_etag("fraud")
    models.set_champion("fraud", seeded.versions[0], expected_etag=etag, action="rollback", run_id="manual__rb",
                        reason="bad deploy")
    client = make_client(settings)
    summary = client.get("/api/models").json()["models"][0]
    assert summary["champion"] == seeded.versions[0] and summary["champion_action"] == "rollback"
    html = client.get("/models/fraud").text
    assert "rolled back to" in html and "rolled back from" in html and "bad deploy" in html
    assert f"Roll back to v{seeded.versions[1]}" in html  # the former champion is now a rollback target


def test_report_files_are_served_sandboxed(make_client, seeded_local):
    settings, seeded = seeded_local
    client = make_client(settings)
    html = client.get(f"/files/{seeded.report_html_key}")
    assert html.status_code == 200 and html.text == REPORT_HTML
    assert html.headers["content-type"].startswith("text/html")
    csp = html.headers["content-security-policy"]
    assert csp.startswith("sandbox allow-scripts;") and "allow-same-origin" not in csp and "frame-ancestors 'self'" in csp
    assert html.headers["x-content-type-options"] == "nosniff"
    summary = client.get(f"/files/{seeded.report_prefix}summary.json")
    assert summary.status_code == 200 and summary.json()["drift_share"] == 0.375
    wrapper = client.get(_report_routes(seeded)[2])
    assert wrapper.status_code == 200 and 'sandbox="allow-scripts"' in wrapper.text
    assert f"/files/{seeded.report_html_key}" in wrapper.text and "amount, hour_of_day, ip_risk" in wrapper.text


TRAVERSALS = [
    "../models/fraud/champion.json",
    "reports/../models/fraud/champion.json",
    "reports/fraud/../../models/fraud/champion.json",
    "%2e%2e/%2e%2e/etc/passwd",
    "reports/fraud/%2e%2e/%2e%2e/models/fraud/champion.json",
    "reports%2f..%2f..%2fmodels%2ffraud%2fchampion.json",
    "reports/fraud/v000002/%252e%252e/%252e%252e/champion.json",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "//etc/passwd",
    "reports/fraud/v000002/x/..%5c..%5cchampion.json",
    "reports/fraud/v000002/20260101T000000Z/drift.html%00.json",
    "models/fraud/champion.json",
    "models/fraud/versions/000001/model.txt",
    "monitoring/fraud/state.json",
    ".flywheel-locks/x",
    "reports/fraud/v000002/20260101T000000Z/drift.html",  # well formed, but not a stored report
    "reports/fraud/v000002/20260101T000000Z/other.txt",
]


@pytest.mark.parametrize("attempt", TRAVERSALS)
def test_report_links_cannot_reach_anything_but_stored_report_files(make_client, seeded_local, attempt):
    settings, _ = seeded_local
    client = make_client(settings)
    response = client.get("/files/" + attempt)
    assert response.status_code in (400, 404), (attempt, response.status_code)
    assert "version=" not in response.text and "root:" not in response.text and "promoted_at" not in response.text


def test_a_traversal_in_the_raw_request_path_is_refused(make_client, seeded_local):
    """Send '..' segments unnormalised (a client may not clean them up): the app still serves nothing."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from flywheel.ui.app import create_app

    settings, _ = seeded_local
    app = create_app(lambda: settings)
    token = make_client(settings).headers["Authorization"]

    async def call(raw: str) -> tuple[int, bytes]:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        from urllib.parse import unquote

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": unquote(raw), "raw_path": raw.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"authorization", token.encode()), (b"host", b"test")], "server": ("test", 80),
                 "client": ("127.0.0.1", 1)}
        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")

    for raw in ["/files/reports/../models/fraud/champion.json", "/files/../../etc/passwd",
                "/files/reports/fraud/v000002/../../../models/fraud/versions/000001/model.txt"]:
        with ThreadPoolExecutor(1) as pool:  # a loop of its own, whatever else runs in this process
            status, body = pool.submit(asyncio.run, call(raw)).result(timeout=60)
        assert status in (400, 404), raw
        assert b"version=" not in body and b"root:" not in body


# -- empty and error states ------------------------------------------------------------------------

def test_an_empty_store_says_there_are_no_models_yet(make_client, store_settings):
    client = make_client(store_settings)
    assert client.get("/api/models").json() == {"models": []}
    page = client.get("/models")
    assert page.status_code == 200 and 'id="empty-models"' in page.text and "No models yet" in page.text
    missing = client.get("/models/fraud")
    assert missing.status_code == 404 and "has no model" in missing.text and "Traceback" not in missing.text
    assert client.get("/api/models/fraud").status_code == 404


def test_a_model_without_reports_says_so(make_client, tmp_path):
    settings = local_settings(tmp_path)
    seed_models(settings.open_store(), with_report=False)
    client = make_client(settings)
    html = client.get("/models/fraud").text
    assert 'id="empty-reports"' in html and "No reports yet" in html
    assert client.get("/models").text.count("no reports yet") == 1


@pytest.mark.parametrize("path, kind", [("/models", "html"), ("/models/fraud", "html"), ("/api/models", "json")])
def test_an_unreachable_store_is_a_clear_503(make_client, tmp_path, path, kind):
    from tests.fixtures.kafka_broker import free_port

    settings = local_settings(tmp_path, store_url="s3://flywheel-nowhere/lake",
                              s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_region="us-east-1",
                              s3_access_key="x", s3_secret_key="x")
    started = time.monotonic()
    response = make_client(settings).get(path)
    assert time.monotonic() - started < 30
    assert response.status_code == 503
    if kind == "json":
        assert response.json()["error"] == "store_unreachable" and "s3://flywheel-nowhere/lake" in response.json()["detail"]
    else:
        assert "Model store unreachable" in response.text and "s3://flywheel-nowhere/lake" in response.text
        assert "Traceback" not in response.text


def test_a_store_that_does_not_answer_in_time_is_a_503_not_a_hung_page(make_client, tmp_path, monkeypatch):
    from flywheel.storage.local import LocalStore

    settings = local_settings(tmp_path)
    seed_models(settings.open_store())
    original = LocalStore._list

    def slow_list(self, prefix):
        time.sleep(3)
        return original(self, prefix)

    monkeypatch.setattr(LocalStore, "_list", slow_list)
    started = time.monotonic()
    response = make_client(settings, store_timeout_s=0.5).get("/models")
    assert time.monotonic() - started < 2.5
    assert response.status_code == 503 and "did not answer within" in response.text


def test_a_missing_bucket_is_reported_not_raised(make_client, tmp_path, s3_endpoint):
    settings = local_settings(tmp_path, store_url="s3://no-such-bucket-for-ui/lake", s3_endpoint_url=s3_endpoint,
                              s3_region="us-east-1", s3_access_key="x", s3_secret_key="x")
    response = make_client(settings).get("/models")
    assert response.status_code == 503 and "could not be read" in response.text


# -- scorer lag: only if known, never slow ---------------------------------------------------------

def test_scorer_lag_is_unknown_without_a_broker_and_bounded(make_client, seeded_local):
    settings, _ = seeded_local
    started = time.monotonic()
    body = make_client(settings, lag_timeout_s=1.0).get("/api/models/fraud/scorer").json()
    assert time.monotonic() - started < 3.5
    assert body["known"] is False and body["reason"]


def test_scorer_lag_comes_from_the_latest_metrics_snapshot(make_client, tmp_path, kafka_broker):
    from confluent_kafka import Producer
    from flywheel.kafka_config import ensure_topics

    settings = local_settings(tmp_path, kafka_bootstrap=kafka_broker.bootstrap,
                              metrics_topic=f"flywheel.metrics.ui-{uuid.uuid4().hex[:8]}")
    seed_models(settings.open_store())
    ensure_topics(settings, [settings.metrics_topic], partitions=2)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    now = time.time()
    for member, p99, at in [("a:1", 40.0, now - 2000), ("a:1", 55.0, now - 5), ("b:2", 61.5, now - 3)]:
        snapshot = {"kind": "scorer", "model": "fraud", "member": member, "model_version": 2, "at": at,
                    "events_per_s": 1000.0, "e2e_ms_p50": 20.0, "e2e_ms_p99": p99}
        producer.produce(settings.metrics_topic, key=b"fraud", value=json.dumps(snapshot).encode())
    producer.produce(settings.metrics_topic, key=b"fraud", value=json.dumps({"kind": "drift", "model": "fraud"}).encode())
    producer.produce(settings.metrics_topic, key=b"other", value=json.dumps({"kind": "scorer", "at": now}).encode())
    assert producer.flush(10) == 0
    body = make_client(settings, lag_timeout_s=5.0).get("/api/models/fraud/scorer").json()
    assert body["known"] is True, body
    assert body["members"] == 2 and body["e2e_ms_p99"] == 61.5 and body["events_per_s"] == 2000.0
    assert body["model_versions"] == [2]


def test_a_user_who_may_not_read_the_training_dag_sees_nothing_of_the_model(make_client, seeded_local, monkeypatch):
    """Authorization is Airflow's: a model is visible to whoever may read model_training_<model>."""
    from airflow.api_fastapi.app import get_auth_manager

    settings, seeded = seeded_local
    manager = type(get_auth_manager())
    asked = []

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None):
        asked.append((method, details.id if details else None))
        return details is None or details.id != "model_training_fraud"

    monkeypatch.setattr(manager, "is_authorized_dag", is_authorized_dag)
    client = make_client(settings)
    assert client.get("/api/models").json() == {"models": []}
    for path in ["/models/fraud", "/api/models/fraud", "/api/models/fraud/scorer", *_report_routes(seeded)]:
        response = client.get(path)
        assert response.status_code == 403, path
        assert "0.931" not in response.text and "evidently-title" not in response.text
    assert ("GET", "model_training_fraud") in asked


def test_pages_carry_a_strict_content_security_policy(make_client, seeded_local):
    settings, _ = seeded_local
    response = make_client(settings).get("/models/fraud")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp and "unsafe-inline' 'unsafe-eval" not in csp
    assert response.headers["cache-control"] == "no-store"
    script = make_client(settings, token=None).get("/static/models.js")
    assert script.status_code == 200 and "rollback" in script.text  # code, not data: served without a session
