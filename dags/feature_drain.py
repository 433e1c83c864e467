"""
### Feature drain

Copies every topic the model specs name (features, labels, predictions) from Kafka into the object
store as Parquet, exactly once. One task per topic; each run is bounded in records and seconds, so a
backlog is caught up over several runs. Bad events are set aside under `rejected/` (and `<topic>.dlq`)
with their reason. A topic with new rows updates its `flywheel.drained.<topic>` asset. After draining,
each task merges the small files of its topic's settled hours (committed, written over an hour ago)
into one file per hour, without a reader ever seeing a row twice.

Manual runs take **topics** (empty: all) and optional **max_records** / **max_seconds** overrides.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from flywheel.airflow_support import DEFAULT_ARGS, TAGS, dag_specs, drained_asset, drained_topics, task_suffix

SPECS = dag_specs()
TOPICS = drained_topics(SPECS)
EVERY_MINUTES = min((s.drain.schedule_minutes for s in SPECS), default=5)


@dag(
    dag_id="feature_drain",
    schedule=pendulum.duration(minutes=EVERY_MINUTES),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "drain"],
    doc_md=__doc__,
    params={
        "topics": Param([], type="array", items={"type": "string", "enum": TOPICS} if TOPICS else {"type": "string"},
                        title="Topics", description="Topics to drain; empty drains all."),
        "max_records": Param(None, type=["null", "integer"], minimum=1, title="Max records per topic"),
        "max_seconds": Param(None, type=["null", "number"], exclusiveMinimum=0, title="Max seconds per topic"),
    },
)
def feature_drain() -> None:
    for topic in TOPICS:
        asset = drained_asset(topic)

        @task(task_id=f"drain_{task_suffix(topic)}", outlets=[asset])
        def drain(topic: str = topic, asset=asset) -> dict:  # noqa: B008 - bind the loop variables
            from flywheel.drain.task import drain_for_run

            context = get_current_context()
            ti = context["ti"]
            summary = drain_for_run(topic, dict(context["params"]), owner=f"airflow:{ti.dag_id}:{ti.task_id}")
            context["outlet_events"][asset].extra = {"rows": summary["rows"], "partitions": summary["partitions"]}
            return summary

        drain()


feature_drain()
