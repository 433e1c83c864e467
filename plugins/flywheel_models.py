"""The flywheel Models view in Airflow's UI: a FastAPI app under /flywheel and a "Models" entry in the nav.

Only registration lives here; the view is ``flywheel.ui`` (built on its first request, see
``flywheel.ui.lazy``), so importing this file in the scheduler or DAG processor costs nothing.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from flywheel.ui.lazy import LazyASGIApp

URL_PREFIX = "/flywheel"


class FlywheelModelsPlugin(AirflowPlugin):
    name = "flywheel_models"
    fastapi_apps = [{
        "app": LazyASGIApp("flywheel.ui.app:create_app", mount_prefix=URL_PREFIX),
        "url_prefix": URL_PREFIX,
        "name": "flywheel Models view",
    }]
    # Embedded in the UI at /plugin/models; href is relative to the API server's base URL.
    external_views = [{"name": "Models", "href": "flywheel/models", "url_route": "models", "destination": "nav",
                       "nav_top_level": True}]
