"""The one label rule: the last label written for an id wins, in training and in live quality alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
from flywheel.events.labels import latest_labels
from flywheel.training.keys import first_per_code

T = datetime(2026, 1, 1, tzinfo=UTC)


def labels(rows: list[tuple[str, int | None, int, int, int]]) -> pa.Table:
    ids, values, ts, parts, offsets = zip(*rows, strict=True)
    return pa.table({"id": list(ids), "label": pa.array(values, pa.int64()),
                     "_timestamp": pa.array([T.timestamp() * 1000 + t for t in ts], pa.int64()).cast(
                         pa.timestamp("ms", tz="UTC")),
                     "_partition": pa.array(parts, pa.int32()), "_offset": pa.array(offsets, pa.int64())})


def test_a_correction_replaces_the_label_and_a_repeat_changes_nothing():
    table = labels([("a", 0, 0, 0, 1), ("a", 1, 5, 0, 2),  # corrected later
                    ("b", 1, 0, 0, 3), ("b", 1, 0, 0, 4),  # repeated
                    ("c", 1, 7, 0, 5), ("c", 0, 7, 1, 9),  # same time: the greater (partition, offset) wins
                    ("d", None, 9, 0, 6), ("d", 1, 1, 0, 7)])  # a null label is no label
    got = dict(zip(*latest_labels(table, "id", "label").to_pydict().values(), strict=True))
    assert got == {"a": 1, "b": 1, "c": 0, "d": 1}


def test_training_selection_agrees_with_the_rule():
    from flywheel.events.labels import newest_first

    table = labels([("a", 0, 0, 0, 1), ("a", 1, 5, 0, 2), ("c", 1, 7, 0, 5), ("c", 0, 7, 1, 9)])
    codes = pa.array([0, 0, 1, 1]).to_numpy()
    chosen = first_per_code(codes, *newest_first(table))
    assert table.take(pa.array(chosen)).column("label").to_pylist() == [1, 0]
