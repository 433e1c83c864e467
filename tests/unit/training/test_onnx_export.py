"""The direct ONNX export writes exactly what onnxmltools writes, on the model shapes LightGBM makes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper


def _attributes(onnx_bytes: bytes) -> dict:
    model = onnx.load_from_string(onnx_bytes)
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _probabilities(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    outputs = {o.name: i for i, o in enumerate(session.get_outputs())}
    return np.asarray(session.run(None, {"features": X.astype(np.float32)})[outputs["probabilities"]])


def _data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4000, 4)) * 100
    if kind == "nan":
        X[rng.random(X.shape) < 0.1] = np.nan
    if kind == "zero":
        X[rng.random(X.shape) < 0.2] = 0.0
    signal = np.nan_to_num(X[:, 0]) - 0.5 * np.nan_to_num(X[:, 1]) + rng.normal(size=4000) * 40
    return X, (signal > 10).astype(float)


@pytest.mark.parametrize(("kind", "params"), [
    ("nan", {}),  # missing type NaN, both default directions
    ("plain", {}),  # missing type None, negative thresholds with default left
    ("zero", {"zero_as_missing": True}),  # missing type Zero
    ("plain", {"min_data_in_leaf": 4000}),  # one-leaf trees
])
def test_same_attributes_and_predictions_as_onnxmltools(kind, params):
    import lightgbm as lgb
    from flywheel.training.model import _to_onnx_onnxmltools
    from flywheel.training.onnx_export import to_onnx_fast

    X, y = _data(kind)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15, "seed": 3, **params},
                        lgb.Dataset(X, y), num_boost_round=15)
    reference = _to_onnx_onnxmltools(booster, 4)
    fast = to_onnx_fast(booster.model_to_string(), 4)
    assert fast is not None
    assert _attributes(fast) == _attributes(reference)
    probe = np.vstack([X, np.full((1, 4), np.nan), np.zeros((1, 4))])
    assert np.array_equal(_probabilities(fast, probe), _probabilities(reference, probe))


def test_unsupported_models_are_left_to_onnxmltools():
    import lightgbm as lgb
    from flywheel.training.model import to_onnx
    from flywheel.training.onnx_export import to_onnx_fast

    X, y = _data("plain")
    X[:, 3] = np.floor(np.abs(X[:, 3])) % 7
    y = np.isin(X[:, 3], [1, 4]).astype(float)
    categorical = lgb.train({"objective": "binary", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1},
                            lgb.Dataset(X, y, categorical_feature=[3]), num_boost_round=5)
    assert "num_cat=0" not in categorical.model_to_string()  # it did split on the category
    assert to_onnx_fast(categorical.model_to_string(), 4) is None
    assert _attributes(to_onnx(categorical, 4))  # converted the long way
    scaled = lgb.train({"objective": "binary", "sigmoid": 2.0, "verbose": -1}, lgb.Dataset(X, y), num_boost_round=3)
    assert to_onnx_fast(scaled.model_to_string(), 4) is None
