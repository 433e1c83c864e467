"""
### Model rollback

Points a model's champion back to an earlier version: choose the **model** and the **version** (see
`flywheel models show <model>` or the Models view), and say why. The version's files are verified
against their checksums first; the change is a compare-and-swap on the champion pointer, recorded in
the model's history and announced on `flywheel.model-events`, so running scorers swap to it.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from flywheel.airflow_support import DEFAULT_ARGS, TAGS, dag_specs

MODELS = [spec.name for spec in dag_specs()]


@dag(
    dag_id="model_rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=[*TAGS, "rollback"],
    doc_md=__doc__,
    params={
        "model": Param(MODELS[0] if MODELS else "", type="string", enum=MODELS or [""], title="Model"),
        "version": Param(1, type="integer", minimum=1, title="Version to make champion"),
        "reason": Param("manual rollback", type="string", minLength=3, title="Reason"),
    },
)
def model_rollback() -> None:
    @task
    def rollback_champion() -> dict:
        from flywheel.training.task import roll_back

        context = get_current_context()
        params = context["params"]
        return roll_back(params["model"], int(params["version"]), params["reason"], context["dag_run"].run_id)

    rollback_champion()


model_rollback()
