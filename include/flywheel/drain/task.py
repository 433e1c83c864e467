"""The drain as an Airflow task body: settings from Airflow, parameters from the run, a small summary."""

from __future__ import annotations

from typing import Any


def drain_for_run(topic: str, params: dict[str, Any], owner: str) -> dict[str, Any]:
    """Drain ``topic`` unless the run's ``topics`` param leaves it out; returns the summary for XCom.

    Raises AirflowSkipException when the topic is not selected or nothing new arrived, so the UI
    shows which topics moved and downstream assets are only updated by real data.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    from flywheel.airflow_support import settings_from_airflow
    from flywheel.drain import drain_topic
    from flywheel.drain.compact import compact_topic

    selected = params.get("topics") or []
    if selected and topic not in selected:
        raise AirflowSkipException(f"{topic} is not among this run's topics {selected}")
    settings = settings_from_airflow()
    summary = drain_topic(
        settings, topic, owner=owner,
        max_records=params.get("max_records"), max_seconds=params.get("max_seconds"), workers=params.get("workers"),
    )
    # Settled hours are merged into one file each here, so readers never face thousands of small files.
    summary["compaction"] = compact_topic(settings.open_store(), topic, compression=settings.parquet_compression,
                                          owner=owner)
    if summary["rows"] == 0 and summary["rejected"] == 0:
        raise AirflowSkipException(f"nothing new on {topic} (partitions at {summary['partitions']})")
    return summary
