"""LightGBM training and evaluation, deterministic: same data and spec give the same model.

Prediction is pinned to one thread: per-event scoring gets slower with more threads, and scorers
scale out as processes instead.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.specs import ModelSpec
from flywheel.training.dataset import Split, TrainingData


@dataclass
class TrainedModel:
    booster: Any  # lightgbm.Booster
    text: bytes
    best_iteration: int
    importance: dict[str, float]
    train_seconds: float


def lightgbm_params(spec: ModelSpec) -> dict[str, Any]:
    params = {"objective": "binary", "metric": ["auc", "binary_logloss"], "verbose": -1}
    params.update(spec.training.params)
    params.update({"seed": spec.training.seed, "deterministic": True, "force_row_wise": True})
    return params


def train_model(spec: ModelSpec, data: TrainingData, *, num_threads: int = 0) -> TrainedModel:
    import lightgbm as lgb

    from flywheel.features import categorical_indices

    params = lightgbm_params(spec) | ({"num_threads": num_threads} if num_threads else {})
    names = [e["name"] for e in data.schema]
    categorical = categorical_indices(data.schema) or "auto"
    train_set = lgb.Dataset(data.train.X, data.train.y, feature_name=names, categorical_feature=categorical,
                            free_raw_data=False)
    valid_set = lgb.Dataset(data.validation.X, data.validation.y, reference=train_set)
    started = time.perf_counter()
    booster = lgb.train(
        params, train_set, num_boost_round=spec.training.num_boost_round, valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(spec.training.early_stopping_rounds, verbose=False)],
    )
    seconds = time.perf_counter() - started
    best = booster.best_iteration or booster.current_iteration()
    gains = booster.feature_importance(importance_type="gain", iteration=best)
    total = float(gains.sum()) or 1.0
    importance = {n: round(float(g) / total, 6) for n, g in sorted(zip(names, gains, strict=True), key=lambda x: -x[1])}
    text = booster.model_to_string(num_iteration=best).encode()
    return TrainedModel(lgb.Booster(model_str=text.decode()), text, best, importance, seconds)


def load_booster(text: bytes) -> Any:
    import lightgbm as lgb

    return lgb.Booster(model_str=text.decode())


def predict(booster: Any, X: np.ndarray) -> np.ndarray:
    """Batch scoring for evaluation: all cores (single events are timed separately, on one thread)."""
    return np.asarray(booster.predict(X, num_threads=0), dtype=np.float64)


def evaluate(scores: np.ndarray, split: Split, threshold: float) -> dict[str, float]:
    """AUC, log loss, and precision/recall at the spec's decision threshold."""
    from sklearn.metrics import log_loss, precision_score, recall_score, roc_auc_score

    y = split.y
    both_classes = len(np.unique(y)) == 2
    decided = scores >= threshold
    return {
        "auc": float(roc_auc_score(y, scores)) if both_classes else float("nan"),
        "logloss": float(log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "precision": float(precision_score(y, decided, zero_division=0)),
        "recall": float(recall_score(y, decided, zero_division=0)),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "rows": float(len(y)),
    }


def single_row_latency_us(booster: Any, X: np.ndarray, repeats: int = 200) -> float:
    """Median time to score one event, as the scorer does for a lone message."""
    rows = X[: min(len(X), repeats)]
    timings = []
    for row in rows:
        started = time.perf_counter()
        booster.predict(row.reshape(1, -1), num_threads=1)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings) * 1e6) if timings else 0.0


def library_versions() -> dict[str, str]:
    import lightgbm
    import numpy
    import pyarrow

    return {"lightgbm": lightgbm.__version__, "numpy": numpy.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


def to_onnx(booster: Any, n_features: int) -> bytes:
    """The model as ONNX (opset 15: onnxmltools' default opset is newer than it supports)."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = convert_lightgbm(booster, initial_types=[("features", FloatTensorType([None, n_features]))],
                                  target_opset=15, zipmap=False)
    return onnx_model.SerializeToString()


def onnx_max_abs_diff(onnx_bytes: bytes, booster: Any, X: np.ndarray) -> float:
    """Largest difference between ONNX Runtime's and LightGBM's probabilities on ``X``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # its output-shape warning for the label output is noise here
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    X32 = X.astype(np.float32)
    outputs = session.run(None, {session.get_inputs()[0].name: X32})
    probabilities = np.asarray(outputs[1])[:, 1]
    reference = predict(booster, X32.astype(np.float64))
    return float(np.max(np.abs(probabilities - reference))) if len(reference) else 0.0
