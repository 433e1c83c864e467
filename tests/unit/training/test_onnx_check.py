"""The ONNX agreement check: one ONNX Runtime pass against the scores validation already has."""

from __future__ import annotations

import numpy as np
import pytest
from flywheel.training.gates import ONNX_TOLERANCE
from flywheel.training.model import onnx_max_abs_diff, predict, to_onnx


@pytest.fixture(scope="module")
def model():
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5)) * 1000.0  # large values: float32 rounding is visible
    y = (X[:, 0] + X[:, 1] * 0.5 + rng.normal(size=3000) * 300 > 0).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15, "seed": 1, "deterministic": True},
                        lgb.Dataset(X, y), num_boost_round=20)
    return booster, to_onnx(booster, 5), X


def test_agrees_on_every_row_and_reuses_given_scores(model):
    booster, onnx_bytes, X = model
    scores = predict(booster, X)
    diff = onnx_max_abs_diff(onnx_bytes, booster, X, scores)
    assert diff <= ONNX_TOLERANCE
    assert diff == onnx_max_abs_diff(onnx_bytes, booster, X)


def test_rows_off_against_the_exact_input_are_rescored_on_the_float32_input(model):
    booster, onnx_bytes, X = model
    scores = predict(booster, X)
    scores[[3, 700]] += 0.25  # as if float32 rounding had crossed a threshold on these rows
    assert onnx_max_abs_diff(onnx_bytes, booster, X, scores) <= ONNX_TOLERANCE


def test_a_wrong_onnx_model_fails(model):
    booster, _, X = model
    import lightgbm as lgb

    other = lgb.train({"objective": "binary", "verbose": -1, "seed": 2}, lgb.Dataset(X[:, ::-1].copy(), X[:, 2] > 0),
                      num_boost_round=5)
    assert onnx_max_abs_diff(to_onnx(other, 5), booster, X, predict(booster, X)) > 1e-2
