"""LightGBM training and evaluation, deterministic: same data and spec give the same model.

Prediction is pinned to one thread: per-event scoring gets slower with more threads, and scorers
scale out as processes instead.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any, Literal

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
    categorical: list[int] | Literal["auto"] = categorical_indices(data.schema) or "auto"
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


def predict(booster: Any, X: np.ndarray, *, threads: int = 0) -> np.ndarray:
    """Batch scoring for evaluation: all cores unless ``threads`` (single events are timed separately)."""
    return np.asarray(booster.predict(X, num_threads=threads), dtype=np.float64)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic, ties counted half (as scikit-learn's
    ``roc_auc_score``), in one sort; NaN unless both classes are present."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    ranks = ((starts + ends + 1) / 2.0)[np.repeat(np.arange(len(starts)), ends - starts)]  # average 1-based rank
    return float((ranks[positive[order]].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate(scores: np.ndarray, split: Split, threshold: float) -> dict[str, float]:
    """AUC, log loss, and precision/recall at the spec's decision threshold.

    Plain numpy, equal to scikit-learn's metrics (a unit test holds them together): scikit-learn's
    input checks cost more than the arithmetic on a 150k-row holdout, twice per validation.
    """
    y = np.asarray(split.y, dtype=np.float64)
    positive = y == 1
    p = np.clip(scores, 1e-15, 1 - 1e-15)
    decided = scores >= threshold
    true_positives = int((decided & positive).sum())
    predicted, actual = int(decided.sum()), int(positive.sum())
    return {
        "auc": roc_auc(scores, positive),
        "logloss": float(-np.mean(np.where(positive, np.log(p), np.log1p(-p)))) if len(y) else float("nan"),
        "precision": true_positives / predicted if predicted else 0.0,
        "recall": true_positives / actual if actual else 0.0,
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
    """The model as ONNX: written directly from the model text when it is a plain binary model (what
    flywheel trains), else by onnxmltools; the validation step checks it against LightGBM either way."""
    from flywheel.training.onnx_export import to_onnx_fast

    fast = to_onnx_fast(booster.model_to_string(), n_features)
    return fast if fast is not None else _to_onnx_onnxmltools(booster, n_features)


def _to_onnx_onnxmltools(booster: Any, n_features: int) -> bytes:
    """onnxmltools' conversion (opset 15: onnxmltools' default opset is newer than it supports)."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = convert_lightgbm(booster, initial_types=[("features", FloatTensorType([None, n_features]))],
                                  target_opset=15, zipmap=False)
    return onnx_model.SerializeToString()


def onnx_probabilities(onnx_bytes: bytes, X: np.ndarray, *, threads: int = 0) -> np.ndarray:
    """ONNX Runtime's positive-class probabilities for ``X`` (given to it as float32).

    ``threads=1`` when LightGBM is scoring at the same time (validation runs both at once).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # its output-shape warning for the label output is noise here
    options.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spinning: on a worker shared with other tasks, spinning
    # threads take the cores the working ones need (measured: up to 3x slower under load).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    return np.asarray(session.run(None, {session.get_inputs()[0].name: X32})[1])[:, 1]


def onnx_agreement(probabilities: np.ndarray, booster: Any, X: np.ndarray, scores: np.ndarray) -> float:
    """Largest difference between ONNX Runtime's ``probabilities`` and LightGBM's ``scores`` over every
    row of ``X``.

    ONNX Runtime sees ``X`` as float32; where that rounding moves a value across one of LightGBM's
    (double) thresholds, the two runtimes were given different inputs, so the rows that disagree
    (usually none) are scored again by LightGBM on the float32 values, and a row agrees if either
    comparison is within the tolerance.
    """
    from flywheel.training.gates import ONNX_TOLERANCE

    if not len(X):
        return 0.0
    diff = np.abs(probabilities - scores)
    off = np.flatnonzero(diff > ONNX_TOLERANCE)
    if off.size:
        rounded = predict(booster, np.asarray(X[off], dtype=np.float32).astype(np.float64))
        diff[off] = np.minimum(diff[off], np.abs(probabilities[off] - rounded))
    return float(diff.max())


def onnx_max_abs_diff(onnx_bytes: bytes, booster: Any, X: np.ndarray, scores: np.ndarray | None = None) -> float:
    """:func:`onnx_agreement` of ONNX Runtime against LightGBM on ``X`` (``scores``: LightGBM's, if known)."""
    if not len(X):
        return 0.0
    reference = predict(booster, X) if scores is None else scores
    return onnx_agreement(onnx_probabilities(onnx_bytes, X), booster, X, reference)
