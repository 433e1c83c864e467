"""The structural check that keeps a damaged model file away from LightGBM's aborting parser."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from flywheel.models.model_text import InvalidModelText, check_model_text


@pytest.fixture(scope="module")
def model_text() -> str:
    rng = np.random.default_rng(0)
    X = rng.random((3000, 6))
    X[::5, 2] = np.nan
    y = (X[:, 0] + 0.3 * rng.random(3000) > 0.6).astype(int)
    return lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15, "seed": 1},
                     lgb.Dataset(X, y), 30).model_to_string()


def test_a_complete_model_passes(model_text):
    assert check_model_text(model_text) == 30


@pytest.mark.parametrize("fraction", [0.001, 0.2, 0.5, 0.9, 0.999])
def test_a_file_cut_short_is_refused(model_text, fraction):
    with pytest.raises(InvalidModelText):
        check_model_text(model_text[: int(len(model_text) * fraction)])


def test_a_tree_array_of_the_wrong_length_is_refused(model_text):
    start = model_text.index("leaf_value=", model_text.index("Tree=3"))
    end = model_text.index("\n", start)
    damaged = model_text[:start] + model_text[start:end].rsplit(" ", 1)[0] + model_text[end:]
    with pytest.raises(InvalidModelText, match="tree 3"):
        check_model_text(damaged)


def test_a_child_index_out_of_range_is_refused(model_text):
    start = model_text.index("left_child=", model_text.index("Tree=1"))
    damaged = model_text[:start] + "left_child=99" + model_text[start + len("left_child=1"):]
    with pytest.raises(InvalidModelText, match="tree 1"):
        check_model_text(damaged)


def test_text_that_is_not_a_model_is_refused():
    for text in ("", "hello", '{"a": 1}', "tree\nversion=v4\n"):
        with pytest.raises(InvalidModelText):
            check_model_text(text)
