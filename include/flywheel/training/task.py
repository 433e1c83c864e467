"""The training DAG's task bodies: read the run's time and Params, call the pipeline, skip with reasons."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flywheel.specs import ModelSpec


def settings_and_spec(model: str) -> tuple[Any, ModelSpec]:
    """Settings from Airflow and the model's spec, read at run time (the spec may have changed)."""
    from flywheel.airflow_support import settings_from_airflow
    from flywheel.specs import find_spec

    settings = settings_from_airflow()
    return settings, find_spec(settings.specs_dir, model)


def run_time(context: Any) -> datetime:
    """The end of the data interval for scheduled runs; when the run was asked for otherwise.

    Manual and asset-triggered runs have no data interval in Airflow 3, and ``datetime.now()`` would
    make a retry train on a different window than the first try.
    """
    params = context.get("params") or {}
    if params.get("as_of"):
        return datetime.fromisoformat(str(params["as_of"]).replace("Z", "+00:00")).astimezone(UTC)
    end = context.get("data_interval_end")
    if end is not None:
        return end.astimezone(UTC)
    return context["dag_run"].run_after.astimezone(UTC)


def train(model: str, context: Any) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    from flywheel.training.pipeline import train_challenger

    settings, spec = settings_and_spec(model)
    params = context.get("params") or {}
    outcome = train_challenger(settings, spec, as_of=run_time(context), run_id=context["dag_run"].run_id,
                               window=params.get("window") or None, label_delay=params.get("label_delay") or None)
    if outcome["status"] == "skipped":
        raise AirflowSkipException(f"not training {model}: {outcome['reason']}")
    return outcome


def validate(model: str, trained: dict[str, Any]) -> dict[str, Any]:
    from flywheel.training.pipeline import validate_challenger

    settings, spec = settings_and_spec(model)
    return validate_challenger(settings, spec, int(trained["version"]))


def promote(model: str, validated: dict[str, Any], run_id: str) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowSkipException

    from flywheel.alerts import alert
    from flywheel.training.pipeline import promote_or_reject

    settings, spec = settings_and_spec(model)
    outcome = promote_or_reject(settings, spec, int(validated["version"]), run_id=run_id)
    if outcome["status"] == "rejected":
        alert("rejected", model, f"challenger v{outcome['version']} rejected: {outcome['reason']}", run_id=run_id)
        raise AirflowSkipException(f"v{outcome['version']} rejected: {outcome['reason']}")
    alert("promoted", model, f"v{outcome['version']} is the new champion (was v{outcome['previous']}), "
          f"holdout AUC {outcome['auc']:.4f}", run_id=run_id)
    return outcome


def roll_back(model: str, version: int, reason: str, run_id: str) -> dict[str, Any]:
    """Roll back; a refused rollback (unknown or tampered version) fails at once instead of retrying."""
    from airflow.sdk.exceptions import AirflowFailException

    from flywheel.alerts import alert
    from flywheel.models.store import ModelStoreError
    from flywheel.training.pipeline import rollback

    settings, _ = settings_and_spec(model)
    try:
        outcome = rollback(settings, model, version, reason=reason, run_id=run_id)
    except ModelStoreError as exc:
        raise AirflowFailException(str(exc)) from None
    alert("rollback", model, f"champion rolled back to v{version} (was v{outcome['previous']}): {reason}",
          run_id=run_id)
    return outcome
