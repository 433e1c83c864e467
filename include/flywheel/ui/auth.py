"""Who is asking, decided by Airflow itself: the Models view has no users, passwords or tokens of its own.

The Airflow UI keeps the session as a JWT in the HttpOnly ``_token`` cookie; API clients send it as
``Authorization: Bearer``. Airflow's own ``get_user`` dependency (``airflow.api_fastapi.core_api.security``)
reads either and validates it with the configured auth manager, exactly as for ``/api/v2``: no token
is 401, an invalid or forged one 403, an expired one 401. Authorization is Airflow's too: a model is
visible to whoever may read its training DAG (``model_training_<model>``), and a rollback is a normal
DAG run triggered through Airflow's REST API, which checks the user's right to trigger it.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import HTTPException, status

from flywheel.ui.airflow_api import training_dag_id

#: The signed-in Airflow user, as a route parameter type: Airflow's own dependency, which raises
#: 401/403 before the route (and so any read of the store) runs.
CurrentUser = GetUserDep


def can_read_model(user: Any, model: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=training_dag_id(model)),
                                                     user=user))


def require_model_access(user: Any, model: str) -> None:
    if not can_read_model(user, model):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"not allowed to read the DAG {training_dag_id(model)}")


def user_name(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:
        return "?"
