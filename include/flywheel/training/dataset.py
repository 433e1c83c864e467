"""Training data: drained feature rows joined with their late-arriving labels, split by time.

Only events old enough for their label to have arrived (``label.max_delay``) are used, so recent
unlabelled events are not mistaken for negatives. Splits are by event time (train on the oldest,
validate on newer, hold out the newest) and events are deduplicated by id first, so no event can
sit on both sides of a split.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.drain.reader import read_topic
from flywheel.events.labels import RECENCY_COLUMNS, newest_first
from flywheel.features import column_to_float, feature_schema
from flywheel.specs import ModelSpec, parse_duration
from flywheel.storage import ObjectStore
from flywheel.training.keys import first_per_code, plain, shared_codes, time_then_key_order


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
    #: Event ids, kept as Arrow: a million Python strings would cost more than the join.
    ids: pa.Array | pa.ChunkedArray

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


def _int_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """An integer or timestamp column (as its ticks) in one int64 array; nulls, never used, as 0."""
    return np.asarray(pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy(), dtype=np.int64)


def _matrices(table: pa.Table, schema: list[dict[str, Any]], rows: np.ndarray,
              cuts: list[tuple[int, int]]) -> list[np.ndarray]:
    """``to_matrix(table.take(rows[a:b]), schema)`` for each cut, without materialising taken tables.

    Each column is encoded by the shared :func:`column_to_float` (the scorer's encoding) file chunk
    by file chunk into one scratch buffer per thread, and gathered from there straight into each
    split's matrix: a million-row column is never allocated twice, which on a fresh worker process
    saves a page fault per 4 KiB (most of this step's time, measured). The matrices are column-major
    (Fortran order), so the gathers write contiguous memory and no transposing copy is needed:
    LightGBM reads column-major arrays without copying them (and bins them in the same CPU time,
    measured). Columns are split between two threads (numpy and Arrow release the GIL); each writes
    its own rows of the matrices.
    """
    out = [np.empty((len(schema), b - a), dtype=np.float64) for a, b in cuts]

    def gather(columns: range) -> None:
        scratch = np.empty(table.num_rows, dtype=np.float64)
        for i in columns:
            entry = schema[i]
            column = table.column(entry["name"])
            if entry["type"] == "category" or column.num_chunks == 0:
                values = column_to_float(column, entry)
            else:
                values = np.concatenate([column_to_float(chunk, entry) for chunk in column.chunks], out=scratch)
            for (a, b), matrix in zip(cuts, out, strict=True):
                # mode="clip" (rows are in range by construction): with the default "raise", numpy
                # buffers ``out`` and copies it again, which made this gather 8x slower.
                np.take(values, rows[a:b], out=matrix[i], mode="clip")

    half = (len(schema) + 1) // 2
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flywheel-matrix") as pool:
        other = pool.submit(gather, range(half, len(schema)))
        gather(range(half))
        other.result()
    return [m.T for m in out]


def load_training_data(store: ObjectStore, spec: ModelSpec, window: Window, *, reference_rows: int = 20_000,
                       seed: int | None = None) -> TrainingData:
    """The window's labelled events, deduplicated and split by time, as arrays ready for LightGBM."""
    if not spec.label or not spec.topics.labels:
        raise NotEnoughData(f"spec {spec.name} declares no label: nothing to train on")
    time_field = spec.event_time_field or "_timestamp"
    key = spec.key_field
    columns = list(dict.fromkeys([key, *spec.feature_names, time_field, "_partition", "_offset"]))
    label_key, label_field = spec.label_key_field, spec.label.field
    # Labels are read while features are: each read alone leaves a core idle part of the time.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flywheel-labels") as lane:
        labels_read = lane.submit(read_topic, store, spec.topics.labels, window.start, None,
                                  columns=[label_key, label_field, *RECENCY_COLUMNS])
        features = read_topic(store, spec.topics.features, window.start, window.end, columns=columns)
        labels = labels_read.result()
    if features is None:
        raise NotEnoughData(f"no drained {spec.topics.features} rows between {window.start} and {window.end}")
    if labels is None:
        raise NotEnoughData(f"no drained labels on {spec.topics.labels} since {window.start}")
    counts = {"feature_rows_read": features.num_rows, "label_rows_read": labels.num_rows}
    keys = pa.chunked_array([plain(features.column(key)).combine_chunks()])  # one chunk: cheaper takes below
    feature_codes, label_codes = shared_codes(keys, labels.column(label_key))

    # Feature rows in the window with a key, by position in ``features``.
    times = features.column(time_field)
    in_window = pc.fill_null(pc.and_(pc.greater_equal(times, pa.scalar(window.start)),
                                     pc.less(times, pa.scalar(window.end))), False)
    rows = np.flatnonzero(in_window.to_numpy(zero_copy_only=False) & (feature_codes >= 0))
    # Producers retry: the same event id may appear twice; keep the first copy (partition, offset).
    if len(rows):
        first_copy = (_int_numpy(features.column("_partition")) << 40) + _int_numpy(features.column("_offset"))
        rows = rows[first_per_code(feature_codes[rows], first_copy[rows])]
    counts["feature_events"] = len(rows)

    # Each event's label by the one label rule (flywheel.events.labels), as a lookup from key code to label row.
    label_rows = np.flatnonzero(pc.is_valid(labels.column(label_field)).to_numpy(zero_copy_only=False)
                                & (label_codes >= 0))
    if len(label_rows):
        label_rows = label_rows[first_per_code(label_codes[label_rows],
                                               *(o[label_rows] for o in newest_first(labels)))]
    label_of = np.full(max(int(feature_codes.max(initial=-1)), int(label_codes.max(initial=-1))) + 1, -1,
                       dtype=np.int64)
    label_of[label_codes[label_rows]] = label_rows
    matched = label_of[feature_codes[rows]]
    labelled = matched >= 0
    rows, matched = rows[labelled], matched[labelled]
    order = time_then_key_order(_int_numpy(times)[rows], keys, rows)
    rows, matched = rows[order], matched[order]
    counts["labelled_events"] = n = len(rows)
    label_values = pc.cast(labels.column(label_field), pa.float64()).to_numpy(zero_copy_only=False)
    y_all = np.asarray(label_values, dtype=np.float64)[matched]
    counts["positives"] = int(y_all.sum()) if n else 0
    min_rows = spec.gates.min_rows
    if n < min_rows or counts["positives"] < max(1, spec.gates.min_positives):
        raise NotEnoughData(
            f"{n} labelled events ({counts['positives']} positive) in {window.start:%Y-%m-%d %H:%M} - "
            f"{window.end:%Y-%m-%d %H:%M}; the spec asks for at least {min_rows} rows and "
            f"{max(1, spec.gates.min_positives)} positives"
        )
    categories = [f.name for f in spec.features if f.type == "category"]
    schema = feature_schema(spec, features.select(categories).take(pa.array(rows)))
    ids = keys.take(pa.array(rows))
    n_hold = max(1, int(n * spec.training.holdout_fraction))
    n_val = max(1, int(n * spec.training.validation_fraction))
    n_train = n - n_val - n_hold
    cuts = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, n)]
    matrices = _matrices(features, schema, rows, cuts)
    splits = [Split(X, y_all[a:b], ids.slice(a, b - a)) for X, (a, b) in zip(matrices, cuts, strict=True)]
    counts.update(train=len(splits[0]), validation=len(splits[1]), holdout=len(splits[2]))
    rng = np.random.default_rng(spec.training.seed if seed is None else seed)
    sample = np.sort(rng.choice(n_train, size=min(reference_rows, n_train), replace=False))
    reference = features.select(spec.feature_names).take(pa.array(rows[:n_train][sample]))
    train, validation, holdout = splits
    return TrainingData(train, validation, holdout, schema=schema, window=window, counts=counts, reference=reference)
