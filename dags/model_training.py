"""
### Model training

One DAG per model spec: `model_training_<model>`. It trains a LightGBM challenger on the spec's window
of drained, labelled data, validates it against the current champion on the same holdout behind the
spec's quality gates, and promotes it (compare-and-swap on the champion pointer, an event on
`flywheel.model-events`, the `flywheel.model.<model>` asset) or rejects it with the failed gates.

Runs on the spec's schedule and whenever drift monitoring asks for a retrain (`flywheel.retrain.<model>`).
Manual runs take **window** (e.g. `3d`), **label_delay** (e.g. `30m`) and **as_of** (ISO time).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task
from flywheel.airflow_support import DEFAULT_ARGS, TAGS, dag_specs, model_asset, retrain_request_asset

DURATION = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*$"


def training_dag(model: str, cron: str) -> None:
    @dag(
        dag_id=f"model_training_{model}",
        schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"),
                                     assets=retrain_request_asset(model)),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=[*TAGS, "training", model],
        doc_md=__doc__,
        params={
            "window": Param("", type="string", pattern=f"({DURATION})|^$", title="Training window",
                            description="Overrides the spec's window, e.g. 3d; empty keeps the spec's."),
            "label_delay": Param("", type="string", pattern=f"({DURATION})|^$", title="Label delay",
                                 description="Only events older than this are used; empty keeps the spec's."),
            "as_of": Param("", type="string", title="As of (ISO time)",
                           description="End of the window; empty means the run's time."),
        },
    )
    def model_training() -> None:
        @task
        def train_challenger() -> dict:
            from flywheel.training.task import train

            return train(model, get_current_context())

        @task
        def validate_challenger(trained: dict) -> dict:
            from flywheel.training.task import validate

            return validate(model, trained)

        @task(outlets=[model_asset(model)])
        def promote_or_reject(validated: dict) -> dict:
            from flywheel.training.task import promote

            return promote(model, validated, get_current_context()["dag_run"].run_id)

        promote_or_reject(validate_challenger(train_challenger()))

    model_training()


for spec in dag_specs():
    training_dag(spec.name, spec.training.schedule)
