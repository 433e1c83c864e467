"""
### Drift monitor

One DAG per model spec: `drift_monitor_<model>`. It compares the spec's drift window of drained
features with the champion's training sample (Evidently data drift), the live score distribution
with the champion's holdout scores (prediction drift), and, once labels have arrived, live AUC and
precision/recall with the champion's holdout AUC. Reports (HTML and JSON) are saved next to the
model version they judged.

When the drifted share of features or the AUC drop crosses the spec's thresholds it alerts (email,
Slack) and asks for a retrain by updating `flywheel.retrain.<model>`, at most once per cool-down.
Runs on the spec's schedule and at once when an alarm for the model arrives on the control topic
(`flywheel.alerts`). Manual runs take **window** (e.g. `2h`) and **as_of** (ISO time).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task
from flywheel.airflow_support import DEFAULT_ARGS, TAGS, alarm_asset, dag_specs, retrain_request_asset

ALARMS = alarm_asset()


def monitor_dag(model: str, cron: str) -> None:
    @dag(
        dag_id=f"drift_monitor_{model}",
        schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=ALARMS),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=[*TAGS, "monitoring", model],
        doc_md=__doc__,
        params={
            "window": Param("", type="string", title="Window", description="e.g. 2h; empty keeps the spec's"),
            "as_of": Param("", type="string", title="As of (ISO time)", description="End of the window; empty: now"),
        },
    )
    def drift_monitor() -> None:
        @task
        def check_drift() -> dict:
            from flywheel.monitoring.task import check

            return check(model, get_current_context())

        @task
        def decide_and_alert(summary: dict) -> dict:
            from flywheel.monitoring.task import decide_and_alert as decide

            return decide(model, summary, get_current_context())

        @task(outlets=[retrain_request_asset(model)])
        def request_retrain(decision: dict) -> dict:
            from flywheel.monitoring.task import request_retrain as request

            return request(model, decision)

        request_retrain(decide_and_alert(check_drift()))

    drift_monitor()


for spec in dag_specs():
    monitor_dag(spec.name, spec.drift.schedule)
