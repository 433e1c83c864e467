"""The Models view inside Airflow's UI: champions, versions, gates, drift reports and rollback.

``plugins/flywheel_models.py`` registers it with Airflow; it imports only ``flywheel.ui.lazy``, so the
scheduler, DAG processor and triggerer (which import plugins too) never load FastAPI routes,
templates or the model store. Nothing is imported here for the same reason.
"""
