"""Compaction of drained hour folders: one file per hour, and readers see every row once at every step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from flywheel.drain import compact, layout
from flywheel.drain.compact import compact_topic
from flywheel.drain.ledger import PartitionLedger
from flywheel.drain.reader import read_topic
from flywheel.errors import StoreError
from flywheel.storage.local import LocalStore
from flywheel.storage.parquet import table_bytes

TOPIC = "t.features"
HOURS = ["date=2026-11-20/hour=00", "date=2026-11-20/hour=01"]
LATER = datetime.now(UTC) + timedelta(hours=2)  # "now" for compaction: every file written here has settled


def _chunk(store, partition: int, start: int, end: int, bucket: str, offsets: list[int]) -> str:
    table = pa.table({"x": [float(o) for o in offsets], "_partition": pa.array([partition] * len(offsets), pa.int32()),
                      "_offset": pa.array(offsets, pa.int64())})
    key = layout.data_key(TOPIC, bucket, partition, start, end)
    store.put(key, table_bytes(table))
    return key


def _commit(store, partition: int, next_offset: int) -> None:
    PartitionLedger(store, TOPIC, partition, "test", 60).advance_checkpoint(next_offset)


@pytest.fixture
def store(tmp_path):
    store = LocalStore(tmp_path)
    # Two partitions, three chunks each; every chunk's rows spread over both hours.
    for p in (0, 1):
        for start in (0, 10, 20):
            offsets = list(range(start, start + 10))
            _chunk(store, p, start, start + 9, HOURS[0], offsets[:6])
            _chunk(store, p, start, start + 9, HOURS[1], offsets[6:])
        _commit(store, p, 30)
    return store


def _rows(store) -> list[tuple[int, int]]:
    table = read_topic(store, TOPIC)
    pairs = list(zip(table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)), "a row was read twice"
    return sorted(pairs)


def _files(store, bucket: str) -> list[str]:
    return [i.key.rsplit("/", 1)[1] for i in store.list(f"{layout.DATA_ROOT}/{TOPIC}/{bucket}/")]


EVERY_ROW = [(p, o) for p in (0, 1) for o in range(30)]


def test_each_settled_hour_becomes_one_file_with_every_row_once_in_offset_order(store):
    assert _rows(store) == EVERY_ROW
    summary = compact_topic(store, TOPIC, now=LATER)
    assert (summary["hours"], summary["files_merged"], summary["rows"]) == (2, 12, 60)
    for bucket in HOURS:
        (name,) = _files(store, bucket)
        assert layout.COMPACTED_MARK in name
    assert _rows(store) == EVERY_ROW
    hour0 = read_topic(store, TOPIC, datetime(2026, 11, 20, 0, tzinfo=UTC), datetime(2026, 11, 20, 1, tzinfo=UTC))
    pairs = list(zip(hour0.column("_partition").to_pylist(), hour0.column("_offset").to_pylist(), strict=True))
    assert pairs == sorted(pairs) and len(pairs) == 36  # the hour's own rows, sorted by partition and offset
    assert list(store.list(layout.compaction_prefix(TOPIC))) == []
    again = compact_topic(store, TOPIC, now=LATER)
    assert again["hours"] == 0  # one file per hour: nothing to merge


def test_uncommitted_and_recent_files_are_left_alone(store):
    # A chunk past the checkpoint (its drain may still replay it) and a file written just now.
    _chunk(store, 0, 30, 39, HOURS[0], list(range(30, 40)))
    assert _rows(store)[-1] == (1, 29)
    summary = compact_topic(store, TOPIC, now=LATER)
    names = _files(store, HOURS[0])
    assert f"{TOPIC}+0+{30:020d}-{39:020d}.parquet" in names and len(names) == 2
    assert summary["files_merged"] == 12
    assert compact_topic(store, TOPIC, settle=timedelta(hours=3), now=LATER)["hours"] == 0  # nothing settled
    # Once committed, the chunk joins the hour's merged file.
    _commit(store, 0, 40)
    assert compact_topic(store, TOPIC, now=LATER)["files_merged"] == 2
    assert len(_files(store, HOURS[0])) == 1
    assert len(_rows(store)) == 70


def test_a_crash_after_the_merged_file_hides_its_sources_and_the_next_run_cleans_up(store, monkeypatch):
    def crash(*_args):
        raise StoreError("store went away")

    monkeypatch.setattr(compact, "_finish", crash)
    with pytest.raises(StoreError):
        compact_topic(store, TOPIC, now=LATER)
    assert len(_files(store, HOURS[0])) == 7  # six sources and the merged file, side by side
    assert _rows(store) == EVERY_ROW  # ... and still every row once
    monkeypatch.undo()
    summary = compact_topic(store, TOPIC, now=LATER)
    assert summary["recovered"] == 1 and summary["hours"] == 1
    assert all(len(_files(store, b)) == 1 for b in HOURS)
    assert _rows(store) == EVERY_ROW


def test_a_crash_before_the_merged_file_keeps_the_sources_and_a_fresh_record_holds_the_hour(store, monkeypatch):
    original_put = store.put

    def dying_put(key, data, **kwargs):
        if layout.COMPACTED_MARK in key:
            raise StoreError("store went away")
        return original_put(key, data, **kwargs)

    monkeypatch.setattr(store, "put", dying_put)
    with pytest.raises(StoreError):
        compact_topic(store, TOPIC, now=LATER)
    monkeypatch.undo()
    assert _rows(store) == EVERY_ROW
    # Within the lease the record is another compaction at work: its hour is skipped, the other merged.
    held = compact_topic(store, TOPIC, now=LATER)
    assert (held["hours"], held["recovered"]) == (1, 0)
    assert len(_files(store, HOURS[0])) == 6
    # After the lease the record is dropped (the sources were never touched) and the hour compacted.
    after = compact_topic(store, TOPIC, now=LATER, lease_s=0)
    assert (after["recovered"], after["hours"]) == (1, 1)
    assert all(len(_files(store, b)) == 1 for b in HOURS)
    assert _rows(store) == EVERY_ROW


def test_a_reader_that_lists_before_a_compaction_finishes_lists_again(store, monkeypatch):
    from flywheel.drain import reader

    listed = reader.data_files
    compacted = []

    def list_then_compact(*args, **kwargs):
        files = list(listed(*args, **kwargs))
        if not compacted:
            compacted.append(compact_topic(store, TOPIC, now=LATER))
        return iter(files)

    monkeypatch.setattr(reader, "data_files", list_then_compact)
    assert _rows(store) == EVERY_ROW
    assert compacted[0]["hours"] == 2


def test_merged_files_merge_again_with_newer_files(store):
    compact_topic(store, TOPIC, now=LATER)
    for p in (0, 1):
        _chunk(store, p, 30, 39, HOURS[1], list(range(30, 40)))
        _commit(store, p, 40)
    summary = compact_topic(store, TOPIC, now=LATER)
    assert (summary["hours"], summary["files_merged"]) == (1, 3)
    assert len(_files(store, HOURS[1])) == 1
    assert _rows(store) == [(p, o) for p in (0, 1) for o in range(40)]


def test_an_hour_larger_than_the_cap_becomes_several_files_that_stay_put(store):
    sizes = {i.key: i.size for i in store.list(f"{layout.DATA_ROOT}/{TOPIC}/{HOURS[0]}/")}
    cap = sum(sorted(sizes.values())[:3]) + 1  # about three source files per merged file
    summary = compact_topic(store, TOPIC, now=LATER, max_bytes=cap)
    merged = [n for n in _files(store, HOURS[0]) if layout.COMPACTED_MARK in n]
    assert 2 <= len(merged) < 6 and summary["hours"] == 2
    assert _rows(store) == EVERY_ROW
    # Merged files are a little smaller than their sources (one footer), so later runs may merge some
    # again; it settles within a few runs, every row still there once.
    for _ in range(5):
        if compact_topic(store, TOPIC, now=LATER, max_bytes=cap)["files_merged"] == 0:
            break
        assert _rows(store) == EVERY_ROW
    else:
        raise AssertionError("compaction keeps merging")
    assert all(i.size <= cap for i in store.list(f"{layout.DATA_ROOT}/{TOPIC}/{HOURS[0]}/")) or len(
        _files(store, HOURS[0])) == 1


def test_a_compaction_that_lost_its_record_writes_nothing(store, monkeypatch):
    """Slower than its lease: its record was dropped meanwhile, so it leaves the hour as it was."""
    original_get = store.get

    def get_then_lose_record(key, *args, **kwargs):
        data = original_get(key, *args, **kwargs)
        if key.startswith(f"{layout.DATA_ROOT}/{TOPIC}/{HOURS[0]}/"):
            store.delete(layout.compaction_key(TOPIC, HOURS[0]))  # as another run's recovery would
        return data

    monkeypatch.setattr(store, "get", get_then_lose_record)
    summary = compact_topic(store, TOPIC, now=LATER)
    monkeypatch.undo()
    assert (summary["busy"], summary["files_merged"]) == (1, 6)  # the other hour went ahead
    assert not any(layout.COMPACTED_MARK in n for n in _files(store, HOURS[0])) and len(_files(store, HOURS[0])) == 6
    assert _rows(store) == EVERY_ROW


def test_sources_merged_by_someone_else_since_listing_are_skipped(store, monkeypatch):
    listed = compact.data_files

    def stale_listing(*args, **kwargs):
        files = list(listed(*args, **kwargs))
        store.delete(files[0].key)  # gone before this compaction reads it
        return iter(files)

    monkeypatch.setattr(compact, "data_files", stale_listing)
    summary = compact_topic(store, TOPIC, now=LATER)
    monkeypatch.undo()
    assert summary["busy"] == 1 and summary["hours"] == 1
    assert list(store.list(layout.compaction_prefix(TOPIC))) == []
