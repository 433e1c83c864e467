"""A model store with a few versions, a rollback-able history and a drift report, written through the
package's own ModelStore (no training needed), for the Models view's API and browser tests."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from flywheel.models.store import ModelStore
from flywheel.monitoring.decision import state_key
from flywheel.monitoring.reports import report_prefix
from flywheel.storage import ObjectStore

REPORT_HTML = """<!doctype html><html><head><title>Evidently drift report</title></head><body>
<h1 id="evidently-title">Data drift report</h1><p id="drifted">3 of 8 features drifted</p>
<script>document.getElementById("drifted").dataset.rendered = "yes";</script></body></html>"""


@dataclass
class Seeded:
    model: str
    versions: list[int]  # oldest first: promoted, promoted (champion), rejected
    champion: int
    report_prefix: str
    aucs: dict[int, float] = field(default_factory=dict)

    @property
    def report_html_key(self) -> str:
        return self.report_prefix + "drift.html"

    @property
    def report_stamp(self) -> str:
        return self.report_prefix.rstrip("/").rsplit("/", 1)[1]


def _gates(auc: float, passed: bool) -> list[dict]:
    return [
        {"name": "min_rows", "passed": True, "value": 5000.0, "threshold": 1000.0, "detail": "5000 labelled rows"},
        {"name": "min_auc", "passed": passed, "value": auc, "threshold": 0.9, "detail": f"holdout AUC {auc:.4f}"},
        {"name": "vs_champion", "passed": passed, "value": 0.02 if passed else -0.04, "threshold": -0.01,
         "detail": "AUC change against the champion"},
    ]


def evidently_report_html(rows: int = 400) -> str:
    """A real (small) Evidently drift report, as the drift check stores it: self-contained HTML and scripts."""
    import numpy as np
    import pandas as pd
    from flywheel.monitoring.drift import evidently_data_drift

    rng = np.random.default_rng(7)
    reference = pd.DataFrame({"amount": rng.normal(50, 10, rows), "ip_risk": rng.random(rows)})
    current = pd.DataFrame({"amount": rng.normal(80, 10, rows), "ip_risk": rng.random(rows)})
    snapshot, _ = evidently_data_drift(current, reference, ["amount", "ip_risk"])
    return snapshot.get_html_str(as_iframe=False)


@functools.lru_cache(maxsize=8)
def tiny_model_text(seed: int) -> bytes:
    """A real (tiny) LightGBM model on the seeded schema: the store refuses anything that is not one."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.random((200, 1))
    y = (X[:, 0] + 0.2 * rng.random(200) > 0.6).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5, "seed": seed}
    return lgb.train(params, lgb.Dataset(X, y, feature_name=["amount"]), 3).model_to_string().encode()


def seed_models(store: ObjectStore, model: str = "fraud", *, with_report: bool = True,
                report_html: str = REPORT_HTML) -> Seeded:
    """Three versions (v_a promoted, v_b promoted and champion, v_c rejected), history and one report."""
    models = ModelStore(store)
    now = datetime.now(UTC).replace(microsecond=0)
    aucs, numbers = {}, []
    for i, (auc, status) in enumerate([(0.912, "promoted"), (0.931, "promoted"), (0.884, "rejected")]):
        version = models.claim_version(model, owner="seed")
        numbers.append(version)
        aucs[version] = auc
        end = now - timedelta(days=3 - i)
        models.write_version(model, version, tiny_model_text(seed=version), {
            "spec_name": model, "window": {"start": (end - timedelta(days=7)).isoformat(), "end": end.isoformat()},
            "row_counts": {"labelled_events": 5000 + i, "positives": 60 + i, "train": 3500, "validation": 750,
                           "holdout": 750 + i},
            "feature_schema": [{"name": "amount", "type": "float"}], "trained_by": f"manual__seed_{i}",
            "trained_at": end.timestamp(),
        })
        passed = status == "promoted"
        report = {"version": version, "metrics": {"auc": auc, "logloss": 0.05 + i / 100, "precision": 0.7,
                                                  "recall": 0.5 + i / 10, "positive_rate": 0.012, "rows": 750.0},
                  "gates": _gates(auc, passed), "passed": passed, "champion": None}
        models.store.put(models.version_key(model, version, "validation.json"), json.dumps(report).encode())
        if passed:
            _, etag = models.champion_with_etag(model)
            models.set_champion(model, version, expected_etag=etag, action="promote", run_id=f"scheduled__seed_{i}",
                                reason=f"passed 3 gates, holdout AUC {auc:.4f}")
            models.set_verdict(model, version, "promoted", gates=report["gates"], run_id=f"scheduled__seed_{i}")
        else:
            models.set_verdict(model, version, "rejected", gates=report["gates"],
                               reason="min_auc: holdout AUC 0.8840 (threshold 0.9)", run_id=f"scheduled__seed_{i}")
    champion = numbers[1]
    prefix = report_prefix(model, champion, now)  # newer than any report already in the store
    if with_report:
        summary = {"status": "checked", "model": model, "version": champion, "trigger": "schedule",
                   "window": {"start": (now - timedelta(hours=1)).isoformat(), "end": now.isoformat()},
                   "drift_share": 0.375, "drifted_columns": ["amount", "hour_of_day", "ip_risk"],
                   "data_drift": True, "quality_drop": False, "auc_drop": None}
        store.put(prefix + "drift.html", report_html.encode())
        store.put(prefix + "summary.json", json.dumps(summary).encode())
        store.put(prefix + "evidently.json", b'{"metrics": []}')
        store.put(state_key(model), json.dumps({"last_retrain_request": time.time() - 60, "last_alert": {},
                                                "last_report": store.uri(prefix + "drift.html")}).encode())
    return Seeded(model, numbers, champion, prefix, aucs)
