"""Quality gates: each reports its value, its threshold and a verdict, so a rejection says why.

In the spirit of MLflow's MetricThreshold: absolute thresholds, and a comparison with the champion
scored on the same holdout (minimum improvement, which may be negative to allow a small regression).
With no champion yet, the absolute gates decide.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from flywheel.specs import GatesSpec

ONNX_TOLERANCE = 1e-5


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gate(name: str, value: float | None, threshold: float | None, ok: bool, detail: str) -> GateResult:
    return GateResult(name, bool(ok), None if value is None else round(float(value), 6), threshold, detail)


def evaluate_gates(
    gates: GatesSpec,
    *,
    rows: int,
    positives: int,
    metrics: dict[str, float],
    score_min: float,
    score_max: float,
    score_std: float,
    champion_metrics: dict[str, float] | None,
    champion_version: int | None,
    latency_us: float,
    model_bytes: int,
    onnx_diff: float | None,
) -> list[GateResult]:
    auc = metrics.get("auc", float("nan"))
    results = [
        _gate("min_rows", rows, gates.min_rows, rows >= gates.min_rows, f"{rows} labelled rows"),
        _gate("min_positives", positives, gates.min_positives, positives >= gates.min_positives,
              f"{positives} positive labels"),
        _gate("scores_valid", score_std, 1e-6, 0.0 <= score_min <= score_max <= 1.0 and score_std > 1e-6,
              f"holdout scores in [{score_min:.4f}, {score_max:.4f}], std {score_std:.4g} (must vary, stay in [0, 1])"),
    ]
    if gates.min_auc is not None:
        results.append(_gate("min_auc", auc, gates.min_auc, not math.isnan(auc) and auc >= gates.min_auc,
                             f"holdout AUC {auc:.4f}"))
    if gates.max_logloss is not None:
        ll = metrics.get("logloss", float("inf"))
        results.append(_gate("max_logloss", ll, gates.max_logloss, ll <= gates.max_logloss, f"holdout log loss {ll:.4f}"))
    if champion_metrics is None:
        results.append(_gate("vs_champion", None, gates.min_improvement, True, "no champion yet: absolute gates decide"))
    else:
        delta = auc - champion_metrics.get("auc", float("nan"))
        ok = not math.isnan(delta) and delta >= gates.min_improvement
        results.append(_gate("vs_champion", delta, gates.min_improvement, ok,
                             f"AUC {auc:.4f} vs champion v{champion_version} {champion_metrics.get('auc', float('nan')):.4f} "
                             f"on the same holdout (change {delta:+.4f})"))
    if gates.max_latency_us is not None:
        results.append(_gate("max_latency_us", latency_us, gates.max_latency_us, latency_us <= gates.max_latency_us,
                             f"median single-event score {latency_us:.0f} us"))
    if gates.max_model_bytes is not None:
        results.append(_gate("max_model_bytes", model_bytes, gates.max_model_bytes, model_bytes <= gates.max_model_bytes,
                             f"model file {model_bytes} bytes"))
    if onnx_diff is not None:
        results.append(_gate("onnx_agreement", onnx_diff, ONNX_TOLERANCE, onnx_diff <= ONNX_TOLERANCE,
                             f"ONNX Runtime vs LightGBM max |diff| {onnx_diff:.2e} on the holdout"))
    return results
