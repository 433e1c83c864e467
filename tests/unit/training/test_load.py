"""load_training_data on hand-written drained files: window, dedupe, latest label, time order, splits."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import layout
from flywheel.specs import load_spec
from flywheel.storage.local import LocalStore
from flywheel.training.dataset import load_training_data, window_for

START = datetime(2026, 11, 20, tzinfo=UTC)
SPEC = Path(__file__).resolve().parents[3] / "include" / "specs" / "fraud.yaml"
N = 3000  # one event a second: 50 minutes, all in hour 00


def _put(store, topic, rows, partition, start):
    rows = [{"_partition": partition, "_offset": start + i, **row} for i, row in enumerate(rows)]
    table = pa.Table.from_pylist(rows)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.put(layout.data_key(topic, "date=2026-11-20/hour=00", partition, start, start + len(rows) - 1),
              buffer.getvalue())


def _stamp(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


@pytest.fixture
def loaded(tmp_path):
    spec = load_spec(SPEC)
    spec = spec.model_copy(update={"gates": spec.gates.model_copy(update={"min_rows": 100, "min_positives": 1})})
    store = LocalStore(tmp_path)
    events = list(event_stream(N, start=START, rate_per_s=1, seed=3))
    features = []
    for offset, e in enumerate(events):
        row = {**e.features, "event_time": _stamp(e.features["event_time"]), "_partition": 0, "_offset": offset}
        features.append(row)
    features[40]["event_time"] = features[100]["event_time"]  # a tie, read in the "wrong" key order
    duplicate = {**features[5], "amount": 999.0, "_offset": N}  # a producer retry: same id, later offset
    _put(store, spec.topics.features, features, 0, 0)
    _put(store, spec.topics.features, [duplicate], 0, N)

    labels = [{"event_id": e.label["event_id"], "is_fraud": e.label["is_fraud"],
               "_timestamp": _stamp(e.label["labelled_at"])} for e in events]
    labels[7]["is_fraud"] = 0
    late = {**labels[7], "is_fraud": 1, "_timestamp": labels[7]["_timestamp"] + timedelta(minutes=1)}
    labels[11]["is_fraud"] = None
    del labels[9]
    _put(store, spec.topics.labels, [late], 0, 0)  # the later label is read first
    _put(store, spec.topics.labels, labels, 1, 0)
    as_of = START + timedelta(minutes=45)  # window ends 10 minutes (the label delay) earlier: 2,100 events
    return spec, load_training_data(store, spec, window_for(spec, as_of))


def test_counts_window_dedupe_and_labels(loaded):
    _, data = loaded
    c = data.counts
    assert (c["feature_rows_read"], c["label_rows_read"]) == (N + 1, N)
    assert c["feature_events"] == 2100  # after the window end: left for when their labels are in
    assert c["labelled_events"] == 2098  # e9 has no label, e11 a null one
    assert c["train"] + c["validation"] + c["holdout"] == 2098 and c["holdout"] == int(2098 * 0.15)


def test_rows_are_in_time_order_ties_by_key_and_keep_the_first_copy_and_latest_label(loaded):
    spec, data = loaded
    ids = [*data.train.ids.to_pylist(), *data.validation.ids.to_pylist(), *data.holdout.ids.to_pylist()]
    expected = [f"e{i}" for i in range(2100) if i not in (9, 11, 40)]
    expected.insert(expected.index("e100") + 1, "e40")  # same time as e100; "e100" < "e40" as bytes
    assert ids == expected
    amount = [e["name"] for e in data.schema].index("amount")
    assert data.train.X[ids.index("e5"), amount] != 999.0
    assert data.train.y[ids.index("e7")] == 1.0
    assert data.train.X.flags["F_CONTIGUOUS"] and data.train.X.dtype == np.float64  # LightGBM reads it as is
    assert data.reference.column_names == spec.feature_names


def test_integer_event_ids_train_like_string_ones(tmp_path):
    spec = load_spec(SPEC)
    spec = spec.model_copy(update={"key_type": "int",
                                   "gates": spec.gates.model_copy(update={"min_rows": 100, "min_positives": 1})})
    store = LocalStore(tmp_path)
    events = list(event_stream(600, start=START, rate_per_s=1, seed=5))
    features = [{**e.features, "event_id": 10_000 + i, "event_time": _stamp(e.features["event_time"])}
                for i, e in enumerate(events)]
    labels = [{"event_id": 10_000 + i, "is_fraud": e.label["is_fraud"], "_timestamp": _stamp(e.label["labelled_at"])}
              for i, e in enumerate(events)]
    _put(store, spec.topics.features, features, 0, 0)
    _put(store, spec.topics.labels, labels, 0, 0)
    data = load_training_data(store, spec, window_for(spec, START + timedelta(minutes=30)))
    ids = [*data.train.ids.to_pylist(), *data.validation.ids.to_pylist(), *data.holdout.ids.to_pylist()]
    assert ids == sorted(ids) and all(isinstance(i, int) for i in ids) and len(ids) == data.counts["labelled_events"]
