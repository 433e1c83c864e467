"""What the Models view shows, from the store alone (flywheel.ui.data) and its chart (flywheel.ui.chart)."""

from __future__ import annotations

import math

import pytest
from flywheel.models.store import ModelStore
from flywheel.storage import LocalStore
from flywheel.ui import data
from flywheel.ui.chart import metric_chart

from tests.integration.ui.seed import seed_models


@pytest.fixture
def models(tmp_path):
    return ModelStore(LocalStore(tmp_path / "store"))


def test_an_empty_store_has_no_models(models):
    assert data.list_models(models) == []
    assert data.model_detail(models, "fraud") is None


def test_summary_and_detail(models):
    seeded = seed_models(models.store)
    first, champion, rejected = seeded.versions
    (summary,) = data.list_models(models)
    assert summary.champion == champion and summary.champion_run == "scheduled__seed_1"
    assert summary.metrics["auc"] == pytest.approx(0.931) and summary.drift.label == "drift"
    assert summary.drift.report.stamp in seeded.report_prefix and summary.last_retrain_request

    detail = data.model_detail(models, "fraud")
    rows = {r.version: r for r in detail.versions}
    assert [r.version for r in detail.versions] == [rejected, champion, first]
    assert rows[rejected].failed_gates == ["min_auc", "vs_champion"] and not rows[rejected].can_roll_back_to
    assert rows[champion].is_champion and not rows[champion].can_roll_back_to
    assert rows[first].can_roll_back_to and rows[first].row_counts["holdout"] == 750
    assert [p["version"] for p in data.metric_series(detail)] == seeded.versions
    assert detail.reports[0]["drift_share"] == 0.375


def test_nan_metrics_never_reach_the_page():
    assert data.clean_number(math.nan) is None and data.clean_number(True) is None and data.clean_number(0.5) == 0.5


def test_chart_draws_a_point_per_version_and_escapes_labels():
    points = [{"version": 1, "value": 0.9, "status": "promoted", "champion": False},
              {"version": 2, "value": 0.93, "status": "<script>", "champion": True}]
    svg = metric_chart(points, "auc")
    assert svg.count("<circle") == 2 and "<script>" not in svg and "&lt;script&gt;" in svg
    assert metric_chart([], "auc") == ""
    assert metric_chart(points[:1], "auc").count("<circle") == 1  # one version: no division by zero
