"""Feature rows to the numeric matrix a model sees: one encoding for training, scoring and drift.

If training and the scorer encoded features differently the model would be fed nonsense without
any error, so both go through :func:`to_matrix` with the feature schema stored in the model version.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.specs import ModelSpec


def feature_schema(spec: ModelSpec, table: pa.Table | None = None) -> list[dict[str, Any]]:
    """Names, types and (for categories) the vocabulary learned from ``table``, in model column order."""
    schema = []
    for f in spec.features:
        entry: dict[str, Any] = {"name": f.name, "type": f.type, "nullable": f.nullable}
        if f.type == "category":
            values = [] if table is None else pc.unique(table.column(f.name).drop_null()).to_pylist()
            entry["categories"] = sorted(str(v) for v in values)
        schema.append(entry)
    return schema


def column_to_float(column: pa.ChunkedArray | pa.Array, entry: dict[str, Any]) -> np.ndarray:
    """One feature column as float64 with NaN for missing (LightGBM's missing value)."""
    if entry["type"] == "category":
        categories = entry.get("categories", [])
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            # Position in the learned vocabulary; unseen values and nulls are missing (NaN).
            positions = pc.index_in(column, value_set=pa.array(categories, type=pa.string()))
            return np.asarray(pc.fill_null(pc.cast(positions, pa.float64()), np.nan).to_numpy(zero_copy_only=False),
                              dtype=np.float64)
        index = {c: float(i) for i, c in enumerate(categories)}
        return np.array([index.get(v, np.nan) if v is not None else np.nan for v in column.to_pylist()], dtype=np.float64)
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.float64())
    # Unsafe: an int64 beyond +-2**53 becomes the nearest float (what LightGBM would see anyway), where a
    # safe cast would raise on a valid event.
    return np.asarray(pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)


def to_matrix(table: pa.Table, schema: list[dict[str, Any]]) -> np.ndarray:
    """Rows x features (float64, C order) in the schema's column order."""
    if table.num_rows == 0:
        return np.empty((0, len(schema)), dtype=np.float64)
    return np.column_stack([column_to_float(table.column(e["name"]), e) for e in schema])


def categorical_indices(schema: list[dict[str, Any]]) -> list[int]:
    return [i for i, e in enumerate(schema) if e["type"] == "category"]
