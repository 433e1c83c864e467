"""What the Models view shows, gathered from the model store and the drift reports only.

Everything here is plain data (dicts and dataclasses) built from ``ModelStore`` and
``flywheel.monitoring.reports``, so it works the same on a local directory and on S3, and can be tested
without a web server. The page templates only format it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from flywheel.errors import ObjectNotFound
from flywheel.models.store import ModelStore, ModelVersion
from flywheel.monitoring import reports
from flywheel.monitoring.decision import state_key
from flywheel.storage import ObjectStore

#: The metric the chart and the list lead with: the one the gates and the drift monitor judge by.
MAIN_METRIC = "auc"
KEY_METRICS = ("auc", "logloss", "precision", "recall")


def clean_number(value: Any) -> float | None:
    """A finite float or None: NaN (an AUC with one class) must not reach JSON or the chart."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class DriftVerdict:
    """The last drift check of a model, from its report's summary."""

    checked_at: float
    version: int
    status: str  # checked | skipped
    data_drift: bool
    quality_drop: bool
    drift_share: float | None
    drifted_columns: list[str]
    auc_drop: float | None
    report: reports.ReportRef

    @property
    def label(self) -> str:
        if self.data_drift and self.quality_drop:
            return "drift and quality drop"
        if self.data_drift:
            return "drift"
        if self.quality_drop:
            return "quality drop"
        return "no drift"


@dataclass
class ModelSummary:
    name: str
    versions: int
    champion: int | None = None
    promoted_at: float | None = None
    champion_action: str = ""  # promote | rollback
    champion_run: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    drift: DriftVerdict | None = None
    last_retrain_request: float | None = None


@dataclass
class VersionRow:
    version: int
    status: str  # candidate | promoted | rejected
    is_champion: bool
    trained_at: float | None
    trained_by: str
    window: dict[str, str]
    row_counts: dict[str, int]
    metrics: dict[str, float | None]
    gates: list[dict[str, Any]]
    failed_gates: list[str]
    reason: str
    events: list[dict[str, Any]]  # history entries naming this version (promoted, rolled back to, replaced)

    @property
    def rolled_back_to(self) -> bool:
        return any(e["action"] == "rollback" and e["version"] == self.version for e in self.events)

    @property
    def rolled_back_from(self) -> bool:
        return any(e["action"] == "rollback" and e.get("previous") == self.version for e in self.events)

    @property
    def can_roll_back_to(self) -> bool:
        """A complete, not rejected version other than the champion (the DAG verifies its files again)."""
        return not self.is_champion and self.status != "rejected"


@dataclass
class ModelDetail:
    summary: ModelSummary
    versions: list[VersionRow]  # newest first
    history: list[dict[str, Any]]  # newest first
    reports: list[dict[str, Any]]  # newest first: ref + summary fields


def _metrics(version: ModelVersion) -> dict[str, float | None]:
    return {name: clean_number(version.metrics.get(name)) for name in KEY_METRICS}


def _drift_verdict(store: ObjectStore, model: str) -> DriftVerdict | None:
    latest = reports.latest_summary(store, model)
    if latest is None:
        return None
    ref, summary = latest
    return DriftVerdict(
        checked_at=ref.checked_at.timestamp(), version=ref.version, status=str(summary.get("status", "checked")),
        data_drift=bool(summary.get("data_drift")), quality_drop=bool(summary.get("quality_drop")),
        drift_share=clean_number(summary.get("drift_share")),
        drifted_columns=[str(c) for c in summary.get("drifted_columns") or []],
        auc_drop=clean_number(summary.get("auc_drop")), report=ref,
    )


def _monitor_state(store: ObjectStore, model: str) -> dict[str, Any]:
    try:
        state = json.loads(store.get(state_key(model)))
    except (ObjectNotFound, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def model_summary(models: ModelStore, name: str, versions: list[ModelVersion] | None = None) -> ModelSummary:
    versions = models.versions(name) if versions is None else versions
    summary = ModelSummary(name=name, versions=len(versions))
    champion = models.champion(name)
    if champion is not None:
        summary.champion = champion.version
        summary.promoted_at = champion.promoted_at
        summary.champion_action = champion.action
        summary.champion_run = champion.run_id
        by_number = {v.version: v for v in versions}
        if champion.version in by_number:
            summary.metrics = _metrics(by_number[champion.version])
    summary.drift = _drift_verdict(models.store, name)
    summary.last_retrain_request = clean_number(_monitor_state(models.store, name).get("last_retrain_request"))
    return summary


def list_models(models: ModelStore) -> list[ModelSummary]:
    """Every model that has something in the store, by name."""
    return [model_summary(models, name) for name in models.models()]


def model_detail(models: ModelStore, name: str) -> ModelDetail | None:
    """Versions, history and reports of one model; None if the store knows nothing of it."""
    versions = models.versions(name)
    history = models.history(name)
    report_refs = reports.list_reports(models.store, name)
    if not versions and not history and not report_refs and name not in models.models():
        return None
    summary = model_summary(models, name, versions)
    rows = []
    for v in versions:
        verdict = v.verdict or {}
        gates = (v.validation or {}).get("gates") or verdict.get("gates") or []
        rows.append(VersionRow(
            version=v.version, status=v.status, is_champion=summary.champion == v.version,
            trained_at=clean_number(v.metadata.get("trained_at")), trained_by=str(v.metadata.get("trained_by") or ""),
            window=dict(v.metadata.get("window") or {}), row_counts=dict(v.metadata.get("row_counts") or {}),
            metrics=_metrics(v), gates=[_gate(g) for g in gates],
            failed_gates=[g.get("name", "?") for g in gates if not g.get("passed")],
            reason=str(verdict.get("reason") or ""),
            events=[h for h in history if v.version in (h.get("version"), h.get("previous"))],
        ))
    report_rows = []
    for ref in report_refs:
        s = reports.read_summary(models.store, ref) or {}
        report_rows.append({"ref": ref, "status": s.get("status"), "data_drift": s.get("data_drift"),
                            "quality_drop": s.get("quality_drop"), "drift_share": clean_number(s.get("drift_share")),
                            "drifted_columns": s.get("drifted_columns") or [], "trigger": s.get("trigger")})
    return ModelDetail(summary, sorted(rows, key=lambda r: r.version, reverse=True),
                       sorted(history, key=lambda h: h.get("promoted_at") or 0, reverse=True), report_rows)


def _gate(gate: dict[str, Any]) -> dict[str, Any]:
    return {"name": str(gate.get("name", "?")), "passed": bool(gate.get("passed")),
            "value": clean_number(gate.get("value")), "threshold": clean_number(gate.get("threshold")),
            "detail": str(gate.get("detail") or "")}


def metric_series(detail: ModelDetail, metric: str = MAIN_METRIC) -> list[dict[str, Any]]:
    """(version, value, status) for the chart, oldest version first; versions without the metric are left out."""
    points = []
    for row in sorted(detail.versions, key=lambda r: r.version):
        value = row.metrics.get(metric)
        if value is not None:
            points.append({"version": row.version, "value": value, "status": row.status,
                           "champion": row.is_champion})
    return points
