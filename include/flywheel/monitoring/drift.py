"""The drift check: Evidently data drift and prediction drift, and live quality once labels arrived.

Current data is the spec's drift window of drained features, sampled to ``drift.sample_rows``;
the reference is the sample of the champion's own training rows stored with its version. Columns are
passed explicitly and empty ones are left out (and reported), so the check never fails on a column
that has no values yet. Reports are saved as HTML and JSON next to the model version they judged.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.drain.reader import read_topic
from flywheel.events.labels import RECENCY_COLUMNS, latest_labels
from flywheel.features import to_matrix
from flywheel.models.store import ModelStore
from flywheel.monitoring.reports import report_prefix
from flywheel.settings import Settings
from flywheel.specs import ModelSpec, parse_duration

log = logging.getLogger(__name__)


def _sample(table: pa.Table, rows: int, seed: int) -> pa.Table:
    if table.num_rows <= rows:
        return table
    picked = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=rows, replace=False))
    return table.take(pa.array(picked))


def _drifted(method: str, value: float, threshold: float) -> bool:
    """Evidently reports distances (drift when large) or p-values (drift when small)."""
    return value < threshold if "p_value" in method or "p-value" in method else value >= threshold


def _value_drift_rows(snapshot_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {}
    for metric in snapshot_dict["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            value = float(metric["value"])
            rows[config["column"]] = {"method": config["method"], "value": round(value, 6),
                                      "threshold": config["threshold"],
                                      "drifted": _drifted(config["method"], value, config["threshold"])}
    return rows


def evidently_data_drift(current: Any, reference: Any, columns: list[str]) -> tuple[Any, dict[str, Any]]:
    """Run Evidently's DataDriftPreset on explicit columns; returns (snapshot, per-column results)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset(columns=columns)]).run(current, reference)
    return snapshot, _value_drift_rows(snapshot.dict())


def evidently_value_drift(current: Any, reference: Any, column: str) -> tuple[Any, dict[str, Any]]:
    from evidently import Report
    from evidently.metrics import ValueDrift

    snapshot = Report([ValueDrift(column=column)]).run(current, reference)
    return snapshot, _value_drift_rows(snapshot.dict()).get(column, {})


def live_quality(store: Any, spec: ModelSpec, since: datetime, until: datetime, threshold: float) -> dict[str, Any] | None:
    """AUC and precision/recall at the threshold of the drained predictions whose labels arrived."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    if not spec.label or not spec.topics.labels:
        return None
    key = spec.key_field
    predictions = read_topic(store, spec.topics.predictions, since, until, columns=[key, "score", "model_version"])
    labels = read_topic(store, spec.topics.labels, since, None,
                        columns=[spec.label_key_field, spec.label.field, *RECENCY_COLUMNS])
    if predictions is None or labels is None:
        return None
    labels = labels.rename_columns([key if c == spec.label_key_field else c for c in labels.column_names])
    labels = latest_labels(labels, key, spec.label.field)
    # one prediction per event (at-least-once scoring may repeat one): keep the last one drained
    predictions = predictions.group_by(key, use_threads=False).aggregate([("score", "last"), ("model_version", "max")])
    joined = predictions.join(labels, keys=key, join_type="inner")
    if joined.num_rows == 0:
        return None
    y = np.asarray(pc.cast(joined.column("label"), pa.float64()).to_numpy(zero_copy_only=False))
    scores = joined.column("score_last").to_numpy()
    both = len(np.unique(y)) == 2
    return {
        "rows": int(joined.num_rows),
        "positives": int(y.sum()),
        "auc": float(roc_auc_score(y, scores)) if both else None,
        "precision": float(precision_score(y, scores >= threshold, zero_division=0)),
        "recall": float(recall_score(y, scores >= threshold, zero_division=0)),
        "model_versions": sorted(set(joined.column("model_version_max").to_pylist())),
    }


def run_drift_check(settings: Settings, spec: ModelSpec, as_of: datetime, *, window: str | None = None,
                    trigger: str = "schedule") -> dict[str, Any]:
    """Judge the champion on the window ending at ``as_of``; save the reports; return the summary."""
    started = time.perf_counter()
    store = settings.open_store()
    models = ModelStore(store)
    champion = models.champion(spec.name)
    if champion is None:
        return {"status": "skipped", "reason": f"{spec.name} has no champion to judge yet"}
    length = parse_duration(window) if window else spec.drift.window
    since = as_of - length
    version = models.get_version(spec.name, champion.version)
    reference_table = pq.read_table(pa.BufferReader(models.load_file(spec.name, champion.version, "reference.parquet")))
    current_table = read_topic(store, spec.topics.features, since, as_of, columns=[*spec.feature_names,
                                                                                   spec.event_time_field or "_timestamp"])
    if current_table is None or current_table.num_rows == 0:
        return {"status": "skipped", "reason": f"no drained {spec.topics.features} rows between {since} and {as_of}"}
    time_field = spec.event_time_field or "_timestamp"
    # Pick the sample's row positions first and copy only those rows: filtering all columns of a large
    # window before sampling it costs more than the sampling saves.
    in_window = pc.and_(pc.greater_equal(current_table.column(time_field), pa.scalar(since)),
                        pc.less(current_table.column(time_field), pa.scalar(as_of)))
    positions = np.flatnonzero(in_window.to_numpy(zero_copy_only=False))
    rows_in_window = len(positions)
    if rows_in_window == 0:
        return {"status": "skipped", "reason": f"no {spec.topics.features} events between {since} and {as_of}"}
    if rows_in_window > spec.drift.sample_rows:
        picked = np.random.default_rng(int(as_of.timestamp())).choice(rows_in_window, size=spec.drift.sample_rows,
                                                                       replace=False)
        positions = positions[np.sort(picked)]
    current_table = current_table.take(pa.array(positions))
    reference_table = _sample(reference_table, spec.drift.sample_rows, seed=0)

    schema = version.metadata["feature_schema"]
    empty = [e["name"] for e in schema if current_table.column(e["name"]).null_count == current_table.num_rows
             or reference_table.column(e["name"]).null_count == reference_table.num_rows]
    columns = [e["name"] for e in schema if e["name"] not in empty]
    import pandas as pd

    current = pd.DataFrame(to_matrix(current_table, schema), columns=[e["name"] for e in schema])[columns]
    reference = pd.DataFrame(to_matrix(reference_table, schema), columns=[e["name"] for e in schema])[columns]
    evidently_started = time.perf_counter()
    snapshot, per_column = evidently_data_drift(current, reference, columns)
    drifted = sorted(c for c, r in per_column.items() if r["drifted"])
    drift_share = len(drifted) / len(columns) if columns else 0.0

    prediction_drift: dict[str, Any] | None = None
    predictions = read_topic(store, spec.topics.predictions, since, as_of, columns=["score"])
    if predictions is not None and predictions.num_rows:
        import lightgbm as lgb

        holdout = pq.read_table(pa.BufferReader(models.load_file(spec.name, champion.version, "holdout.parquet")))
        booster = lgb.Booster(model_str=models.load_file(spec.name, champion.version).decode())
        names = [e["name"] for e in schema]
        reference_scores = booster.predict(np.column_stack([holdout.column(n).to_numpy() for n in names]), num_threads=1)
        score_now = _sample(predictions, spec.drift.sample_rows, seed=1).column("score").to_numpy()
        _, prediction_drift = evidently_value_drift(pd.DataFrame({"score": score_now}),
                                                    pd.DataFrame({"score": reference_scores}), "score")
        prediction_drift["rows"] = int(predictions.num_rows)
    evidently_seconds = time.perf_counter() - evidently_started

    quality = live_quality(store, spec, since, as_of, spec.scoring.threshold)
    champion_auc = version.metrics.get("auc")
    auc_drop = None
    if quality and quality.get("auc") is not None and champion_auc is not None:
        auc_drop = round(champion_auc - quality["auc"], 6)
    prefix = report_prefix(spec.name, champion.version, as_of)
    summary: dict[str, Any] = {
        "status": "checked", "model": spec.name, "version": champion.version, "trigger": trigger,
        "window": {"start": since.isoformat(), "end": as_of.isoformat()},
        "rows": {"current_in_window": rows_in_window, "current_sampled": current_table.num_rows,
                 "reference": reference_table.num_rows},
        "drift_share": round(drift_share, 4), "drifted_columns": drifted, "empty_columns": empty,
        "columns": per_column, "prediction_drift": prediction_drift, "live_quality": quality,
        "champion_auc": champion_auc, "auc_drop": auc_drop,
        "data_drift": drift_share >= spec.drift.drift_share,
        "quality_drop": auc_drop is not None and auc_drop >= spec.drift.max_auc_drop,
        "report_html": store.uri(prefix + "drift.html"), "report_json": store.uri(prefix + "summary.json"),
        "seconds": {"evidently": round(evidently_seconds, 3)},
    }
    store.put(prefix + "drift.html", snapshot.get_html_str(as_iframe=False).encode())
    store.put(prefix + "evidently.json", json.dumps(snapshot.dict(), default=str).encode())
    summary["seconds"]["total"] = round(time.perf_counter() - started, 3)  # all but the Kafka summary below
    store.put(prefix + "summary.json", json.dumps(summary, default=str, indent=1).encode())
    publish_summary(settings, summary)
    return summary


def publish_summary(settings: Settings, summary: dict[str, Any]) -> None:
    """The drift verdict on ``flywheel.metrics``, so anything can react to it through Kafka."""
    try:
        from confluent_kafka import Producer

        from flywheel.kafka_config import client_config

        # One message: the idempotent producer's id handshake would cost more than the send.
        producer = Producer(client_config(settings, "producer", **{"enable.idempotence": False}))
        slim = {k: v for k, v in summary.items() if k != "columns"} | {"kind": "drift"}
        producer.produce(settings.metrics_topic, key=summary["model"].encode(), value=json.dumps(slim, default=str).encode())
        producer.flush(settings.broker_timeout_s)
    except Exception as exc:  # the report is saved; a missing metric is not worth failing the check
        log.warning("could not publish the drift summary: %s", exc)

