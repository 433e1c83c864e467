from __future__ import annotations

import pyarrow as pa
from flywheel.training.dataset import _latest_per_key


def test_unique_keys_pass_through_untouched():
    table = pa.table({"id": ["a", "b"], "o": [1, 2], "x": [1.0, 2.0]})
    assert _latest_per_key(table, "id", "o") is table


def test_duplicates_keep_the_highest_order_and_the_first_of_ties():
    table = pa.table({"id": ["a", "b", "a", "a", "c"], "o": [1, 5, 3, 3, 0], "x": [10, 20, 30, 40, 50]})
    out = _latest_per_key(table, "id", "o")
    assert sorted(zip(out.column("id").to_pylist(), out.column("x").to_pylist(), strict=True)) == [
        ("a", 30), ("b", 20), ("c", 50)]
