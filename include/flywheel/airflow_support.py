"""What DAG files share: the specs they are generated from, asset names, default args, settings.

DAG files import this module at parse time, so it imports only Airflow's SDK and the spec loader
(YAML + pydantic, both already loaded by Airflow); everything heavy is imported inside tasks.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flywheel.alerts import task_failure_callback
from flywheel.settings import Settings
from flywheel.specs import ModelSpec, load_specs

if TYPE_CHECKING:
    from airflow.sdk import Asset, Connection

log = logging.getLogger(__name__)

#: Every flywheel DAG starts here; with catchup off this only anchors the schedule.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "flywheel",
    # FLYWHEEL_TASK_RETRIES lets a test suite fail fast; deployments keep the default.
    "retries": int(os.environ.get("FLYWHEEL_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
    "on_failure_callback": task_failure_callback,
}
TAGS = ["flywheel"]


def dag_specs() -> list[ModelSpec]:
    """The specs the DAGs are generated from: local YAML files, read in milliseconds.

    An invalid spec raises here on purpose: Airflow shows the message (file, field, reason) as the
    DAG file's import error, which is where the person who added the spec will look.
    """
    return load_specs(Settings.from_env().specs_dir)


def drained_topics(specs: list[ModelSpec]) -> list[str]:
    return sorted({t for s in specs for t in s.drained_topics})


def task_suffix(name: str) -> str:
    """Topic and model names as task-id fragments (task ids allow dots, but underscores read better)."""
    return name.replace(".", "_").replace("-", "_")


def drained_asset(topic: str) -> Asset:
    """The Asset updated whenever new rows of ``topic`` land in the object store."""
    from airflow.sdk import Asset

    return Asset(name=f"flywheel.drained.{topic}", uri=f"flywheel://drained/{topic}", group="flywheel")


def _connection_extra(conn_id: str) -> tuple[Connection, dict[str, Any]] | None:
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no metadata DB outside a task
        return None
    return conn, dict(conn.extra_dejson or {})


def settings_from_airflow() -> Settings:
    """Settings for code running inside Airflow: credentials come from Airflow connections.

    ``FLYWHEEL_KAFKA_CONN_ID`` (default ``kafka_default``, the Kafka provider's) supplies librdkafka
    properties in its extra; ``FLYWHEEL_S3_CONN_ID`` (default ``aws_default``) supplies the access
    key (login), secret (password) and ``endpoint_url`` / ``region_name`` (extra). A connection that
    is not defined leaves the environment's settings in place, so the embedded default needs none.
    """
    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    kafka = _connection_extra(os.environ.get("FLYWHEEL_KAFKA_CONN_ID", "kafka_default"))
    if kafka is not None:
        _conn, extra = kafka
        bootstrap = extra.pop("bootstrap.servers", None)
        for client_only in ("group.id", "auto.offset.reset", "enable.auto.commit"):
            extra.pop(client_only, None)  # flywheel sets these per client
        if bootstrap:
            changes["kafka_bootstrap"] = str(bootstrap)
        changes["kafka_config"] = {**settings.kafka_config, **{k: str(v) for k, v in extra.items()}}
    s3 = _connection_extra(os.environ.get("FLYWHEEL_S3_CONN_ID", "aws_default"))
    if s3 is not None:
        conn, extra = s3
        changes.update({
            "s3_access_key": conn.login or settings.s3_access_key,
            "s3_secret_key": conn.password or settings.s3_secret_key,
            "s3_endpoint_url": extra.get("endpoint_url") or settings.s3_endpoint_url,
            "s3_region": extra.get("region_name") or settings.s3_region,
        })
    return settings.with_overrides(**changes) if changes else settings


def model_asset(model: str) -> Asset:
    """Updated when a new champion is promoted (or rolled back to) for ``model``."""
    from airflow.sdk import Asset

    return Asset(name=f"flywheel.model.{model}", uri=f"flywheel://models/{model}", group="flywheel")


def retrain_request_asset(model: str) -> Asset:
    """Drift monitoring updates this to ask for a retrain; the training DAG is scheduled on it."""
    from airflow.sdk import Asset

    return Asset(name=f"flywheel.retrain.{model}", uri=f"flywheel://retrain/{model}", group="flywheel")


def alarm_asset(settings: Settings | None = None) -> Asset:
    """Updated by the triggerer for each alarm on the control topic (``flywheel.alerts``).

    One watcher for all models: the Kafka message-queue trigger's consumer group comes from its
    connection, so per-model watchers on one topic would steal each other's messages. Each drift
    monitor picks the alarms about its own model from the triggering events.
    """
    from airflow.providers.apache.kafka.triggers.msg_queue import KafkaMessageQueueTrigger
    from airflow.sdk import Asset, AssetWatcher

    settings = settings or Settings.from_env()
    trigger = KafkaMessageQueueTrigger(
        topics=[settings.alerts_topic],
        kafka_config_id=os.environ.get("FLYWHEEL_KAFKA_CONN_ID", "kafka_default"),
        apply_function="flywheel.monitoring.control.alarm_payload",
        poll_timeout=1,
        poll_interval=1,
    )
    return Asset(name="flywheel.alarms", uri=f"flywheel://alarms/{settings.alerts_topic}", group="flywheel",
                 watchers=[AssetWatcher(name="flywheel_alarm_watcher", trigger=trigger)])
