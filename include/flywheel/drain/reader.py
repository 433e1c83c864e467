"""Read drained topics back as Arrow tables: what training and drift monitoring consume.

Files are found by their date/hour folders, so a time window touches only the hours it covers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.drain import layout
from flywheel.errors import ObjectNotFound
from flywheel.storage import ObjectInfo, ObjectStore

_BUCKET = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/")


def _bucket_start(key: str) -> datetime | None:
    match = _BUCKET.search(key)
    if not match:
        return None
    return datetime.strptime(f"{match.group(1)} {match.group(2)}", "%Y-%m-%d %H").replace(tzinfo=UTC)


def data_files(store: ObjectStore, topic: str, since: datetime | None = None,
               until: datetime | None = None, *, root: str = layout.DATA_ROOT) -> Iterator[ObjectInfo]:
    """Parquet files of ``topic`` whose event hour overlaps [since, until)."""
    for info in store.list(f"{root}/{topic}/"):
        if not info.key.endswith(".parquet"):
            continue
        hour = _bucket_start(info.key)
        if hour is None:
            continue
        if since is not None and hour.timestamp() + 3600 <= since.timestamp():
            continue
        if until is not None and hour >= until:
            continue
        yield info


def _read(store: ObjectStore, key: str, columns: Sequence[str] | None) -> pa.Table:
    """One file, decoded on the calling thread.

    ``ParquetFile.read`` without inner threads: files are read in parallel already, and
    ``read_table``'s per-file dataset setup plus nested thread pools cost about as much CPU as the
    decoding itself on small hourly files. A missing column still fails, as ``read_table`` would.
    """
    parquet = pq.ParquetFile(pa.BufferReader(store.get(key)))
    if not columns:
        return parquet.read(use_threads=False)
    present = set(parquet.schema_arrow.names)  # a property that converts the schema on every access
    missing = [c for c in columns if c not in present]
    if missing:
        raise pa.ArrowInvalid(f"No match for FieldRef.Name({missing[0]}) in {key}")
    return parquet.read(columns=list(columns), use_threads=False).select(list(columns))


def hidden_sources(store: ObjectStore, topic: str, listed: set[str]) -> set[str]:
    """Source files a finished-but-not-cleaned-up compaction (``drain.compact``) already merged into a listed file."""
    hidden: set[str] = set()
    for info in store.list(layout.compaction_prefix(topic)):
        try:
            record = json.loads(store.get(info.key))
        except ObjectNotFound:
            continue  # finished meanwhile: its sources are gone too
        if record["merged"] in listed:
            hidden.update(record["sources"])
    return hidden


def read_topic(store: ObjectStore, topic: str, since: datetime | None = None, until: datetime | None = None,
               columns: Sequence[str] | None = None, *, rejected: bool = False) -> pa.Table | None:
    """All drained rows of ``topic`` in the window, or None when nothing was drained there yet.

    Consistent with compaction running meanwhile (see ``drain.compact``): files are listed before
    compaction records, a record whose merged file was listed hides the files it merged, and a file
    that disappears between listing and reading (its compaction finished) makes the read start over.
    """
    root = layout.REJECTED_ROOT if rejected else layout.DATA_ROOT
    for attempt in range(_ATTEMPTS):
        keys = [info.key for info in data_files(store, topic, since, until, root=root)]
        if not keys:
            return None
        if not rejected:
            hidden = hidden_sources(store, topic, set(keys))
            keys = [k for k in keys if k not in hidden]
        try:
            with ThreadPoolExecutor(max_workers=4) as pool:
                tables = list(pool.map(lambda k: _read(store, k, columns), keys))
        except ObjectNotFound:
            if attempt == _ATTEMPTS - 1:
                raise
            continue
        return pa.concat_tables(tables, promote_options="default")
    raise AssertionError("unreachable")


#: Each listing after a vanished file sees the compactions that finished meanwhile; a read gives up
#: (with ObjectNotFound) only if compactions keep finishing under it three times in a row.
_ATTEMPTS = 3
