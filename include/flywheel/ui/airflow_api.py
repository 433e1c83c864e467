"""The DAGs the Models view links to and triggers, and the rollback request it sends to Airflow's API.

The rollback itself is not done here: the page asks Airflow's REST API (``POST /api/v2/dags/
model_rollback/dagRuns``) with the user's own session, so it is an ordinary DAG run, checked against
the user's permissions, logged in Airflow's audit log under their name, retried and alerted like any
other. This module only names the DAGs; the request body is the DAG's Params (model, version, reason).
"""

from __future__ import annotations

ROLLBACK_DAG_ID = "model_rollback"


def training_dag_id(model: str) -> str:
    return f"model_training_{model}"


def drift_dag_id(model: str) -> str:
    return f"drift_monitor_{model}"
