"""The label join: which label an event has, one rule for training and for live quality.

Labels arrive late, may be sent twice, and may be corrected. The rule: an event's label is the last
one written for its id, that is the label record with the greatest Kafka timestamp, and between equal
timestamps the greatest (partition, offset). A repeated label changes nothing; a correction replaces
the earlier value everywhere. A null label is no label (the drain rejects it as ``missing_field``). A
label whose id matches no event joins nothing; training only uses events older than the spec's
``label.max_delay``, so an event whose label is still on its way is not taken for a negative.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Drained columns the rule needs besides the key and the label.
RECENCY_COLUMNS = ["_timestamp", "_partition", "_offset"]


def _ints(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def newest_first(labels: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort keys (smallest first = newest) of every label row, for a "first per id" selection."""
    return (-_ints(labels.column("_timestamp")), -_ints(labels.column("_partition")),
            -_ints(labels.column("_offset")))


def latest_labels(labels: pa.Table, key: str, field: str) -> pa.Table:
    """One row per id: ``key`` and ``label``, the label chosen by the rule above."""
    labels = labels.filter(pc.is_valid(labels.column(field)))
    if labels.num_rows == 0:
        return pa.table({key: labels.column(key), "label": labels.column(field)})
    ts, part, off = newest_first(labels)
    order = np.lexsort((off, part, ts))  # newest first (the last key is the primary one)
    ordered = labels.select([key, field]).take(pa.array(order))
    latest = ordered.group_by(key, use_threads=False).aggregate([(field, "first")])
    return latest.rename_columns([key if c == key else "label" for c in latest.column_names])
