"""Report keys from URLs: only the exact key of a stored report file is accepted (flywheel.monitoring.reports)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from flywheel.monitoring import reports
from flywheel.storage import LocalStore

GOOD = "reports/fraud/v000002/20261125T101500Z/drift.html"


@pytest.fixture
def store(tmp_path):
    s = LocalStore(tmp_path / "store")
    for stamp, version in [("20261125T101500Z", 2), ("20261126T080000Z", 3)]:
        prefix = f"reports/fraud/v{version:06d}/{stamp}/"
        s.put(prefix + "drift.html", b"<html>report</html>")
        s.put(prefix + "summary.json", b'{"status": "checked", "data_drift": true}')
    s.put("reports/fraud/v000003/20261126T080000Z/notes.txt", b"not a report file")
    s.put("reports/fraud/README", b"stray")
    s.put("models/fraud/champion.json", b'{"version": 2}')
    return s


def test_the_report_folder_names_model_version_and_check_time():
    at = datetime(2026, 11, 25, 11, 15, tzinfo=timezone(timedelta(hours=1)))  # named in UTC
    assert reports.report_prefix("fraud", 2, at) == "reports/fraud/v000002/20261125T101500Z/"
    assert reports.parse_report_key(reports.report_prefix("fraud", 2, at) + "drift.html").checked_at == at


def test_a_report_key_is_parsed():
    ref = reports.parse_report_key(GOOD)
    assert (ref.model, ref.version, ref.stamp, ref.files) == ("fraud", 2, "20261125T101500Z", ("drift.html",))
    assert ref.checked_at == datetime(2026, 11, 25, 10, 15, tzinfo=UTC) and ref.key("summary.json").endswith("/summary.json")


@pytest.mark.parametrize("key", [
    "", "reports", "reports/", "/reports/fraud/v000002/20261125T101500Z/drift.html",
    "reports/../models/fraud/champion.json", "reports/fraud/../../etc/passwd",
    "reports/fraud/v000002/20261125T101500Z/../../../../models/fraud/champion.json",
    "reports/fraud/v000002/20261125T101500Z/%2e%2e/drift.html", "reports%2ffraud%2fv000002",
    "reports/fraud/v000002/20261125T101500Z/drift.html%00", "reports/fraud/v000002/20261125T101500Z/drift.html\x00",
    "reports\\fraud\\v000002\\20261125T101500Z\\drift.html", "reports/Fraud/v000002/20261125T101500Z/drift.html",
    "reports/fraud/v2/20261125T101500Z/drift.html", "reports/fraud/v000002/2026-11-25/drift.html",
    "reports/fraud/v000002/20261125T101500Z/notes.txt", "reports/fraud/v000002/20261125T101500Z/drift.html/x",
    "models/fraud/versions/000001/model.txt", "reports/fraud/v000002/20261125T101500Z/.flywheel-locks",
    "reports/fraud/v000002/20261125T101500Z/drift.html\n", " reports/fraud/v000002/20261125T101500Z/drift.html",
    "file:///etc/passwd", "s3://bucket/reports/fraud/v000002/20261125T101500Z/drift.html",
])
def test_anything_else_is_refused(key):
    with pytest.raises(reports.ReportKeyError):
        reports.parse_report_key(key)


def test_listing_keeps_only_report_files_newest_first(store):
    refs = reports.list_reports(store, "fraud")
    assert [(r.version, r.stamp) for r in refs] == [(3, "20261126T080000Z"), (2, "20261125T101500Z")]
    assert refs[0].files == ("drift.html", "summary.json") and refs[0].has_html
    assert reports.list_reports(store, "other") == []
    with pytest.raises(reports.ReportKeyError):
        reports.list_reports(store, "../models")


def test_reading_needs_a_listed_report_file(store):
    body, media_type = reports.read_report_file(store, GOOD)
    assert body == b"<html>report</html>" and media_type.startswith("text/html")
    assert reports.read_report_file(store, GOOD.replace("drift.html", "summary.json"))[1] == "application/json"
    with pytest.raises(reports.ReportKeyError):  # well formed, not stored
        reports.read_report_file(store, "reports/fraud/v000002/20261125T101500Z/evidently.json")
    with pytest.raises(reports.ReportKeyError):
        reports.read_report_file(store, "models/fraud/champion.json")


def test_latest_summary_is_the_last_verdict(store):
    ref, summary = reports.latest_summary(store, "fraud")
    assert ref.version == 3 and summary["data_drift"] is True
    store.put("reports/fraud/v000003/20261127T000000Z/summary.json", b"not json")
    assert reports.latest_summary(store, "fraud")[0].stamp == "20261126T080000Z"  # unreadable summaries are skipped
    assert reports.latest_summary(store, "nobody") is None
