"""From a drift verdict to actions: at most one retrain request and one alert per condition per cool-down.

The state lives in the object store and is changed by compare-and-swap, so however many checks run,
and even if two run at once, a drifting model gets one retrain request per cool-down window, not a
retrain storm, and one alert per condition, not an alert per check.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flywheel.errors import ObjectNotFound, PreconditionFailed
from flywheel.specs import ModelSpec
from flywheel.storage import ObjectStore


def state_key(model: str) -> str:
    return f"monitoring/{model}/state.json"


def decide(store: ObjectStore, spec: ModelSpec, summary: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Which of retrain / alert to do now; records the decision so later checks see it."""
    conditions = [c for c in ("data_drift", "quality_drop") if summary.get(c)]
    decision: dict[str, Any] = {"conditions": conditions, "retrain": False, "alerts": [], "suppressed": []}
    if not conditions:
        return decision
    cooldown = spec.drift.cooldown.total_seconds()
    ts = now.timestamp()
    for _ in range(20):
        try:
            data, etag = store.get_with_etag(state_key(spec.name))
            state = json.loads(data)
        except ObjectNotFound:
            state, etag = {"last_retrain_request": None, "last_alert": {}}, None
        retrain = state["last_retrain_request"] is None or ts - state["last_retrain_request"] >= cooldown
        alerts = [c for c in conditions if ts - state["last_alert"].get(c, float("-inf")) >= cooldown]
        if not retrain and not alerts:
            decision["suppressed"] = conditions
            return decision
        new_state = {"last_retrain_request": ts if retrain else state["last_retrain_request"],
                     "last_alert": {**state["last_alert"], **{c: ts for c in alerts}},
                     "last_report": summary.get("report_html")}
        try:
            body = json.dumps(new_state).encode()
            if etag is None:
                store.put(state_key(spec.name), body, if_none_match=True)
            else:
                store.put(state_key(spec.name), body, if_match=etag)
        except (PreconditionFailed, ObjectNotFound):
            continue  # another check decided first: look again
        decision.update(retrain=retrain, alerts=alerts, suppressed=[c for c in conditions if c not in alerts])
        return decision
    decision["suppressed"] = conditions
    return decision
