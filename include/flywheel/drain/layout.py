"""Object names of drained data: deterministic from topic, partition and offset range.

As in the Kafka Connect S3 sink, a file's name says exactly which records it holds, so a retried
drain rewrites the same object instead of adding a duplicate, and anyone can tell from the names
where a partition stopped. Offsets are zero-padded so names sort in offset order.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

DATA_ROOT = "topics"
REJECTED_ROOT = "rejected"
LEDGER_ROOT = "_drain"
COMPACTION_ROOT = "_compaction"


def _range(topic: str, partition: int, start: int, end: int) -> str:
    return f"{topic}+{partition}+{start:020d}-{end:020d}"


def hour_bucket(epoch_hour: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` for an hour counted from the epoch (event time, UTC)."""
    t = datetime.fromtimestamp(epoch_hour * 3600, tz=UTC)
    return f"date={t.year:04d}-{t.month:02d}-{t.day:02d}/hour={t.hour:02d}"  # %Y gives "999", not "0999"


def data_key(topic: str, bucket: str, partition: int, start: int, end: int) -> str:
    return f"{DATA_ROOT}/{topic}/{bucket}/{_range(topic, partition, start, end)}.parquet"


def rejected_key(topic: str, bucket: str, partition: int, start: int, end: int) -> str:
    return f"{REJECTED_ROOT}/{topic}/{bucket}/{_range(topic, partition, start, end)}.parquet"


def topic_data_prefix(topic: str) -> str:
    return f"{DATA_ROOT}/{topic}/"


def partition_ledger_prefix(topic: str, partition: int) -> str:
    return f"{LEDGER_ROOT}/{topic}/{partition:05d}/"


def manifest_key(topic: str, partition: int, start: int) -> str:
    """The commit record of the chunk starting at ``start``: created once, never rewritten."""
    return f"{partition_ledger_prefix(topic, partition)}{start:020d}.json"


def intent_key(topic: str, partition: int, start: int) -> str:
    """Written before a chunk's files; pins the chunk's end so a replay rewrites the same files."""
    return f"{partition_ledger_prefix(topic, partition)}{start:020d}.intent"


def checkpoint_key(topic: str, partition: int) -> str:
    """Where the partition stopped, advanced by compare-and-swap after each committed chunk."""
    return f"{partition_ledger_prefix(topic, partition)}checkpoint.json"


#: A drain file's name: ``<topic>+<partition>+<first offset>-<last offset>.parquet`` (of its chunk).
_SOURCE_NAME = re.compile(r"\+(\d+)\+(\d{20})-(\d{20})\.parquet$")
COMPACTED_MARK = "+compacted+"


def source_range(key: str) -> tuple[int, int, int] | None:
    """(partition, first offset, last offset) of the chunk a drain file came from; None for others."""
    match = _SOURCE_NAME.search(key)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def compacted_key(topic: str, bucket: str, digest: str) -> str:
    """One hour's files merged into one; named by a digest of the merged names, so a retry rewrites it."""
    return f"{DATA_ROOT}/{topic}/{bucket}/{topic}{COMPACTED_MARK}{digest}.parquet"


def compaction_prefix(topic: str) -> str:
    return f"{COMPACTION_ROOT}/{topic}/"


def compaction_key(topic: str, bucket: str) -> str:
    """The record of a compaction in progress in ``bucket`` (also its lock)."""
    return f"{compaction_prefix(topic)}{bucket.replace('/', '_')}.json"
