"""The one feature encoding shared by training, scoring and drift."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from flywheel.features import column_to_float

ENTRY = {"name": "merchant", "type": "category", "nullable": True, "categories": ["books", "fuel", "grocery"]}


def test_categories_are_vocabulary_positions_and_unseen_or_null_values_are_missing():
    column = pa.chunked_array([["fuel", "books", None], ["travel", "grocery", "fuel"]])
    assert np.array_equal(column_to_float(column, ENTRY), [1.0, 0.0, np.nan, np.nan, 2.0, 1.0], equal_nan=True)


def test_dictionary_encoded_categories_encode_as_their_values():
    column = pa.chunked_array([pa.array(["grocery", "x", None, "books"]).dictionary_encode()])
    assert np.array_equal(column_to_float(column, ENTRY), [2.0, np.nan, np.nan, 0.0], equal_nan=True)


def test_an_empty_vocabulary_makes_every_value_missing():
    out = column_to_float(pa.array(["a", None]), {**ENTRY, "categories": []})
    assert np.isnan(out).all() and out.dtype == np.float64


def test_numbers_and_booleans_become_float64_with_nan_for_null():
    assert np.array_equal(column_to_float(pa.array([1, None, 3]), {"type": "int"}), [1.0, np.nan, 3.0], equal_nan=True)
    assert np.array_equal(column_to_float(pa.array([True, False, None]), {"type": "bool"}), [1.0, 0.0, np.nan],
                          equal_nan=True)
