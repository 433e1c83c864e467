"""Scorer figures from metrics snapshots (flywheel.ui.scorer): newest per member, stale ones ignored."""

from __future__ import annotations

from flywheel.ui.scorer import STALE_AFTER_S, summarize


def test_newest_snapshot_of_each_member_added_up():
    now = 1_000_000.0
    snaps = [
        {"member": "a", "at": now - 100, "events_per_s": 10.0, "e2e_ms_p99": 900.0, "model_version": 1},
        {"member": "a", "at": now - 4, "events_per_s": 500.0, "e2e_ms_p50": 12.0, "e2e_ms_p99": 40.0, "model_version": 2},
        {"member": "b", "at": now - 2, "events_per_s": 300.0, "e2e_ms_p50": 15.0, "e2e_ms_p99": 55.0, "model_version": 2},
        {"member": "c", "at": now - STALE_AFTER_S - 1, "events_per_s": 999.0, "e2e_ms_p99": 9999.0},
    ]
    out = summarize(snaps, now)
    assert out == {"known": True, "members": 2, "events_per_s": 800.0, "e2e_ms_p50": 15.0, "e2e_ms_p99": 55.0,
                   "model_versions": [2], "age_s": 2.0}


def test_unknown_without_fresh_snapshots():
    assert summarize([], 0.0) == {"known": False, "reason": "no scorer has published metrics"}
    stale = summarize([{"member": "a", "at": 0.0}], STALE_AFTER_S + 60)
    assert stale["known"] is False and "360 s old" in stale["reason"]
