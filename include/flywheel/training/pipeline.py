"""The model lifecycle as three steps the training DAG (and ``flywheel models train``) runs in order.

``train_challenger`` builds the data and a new version; ``validate_challenger`` scores it and the
champion on the same holdout and records the gates; ``promote_or_reject`` moves the champion pointer
by compare-and-swap from the champion it was compared with, so two racing trainings cannot both win.
Each step reads its inputs from the model store, so steps hand on only the version number.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.memory import batch_memory
from flywheel.models.events import publish_model_event
from flywheel.models.store import ModelIntegrityError, ModelStore, ModelStoreError
from flywheel.settings import Settings
from flywheel.specs import ModelSpec
from flywheel.storage.parquet import table_bytes
from flywheel.training import model as lgbm
from flywheel.training.dataset import NotEnoughData, Split, load_training_data, window_for
from flywheel.training.gates import evaluate_gates

log = logging.getLogger(__name__)


def _split_table(split: Split, names: list[str]) -> pa.Table:
    columns = {n: split.X[:, i] for i, n in enumerate(names)}
    return pa.table({**columns, "_label": split.y, "_id": split.ids})


def _read_split(data: bytes, names: list[str]) -> Split:
    table = pq.read_table(pa.BufferReader(data))
    X = np.column_stack([table.column(n).to_numpy() for n in names]) if names else np.empty((table.num_rows, 0))
    return Split(X, table.column("_label").to_numpy(), table.column("_id"))


@batch_memory()
def train_challenger(settings: Settings, spec: ModelSpec, *, as_of: datetime, run_id: str = "",
                     window: str | None = None, label_delay: str | None = None) -> dict[str, Any]:
    """Train on the window ending at ``as_of``; return {"status": "trained", "version": N} or a skip reason."""
    store = settings.open_store()
    models = ModelStore(store)
    win = window_for(spec, as_of, window=window, label_delay=label_delay)
    started = time.perf_counter()
    import lightgbm  # noqa: F401 - imported before the clock stops, so load_seconds counts it
    try:
        data = load_training_data(store, spec, win)
    except NotEnoughData as exc:
        log.info("%s: not training: %s", spec.name, exc)
        return {"status": "skipped", "reason": str(exc), "window": win.as_dict()}
    load_seconds = time.perf_counter() - started
    trained = lgbm.train_model(spec, data)
    names = [e["name"] for e in data.schema]
    onnx_bytes = lgbm.to_onnx(trained.booster, len(names))
    version = models.claim_version(spec.name, owner=run_id or "cli")
    metadata = {
        "spec_hash": spec.spec_hash,
        "spec_name": spec.name,
        "window": win.as_dict(),
        "row_counts": data.counts,
        "feature_schema": data.schema,
        "label": spec.label.field if spec.label else None,
        "threshold": spec.scoring.threshold,
        "params": lgbm.lightgbm_params(spec),
        "best_iteration": trained.best_iteration,
        "feature_importance": trained.importance,
        "library_versions": lgbm.library_versions(),
        "trained_by": run_id,
        "trained_at": time.time(),
        "timings": {"load_seconds": round(load_seconds, 3), "train_seconds": round(trained.train_seconds, 3)},
    }
    models.write_version(spec.name, version, trained.text, metadata, extra_files={
        "model.onnx": onnx_bytes,
        # No dictionaries for the holdout: its encoded floats and ids are nearly unique, and Parquet
        # would build a dictionary per column only to abandon it.
        "holdout.parquet": table_bytes(_split_table(data.holdout, names), compression=settings.parquet_compression,
                                       use_dictionary=False),
        "reference.parquet": table_bytes(data.reference, compression=settings.parquet_compression)
        if data.reference is not None else b"",
    })
    log.info("%s: trained v%d on %s", spec.name, version, data.counts)
    return {"status": "trained", "version": version, "rows": data.counts}


@batch_memory()
def validate_challenger(settings: Settings, spec: ModelSpec, version: int) -> dict[str, Any]:
    """Score challenger and champion on the challenger's holdout; record every gate with its value."""
    models = ModelStore(settings.open_store())
    challenger = models.get_version(spec.name, version)
    names = [e["name"] for e in challenger.metadata["feature_schema"]]
    holdout = _read_split(models.load_file(spec.name, version, "holdout.parquet"), names)
    onnx_bytes = models.load_file(spec.name, version, "model.onnx")
    champion, champion_etag = models.champion_with_etag(spec.name)
    # Three single-threaded jobs side by side: ONNX Runtime on every holdout row, LightGBM on the
    # challenger, LightGBM on the champion. CPU-bound all three; one thread each keeps both cores
    # busy without OpenMP threads of one job waiting at barriers for cores the others hold.
    with ThreadPoolExecutor(max_workers=2) as pool:
        onnx_run = pool.submit(lgbm.onnx_probabilities, onnx_bytes, holdout.X, threads=1)
        champion_run = pool.submit(_champion_metrics, models, spec, champion, names, holdout, version) \
            if champion is not None else None
        model_text = models.load_file(spec.name, version)
        booster = lgbm.load_booster(model_text)
        scores = lgbm.predict(booster, holdout.X, threads=1)
        metrics = lgbm.evaluate(scores, holdout, spec.scoring.threshold)
        champion_metrics, champion_problem = champion_run.result() if champion_run else (None, None)
        onnx_probabilities = onnx_run.result()
    counts = challenger.metadata["row_counts"]
    # Every holdout row, against the LightGBM scores above (no second LightGBM pass).
    onnx_diff = lgbm.onnx_agreement(onnx_probabilities, booster, holdout.X, scores)
    gates = evaluate_gates(
        spec.gates,
        rows=counts["labelled_events"], positives=counts["positives"], metrics=metrics,
        score_min=float(scores.min()), score_max=float(scores.max()), score_std=float(scores.std()),
        champion_metrics=champion_metrics, champion_version=champion.version if champion else None,
        latency_us=lgbm.single_row_latency_us(booster, holdout.X),
        model_bytes=len(model_text),
        onnx_diff=onnx_diff,
    )
    report = {
        "version": version,
        "metrics": metrics,
        "champion": {"version": champion.version, "etag": champion_etag, "metrics": champion_metrics,
                     "problem": champion_problem}
        if champion else None,
        "gates": [g.as_dict() for g in gates],
        "passed": all(g.passed for g in gates),
    }
    models.store.put(models.version_key(spec.name, version, "validation.json"),
                     json.dumps(report, sort_keys=True, default=str).encode(), if_none_match=True)
    return {"version": version, "passed": report["passed"], "auc": metrics["auc"],
            "failed": [g.name for g in gates if not g.passed]}


def _champion_metrics(models: ModelStore, spec: ModelSpec, champion: Any, names: list[str], holdout: Split,
                      version: int) -> tuple[dict[str, float] | None, str | None]:
    """The champion's metrics on the challenger's holdout, or why there are none."""
    champ_names = [e["name"] for e in models.get_version(spec.name, champion.version).metadata["feature_schema"]]
    if champ_names != names:
        log.warning("%s: champion v%d has other features; comparing on absolute gates only", spec.name,
                    champion.version)
        return None, None
    try:
        champ_booster = lgbm.load_booster(models.load_file(spec.name, champion.version))
    except ModelIntegrityError as exc:
        # A damaged champion must not block every retraining until someone rolls back by hand:
        # the challenger is judged on the absolute gates, and the report says why.
        problem = f"champion v{champion.version} is unreadable: {exc}"
        log.error("%s: %s; judging v%d on the absolute gates only", spec.name, problem, version)
        return None, problem
    scores = lgbm.predict(champ_booster, holdout.X, threads=1)
    return lgbm.evaluate(scores, holdout, spec.scoring.threshold), None


def promote_or_reject(settings: Settings, spec: ModelSpec, version: int, *, run_id: str = "") -> dict[str, Any]:
    """Promote a version that passed every gate, from the champion it was compared with; else reject it."""
    models = ModelStore(settings.open_store())
    report = json.loads(models.store.get(models.version_key(spec.name, version, "validation.json")))
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        reason = "; ".join(f"{g['name']}: {g['detail']} (threshold {g['threshold']})" for g in failed)
        models.set_verdict(spec.name, version, "rejected", reason=reason, gates=report["gates"], run_id=run_id)
        return {"status": "rejected", "version": version, "reason": reason}
    expected = report["champion"]["etag"] if report["champion"] else None
    try:
        champion = models.set_champion(spec.name, version, expected_etag=expected, action="promote", run_id=run_id,
                                       reason=f"passed {len(report['gates'])} gates, holdout AUC "
                                              f"{report['metrics']['auc']:.4f}")
    except ModelStoreError as exc:
        models.set_verdict(spec.name, version, "rejected", reason=str(exc), gates=report["gates"], run_id=run_id)
        return {"status": "rejected", "version": version, "reason": str(exc)}
    models.set_verdict(spec.name, version, "promoted", gates=report["gates"], run_id=run_id)
    event = model_event(models, spec.name, version, "promote", champion.previous, report["metrics"])
    publish_model_event(settings, event)
    return {"status": "promoted", "version": version, "previous": champion.previous, "auc": report["metrics"]["auc"]}


def model_event(models: ModelStore, model: str, version: int, action: str, previous: int | None,
                metrics: dict[str, Any]) -> dict[str, Any]:
    meta = models.get_version(model, version).metadata
    return {"model": model, "version": version, "action": action, "previous": previous,
            "location": meta["location"], "sha256": meta["sha256"], "metrics": metrics, "at": time.time()}


def rollback(settings: Settings, model: str, version: int, *, reason: str = "", run_id: str = "") -> dict[str, Any]:
    """Point the champion back at an earlier version (verified intact first), with event and history."""
    models = ModelStore(settings.open_store())
    models.load_file(model, version)  # refuses a missing or tampered model file
    target = models.get_version(model, version)
    current, etag = models.champion_with_etag(model)
    if current is not None and current.version == version:
        raise ModelStoreError(f"{model} v{version} is already the champion")
    champion = models.set_champion(model, version, expected_etag=etag, action="rollback", run_id=run_id,
                                   reason=reason or "manual rollback")
    publish_model_event(settings, model_event(models, model, version, "rollback", champion.previous, target.metrics))
    return {"status": "rolled back", "model": model, "version": version, "previous": champion.previous}
