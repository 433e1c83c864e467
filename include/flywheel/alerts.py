"""Alert hook: what happened, to which model, and what to look at.

Every flywheel step that a person should hear about calls :func:`alert`. It always logs; delivery by
email and Slack is attached in :mod:`flywheel.notify` when Airflow connections for them exist.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("flywheel.alerts")

KINDS = ("task_failed", "drift", "quality", "promoted", "rejected", "rollback")


def alert(kind: str, model: str, message: str, **details: Any) -> dict[str, Any]:
    """Record an alert; returns what was sent so callers (and tests) can show it."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    payload = {"kind": kind, "model": model, "message": message, **details}
    log.warning("[flywheel %s] %s: %s", kind, model, message)
    return payload
