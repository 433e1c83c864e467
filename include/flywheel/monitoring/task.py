"""The drift monitor DAG's task bodies."""

from __future__ import annotations

from typing import Any


def check(model: str, context: Any) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    from flywheel.monitoring.control import alarms_for
    from flywheel.monitoring.drift import run_drift_check
    from flywheel.training.task import run_time, settings_and_spec

    triggered = context.get("triggering_asset_events")
    trigger = "schedule"
    if triggered:
        alarms = alarms_for(model, triggered)
        if not alarms:
            raise AirflowSkipException(f"the alarm that started this run concerns another model than {model}")
        trigger = f"alarm: {alarms[0]['reason']} from {alarms[0]['source']}"
    settings, spec = settings_and_spec(model)
    params = context.get("params") or {}
    summary = run_drift_check(settings, spec, run_time(context), window=params.get("window") or None,
                              trigger=trigger)
    if summary["status"] == "skipped":
        raise AirflowSkipException(summary["reason"])
    return {k: summary[k] for k in ("model", "version", "drift_share", "drifted_columns", "data_drift",
                                    "quality_drop", "auc_drop", "report_html", "trigger")} | {
        "live_auc": (summary["live_quality"] or {}).get("auc")}


def decide_and_alert(model: str, summary: dict[str, Any], context: Any) -> dict[str, Any]:
    from flywheel.alerts import alert
    from flywheel.monitoring.decision import decide
    from flywheel.training.task import run_time, settings_and_spec

    settings, spec = settings_and_spec(model)
    decision = decide(settings.open_store(), spec, summary, run_time(context))
    for condition in decision["alerts"]:
        if condition == "data_drift":
            message = (f"data drift on {len(summary['drifted_columns'])} features "
                       f"({summary['drift_share']:.0%} >= {spec.drift.drift_share:.0%}): "
                       f"{', '.join(summary['drifted_columns'][:8])}; champion v{summary['version']}")
            alert("drift", model, message, link=summary["report_html"], retrain_requested=decision["retrain"])
        else:
            message = (f"live AUC {summary['live_auc']:.3f} dropped {summary['auc_drop']:.3f} below champion "
                       f"v{summary['version']}'s holdout AUC")
            alert("quality", model, message, link=summary["report_html"], retrain_requested=decision["retrain"])
    return decision


def request_retrain(model: str, decision: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    if not decision["retrain"]:
        reason = "no drift" if not decision["conditions"] else "a retrain was already requested within the cool-down"
        raise AirflowSkipException(reason)
    return {"model": model, "conditions": decision["conditions"]}
