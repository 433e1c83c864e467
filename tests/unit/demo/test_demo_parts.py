"""The demo's pieces that need no broker: the stream's shape, the ground truth, the summary."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from flywheel.demo.generator import FRAUD_RATE, make_event
from flywheel.demo.loop import DemoReport, format_summary
from flywheel.demo.stream import Sent, history


def test_history_ends_at_the_given_time_with_evenly_spaced_event_times():
    end = datetime(2026, 11, 25, 12, tzinfo=UTC)
    events = list(history(100, end=end, event_rate=10, seed=1, prefix="h-"))
    times = [datetime.fromisoformat(e.features["event_time"].replace("Z", "+00:00")) for e in events]
    assert times[0] == end - timedelta(seconds=10)
    assert times[-1] == end - timedelta(seconds=0.1)
    assert [e.features["event_id"] for e in events[:2]] == ["h-0", "h-1"]
    assert all(e.label["event_id"] == e.features["event_id"] for e in events)


def test_drift_changes_the_fraud_pattern_and_the_customer_base():
    rng = random.Random(3)
    now = datetime(2026, 11, 25, tzinfo=UTC)
    before = [make_event(rng, i, now) for i in range(20_000)]
    after = [make_event(rng, i, now, drift=True) for i in range(20_000)]

    def mean(events, field, fraud=None):
        xs = [e.features[field] for e in events if fraud is None or e.label["is_fraud"] == fraud]
        return sum(xs) / len(xs)

    assert abs(sum(e.label["is_fraud"] for e in before) / len(before) - FRAUD_RATE) < 0.005
    assert mean(after, "amount", fraud=0) > 1.5 * mean(before, "amount", fraud=0)  # customers changed
    assert mean(after, "amount", fraud=1) < 0.3 * mean(before, "amount", fraud=1)  # fraudsters changed


def test_sent_lists_ids_by_phase():
    sent = Sent()
    sent.phase_of.update({"a": "live", "b": "drift", "c": "live"})
    assert sent.ids("live") == ["a", "c"]


def test_the_summary_states_counts_versions_auc_recovery_and_timings():
    report = DemoReport(
        counts={"produced": 1000, "malformed_sent": 3, "drained": 1000, "drain_missing": 0, "drain_duplicates": 0,
                "scored": 1000, "score_missing": 0, "score_duplicates": 0, "rejected": 3},
        versions=[{"version": 1, "status": "promoted", "auc": 0.99, "champion": False},
                  {"version": 2, "status": "promoted", "auc": 0.995, "champion": True}],
        live_auc={"before_drift": 0.99, "after_drift_v1": 0.6, "after_swap_v2": 0.98},
        drift={"drifted_columns": ["amount", "ip_risk"], "detection_delay_s": 42.0, "report": "file:///r.html"},
        swap_seconds=0.3, seconds=300)
    text = format_summary(report)
    assert "produced 1,000 (+3 malformed)" in text and "rejected 3" in text
    assert "v2 promoted, champion (holdout AUC 0.9950)" in text
    assert "after swap to v2 0.9800 (99.0% of before the drift)" in text
    assert "2 features drifted, detected 42s after injection" in text
    assert "v2 served 0.3s after its promotion" in text
