"""Object names of drained data: deterministic, zero-padded, sorted in offset order, valid store keys."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from flywheel.drain import layout
from flywheel.drain.reader import _bucket_start
from flywheel.storage import validate_key

TOPIC = "fraud.features"


def _hour(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) // 3600


def test_data_and_rejected_keys_name_topic_hour_partition_and_offset_range():
    bucket = layout.hour_bucket(_hour("2026-11-25T07:00:00"))
    assert bucket == "date=2026-11-25/hour=07"
    assert layout.data_key(TOPIC, bucket, 3, 42, 1041) == (
        "topics/fraud.features/date=2026-11-25/hour=07/"
        "fraud.features+3+00000000000000000042-00000000000000001041.parquet"
    )
    assert layout.rejected_key(TOPIC, bucket, 3, 42, 1041) == (
        "rejected/fraud.features/date=2026-11-25/hour=07/"
        "fraud.features+3+00000000000000000042-00000000000000001041.parquet"
    )


def test_the_same_chunk_always_gets_the_same_name():
    bucket = layout.hour_bucket(_hour("2026-01-01T00:00:00"))
    assert layout.data_key(TOPIC, bucket, 0, 0, 99) == layout.data_key(TOPIC, bucket, 0, 0, 99)
    assert layout.data_key(TOPIC, bucket, 0, 0, 99) != layout.data_key(TOPIC, bucket, 0, 0, 100)
    assert layout.data_key(TOPIC, bucket, 0, 0, 99) != layout.data_key(TOPIC, bucket, 1, 0, 99)


@pytest.mark.parametrize(("when", "bucket"), [
    ("1970-01-01T00:00:00", "date=1970-01-01/hour=00"),
    ("2026-11-25T23:59:59", "date=2026-11-25/hour=23"),
    ("2026-11-26T00:00:00", "date=2026-11-26/hour=00"),
    ("2028-02-29T13:30:00", "date=2028-02-29/hour=13"),
])
def test_hour_buckets_are_utc_and_zero_padded(when, bucket):
    assert layout.hour_bucket(_hour(when)) == bucket


def test_offsets_are_padded_to_twenty_digits_so_names_sort_in_offset_order():
    bucket = layout.hour_bucket(0)
    starts = [0, 1, 9, 10, 99, 100, 1_000_000, 2**40, 2**63 - 1]
    keys = [layout.data_key(TOPIC, bucket, 5, s, s) for s in starts]
    assert all(len(k.rsplit("+", 1)[1]) == len("00000000000000000000-00000000000000000000.parquet") for k in keys)
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    assert sorted(shuffled) == keys

    manifests = [layout.manifest_key(TOPIC, 5, s) for s in starts]
    intents = [layout.intent_key(TOPIC, 5, s) for s in starts]
    assert sorted(reversed(manifests)) == manifests and sorted(reversed(intents)) == intents


def test_ledger_keys_live_under_a_zero_padded_partition_folder():
    prefix = layout.partition_ledger_prefix(TOPIC, 7)
    assert prefix == "_drain/fraud.features/00007/"
    assert layout.manifest_key(TOPIC, 7, 250) == prefix + "00000000000000000250.json"
    assert layout.intent_key(TOPIC, 7, 250) == prefix + "00000000000000000250.intent"
    assert layout.checkpoint_key(TOPIC, 7) == prefix + "checkpoint.json"
    # The ledger takes the last of the sorted manifest names as the newest: the checkpoint sorts after them.
    names = sorted([layout.checkpoint_key(TOPIC, 7), *(layout.manifest_key(TOPIC, 7, s) for s in (0, 10**19))])
    assert names[-1] == layout.checkpoint_key(TOPIC, 7)


def test_prefixes_do_not_spill_into_neighbouring_partitions_or_topics():
    assert not layout.manifest_key(TOPIC, 10, 0).startswith(layout.partition_ledger_prefix(TOPIC, 1))
    assert not layout.manifest_key(TOPIC + "2", 1, 0).startswith(layout.partition_ledger_prefix(TOPIC, 1))
    other = layout.data_key(TOPIC + ".v2", layout.hour_bucket(0), 0, 0, 1)
    assert not other.startswith(layout.topic_data_prefix(TOPIC))
    assert layout.data_key(TOPIC, layout.hour_bucket(0), 0, 0, 1).startswith(layout.topic_data_prefix(TOPIC))


@pytest.mark.parametrize("topic", ["fraud.features", "a", "my_topic-1.v2", "x" * 200])
def test_every_name_is_a_valid_store_key(topic):
    bucket = layout.hour_bucket(_hour("2026-11-25T07:00:00"))
    for key in (layout.data_key(topic, bucket, 2**31 - 1, 0, 2**63 - 1), layout.rejected_key(topic, bucket, 0, 5, 6),
                layout.manifest_key(topic, 99999, 0), layout.intent_key(topic, 0, 1), layout.checkpoint_key(topic, 0)):
        assert validate_key(key) == key


def test_the_reader_finds_the_hour_back_from_a_data_key():
    hour = _hour("2026-11-25T07:00:00")
    key = layout.data_key(TOPIC, layout.hour_bucket(hour), 1, 0, 9)
    assert _bucket_start(key) == datetime(2026, 11, 25, 7, tzinfo=UTC)
    assert _bucket_start(layout.manifest_key(TOPIC, 1, 0)) is None
