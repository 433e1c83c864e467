"""Training data: drained feature rows joined with their late-arriving labels, split by time.

Only events old enough for their label to have arrived (``label.max_delay``) are used, so recent
unlabelled events are not mistaken for negatives. Splits are by event time (train on the oldest,
validate on newer, hold out the newest) and events are deduplicated by id first, so no event can
sit on both sides of a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.drain.reader import read_topic
from flywheel.features import feature_schema, to_matrix
from flywheel.specs import ModelSpec, parse_duration
from flywheel.storage import ObjectStore


class NotEnoughData(Exception):
    """The window holds too little labelled data to train on; the message says what was found."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime  # exclusive; events after it may still be waiting for their label

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def window_for(spec: ModelSpec, as_of: datetime, *, window: str | None = None,
               label_delay: str | None = None) -> Window:
    """The spec's window ending at ``as_of``; Params of a manual run may override its parts."""
    length = parse_duration(window) if window else spec.training.window
    default_delay = spec.label.max_delay if spec.label else timedelta(0)
    delay = parse_duration(label_delay) if label_delay else default_delay
    return Window(as_of - length, as_of - delay)


@dataclass
class Split:
    X: np.ndarray
    y: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainingData:
    train: Split
    validation: Split
    holdout: Split
    schema: list[dict[str, Any]]
    window: Window
    counts: dict[str, int] = field(default_factory=dict)
    #: A sample of the training rows (features only) for drift reference.
    reference: pa.Table | None = None


def _latest_per_key(table: pa.Table, key: str, order: str) -> pa.Table:
    """One row per key: the one with the largest ``order`` value (e.g. the latest label).

    Keys are usually unique already, which one count tells; otherwise only the narrow key/order
    columns are grouped, and the wide table is filtered once.
    """
    if pc.count_distinct(table.column(key)).as_py() == table.num_rows:
        return table
    narrow = pa.table({"k": table.column(key), "o": table.column(order),
                       "r": pa.array(np.arange(table.num_rows, dtype=np.int64))})
    best = narrow.group_by("k").aggregate([("o", "max")])
    winners = narrow.join(best, keys=["k", "o"], right_keys=["k", "o_max"], join_type="inner")
    first = winners.group_by("k").aggregate([("r", "min")]).column("r_min")
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[first.to_numpy()] = True
    return table.filter(pa.array(mask))


def load_training_data(store: ObjectStore, spec: ModelSpec, window: Window, *, reference_rows: int = 20_000,
                       seed: int | None = None) -> TrainingData:
    if not spec.label or not spec.topics.labels:
        raise NotEnoughData(f"spec {spec.name} declares no label: nothing to train on")
    time_field = spec.event_time_field or "_timestamp"
    key = spec.key_field
    columns = list(dict.fromkeys([key, *spec.feature_names, time_field, "_partition", "_offset"]))
    features = read_topic(store, spec.topics.features, window.start, window.end, columns=columns)
    counts = {"feature_rows_read": 0, "label_rows_read": 0}
    if features is None:
        raise NotEnoughData(f"no drained {spec.topics.features} rows between {window.start} and {window.end}")
    counts["feature_rows_read"] = features.num_rows
    in_window = pc.and_(pc.greater_equal(features.column(time_field), pa.scalar(window.start)),
                        pc.less(features.column(time_field), pa.scalar(window.end)))
    features = features.filter(in_window)
    # Producers retry: the same event id may appear twice; keep the first copy.
    features = features.append_column("_order", pc.negate(pc.add(pc.multiply(
        pc.cast(features.column("_partition"), pa.int64()), pa.scalar(1 << 40)), features.column("_offset"))))
    features = _latest_per_key(features, key, "_order").drop_columns(["_order"])
    counts["feature_events"] = features.num_rows

    label_key, label_field = spec.label_key_field, spec.label.field
    labels = read_topic(store, spec.topics.labels, window.start, None,
                        columns=[label_key, label_field, "_timestamp"])
    if labels is None:
        raise NotEnoughData(f"no drained labels on {spec.topics.labels} since {window.start}")
    counts["label_rows_read"] = labels.num_rows
    labels = labels.filter(pc.is_valid(labels.column(label_field)))
    labels = _latest_per_key(labels.rename_columns([key if c == label_key else c for c in labels.column_names]),
                             key, "_timestamp").select([key, label_field])
    joined = features.join(labels, keys=key, join_type="inner").sort_by([(time_field, "ascending"), (key, "ascending")])
    counts["labelled_events"] = joined.num_rows
    n = joined.num_rows
    y_all = np.asarray(pc.cast(joined.column(label_field), pa.float64()).to_numpy(zero_copy_only=False))
    counts["positives"] = int(y_all.sum()) if n else 0
    min_rows = spec.gates.min_rows
    if n < min_rows or counts["positives"] < max(1, spec.gates.min_positives):
        raise NotEnoughData(
            f"{n} labelled events ({counts['positives']} positive) in {window.start:%Y-%m-%d %H:%M} - "
            f"{window.end:%Y-%m-%d %H:%M}; the spec asks for at least {min_rows} rows and "
            f"{max(1, spec.gates.min_positives)} positives"
        )
    schema = feature_schema(spec, joined)
    X_all = to_matrix(joined, schema)
    ids = joined.column(key).to_pylist()
    n_hold = max(1, int(n * spec.training.holdout_fraction))
    n_val = max(1, int(n * spec.training.validation_fraction))
    n_train = n - n_val - n_hold
    cuts = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, n)]
    splits = [Split(X_all[a:b], y_all[a:b], ids[a:b]) for a, b in cuts]
    counts.update(train=len(splits[0]), validation=len(splits[1]), holdout=len(splits[2]))
    rng = np.random.default_rng(spec.training.seed if seed is None else seed)
    sample = np.sort(rng.choice(n_train, size=min(reference_rows, n_train), replace=False))
    reference = joined.slice(0, n_train).take(pa.array(sample)).select(spec.feature_names)
    return TrainingData(*splits, schema=schema, window=window, counts=counts, reference=reference)
