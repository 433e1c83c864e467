"""Event keys as shared integer codes, so deduplication and the label join hash each string once.

An Arrow hash join plus a group-by per table hashed every event id three or four times and carried
all feature columns through the join and the sort. Here the feature and label keys are dictionary
encoded together in one pass; everything after that (is an id repeated? which copy wins? which
label belongs to which event?) is integer work in numpy on row positions, and the wide feature
columns are gathered once, straight into the training matrix.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column with dictionary encoding undone: each chunk's dictionary numbers values its own way."""
    return pc.cast(column, column.type.value_type) if pa.types.is_dictionary(column.type) else column


def shared_codes(*keys: pa.ChunkedArray) -> list[np.ndarray]:
    """One int64 code per row of each key column, equal codes for equal keys across all of them;
    -1 for a null key (which joins nothing, as in SQL)."""
    columns = [plain(k) for k in keys]
    target = columns[0].type
    chunks = [c for k in columns for c in (k if k.type == target else pc.cast(k, target)).chunks]
    if not chunks:
        return [np.empty(0, dtype=np.int64) for _ in keys]
    encoded = pc.dictionary_encode(pa.chunked_array(chunks, type=target))
    # One dictionary grows across chunks, so indices agree between chunks (and so between tables).
    codes = np.concatenate([pc.fill_null(c.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                            for c in encoded.chunks])
    out, start = [], 0
    for k in keys:
        out.append(codes[start:start + len(k)])
        start += len(k)
    return out


def first_per_code(codes: np.ndarray, *order: np.ndarray) -> np.ndarray:
    """Positions (ascending) of one row per code: the smallest by ``order`` (lexicographic), then the
    earliest position. Codes are usually unique, which one bincount tells without sorting."""
    if len(codes) == 0 or np.bincount(codes).max() <= 1:
        return np.arange(len(codes))
    perm = np.lexsort((np.arange(len(codes)), *reversed(order), codes))  # lexsort: last key is primary
    ordered = codes[perm]
    first = np.ones(len(perm), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return np.sort(perm[first])


def time_then_key_order(times: np.ndarray, keys: pa.Array | pa.ChunkedArray,
                        positions: np.ndarray | None = None) -> np.ndarray:
    """Order of ``times`` by time, ties broken by key (byte order), as ``sort_by([time, key])`` would.

    ``times[i]`` belongs to the row ``positions[i]`` of ``keys`` (``i`` itself without ``positions``).
    A stable numpy argsort on the integer times does nearly all of it; only rows sharing a time with
    another row have their keys fetched and are sorted again, by Arrow.
    """
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    if tied.size:
        at = np.unique(np.concatenate([tied, tied + 1]))
        members = order[at]
        rows = members if positions is None else positions[members]
        ties = pa.table({"t": ordered[at], "k": keys.take(pa.array(rows))})
        within = pc.sort_indices(ties, sort_keys=[("t", "ascending"), ("k", "ascending")]).to_numpy()
        order[at] = members[within]
    return order
