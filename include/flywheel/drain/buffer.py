"""The records of one partition waiting for their chunk, held as a few large buffers.

The consumer hands out one Python ``Message`` (plus a ``bytes`` value and key) per record. Reading
them one record at a time in bytecode held the GIL long enough to starve the decoding threads, and
keeping a million small objects alive until their chunk was cut made the consumer itself about 40%
slower than a loop that drops them. So every run of records of a ``consume()`` batch is turned into
columns at once, by C-level ``map`` and ``join``, and the messages are dropped while still hot in
cache: values joined by newlines (what Arrow's JSON reader parses), keys joined, lengths, offsets
and timestamps as int64 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa

from flywheel.events.decode import RawBatch

_SECOND = itemgetter(1)


def _lengths(items: list[bytes | None]) -> np.ndarray:
    """Lengths, with -1 for None (a tombstone's value, or a record without a key)."""
    try:
        return np.fromiter(map(len, items), np.int64, len(items))  # type: ignore[arg-type]
    except TypeError:
        return np.fromiter((-1 if v is None else len(v) for v in items), np.int64, len(items))


def _join(sep: bytes, items: list[bytes | None], lengths: np.ndarray) -> bytes:
    if lengths.size and lengths.min() < 0:
        return sep.join(b"" if v is None else v for v in items)
    return sep.join(items)  # type: ignore[arg-type]


@dataclass
class _Run:
    """Consecutive records of the partition, column by column."""

    values: bytes  # joined by b"\n"
    value_lengths: np.ndarray  # -1: tombstone
    keys: bytes  # concatenated
    key_lengths: np.ndarray  # -1: no key
    offsets: np.ndarray
    timestamps: np.ndarray
    #: Each record's Kafka headers (kept for its dead letter), or None when no record of the run had any.
    headers: list[Any] | None = None

    def split(self, k: int) -> tuple[_Run, _Run]:
        """The first ``k`` records, and the rest."""
        vcut = int(np.maximum(self.value_lengths[:k], 0).sum()) + k  # past the k-th separator
        kcut = int(np.maximum(self.key_lengths[:k], 0).sum())
        headers = self.headers
        head = _Run(self.values[:vcut - 1], self.value_lengths[:k], self.keys[:kcut], self.key_lengths[:k],
                    self.offsets[:k], self.timestamps[:k], None if headers is None else headers[:k])
        tail = _Run(self.values[vcut:], self.value_lengths[k:], self.keys[kcut:], self.key_lengths[k:],
                    self.offsets[k:], self.timestamps[k:], None if headers is None else headers[k:])
        return head, tail


def value_bytes(lengths: np.ndarray) -> int:
    """Bytes of the values whose lengths these are (a tombstone's -1 counts 0)."""
    return int(np.maximum(lengths, 0).sum())


class PartitionBuffer:
    """Consumed records of one partition, in offset order, not yet cut into a chunk."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []
        self._count = 0
        self.size = 0  # bytes of the values

    def __len__(self) -> int:
        return self._count

    def add(self, records: Sequence[Any]) -> None:
        """Append confluent_kafka Messages (no errors among them) of this partition, in offset order."""
        from confluent_kafka import Message

        n = len(records)
        values = list(map(Message.value, records))
        keys = list(map(Message.key, records))
        headers = list(map(Message.headers, records))
        vlen, klen = _lengths(values), _lengths(keys)
        self._runs.append(_Run(_join(b"\n", values, vlen), vlen, _join(b"", keys, klen), klen,
                               np.fromiter(map(Message.offset, records), np.int64, n),
                               np.fromiter(map(_SECOND, map(Message.timestamp, records)), np.int64, n),
                               headers if any(headers) else None))
        self._count += n
        self.size += value_bytes(vlen)

    def offsets(self) -> np.ndarray:
        return np.concatenate([r.offsets for r in self._runs]) if self._runs else np.empty(0, np.int64)

    def last_offset(self) -> int:
        return int(self._runs[-1].offsets[-1])

    def natural_cut(self, rows: int, size: int) -> int:
        """How many leading records make a chunk of at most ``rows`` records and about ``size`` bytes."""
        cut = min(self._count, rows)
        if self.size >= size:
            lengths = np.concatenate([r.value_lengths for r in self._runs])[:cut]
            sizes = np.cumsum(np.maximum(lengths, 0))
            cut = min(cut, int(np.searchsorted(sizes, size, side="left")) + 1)
        return cut

    def take(self, topic: str, partition: int, last: int) -> tuple[RawBatch, int]:
        """Remove the records up to offset ``last``; return them as a batch, with their value bytes."""
        taken: list[_Run] = []
        while self._runs and self._runs[0].offsets[-1] <= last:
            taken.append(self._runs.pop(0))
        if self._runs and self._runs[0].offsets[0] <= last:
            k = int(np.searchsorted(self._runs[0].offsets, last, side="right"))
            head, self._runs[0] = self._runs[0].split(k)
            taken.append(head)
        batch = _batch(topic, partition, taken)
        size = value_bytes(batch.lengths)  # type: ignore[arg-type]
        self._count -= len(batch)
        self.size -= size
        return batch, size

    def clear(self) -> None:
        self._runs.clear()
        self._count = self.size = 0


def _batch(topic: str, partition: int, runs: list[_Run]) -> RawBatch:
    """One batch from consecutive runs: buffers concatenated once (large copies, outside the GIL)."""
    value_lengths = np.concatenate([r.value_lengths for r in runs]) if runs else np.empty(0, np.int64)
    key_lengths = np.concatenate([r.key_lengths for r in runs]) if runs else np.empty(0, np.int64)
    n = len(value_lengths)
    key_offsets = np.zeros(n + 1, np.int32)
    np.cumsum(np.maximum(key_lengths, 0), out=key_offsets[1:])
    has_key = key_lengths >= 0
    validity = None if has_key.all() else pa.py_buffer(np.packbits(has_key, bitorder="little"))
    keys = pa.Array.from_buffers(pa.binary(), n, [validity, pa.py_buffer(key_offsets),
                                                  pa.py_buffer(b"".join(r.keys for r in runs))])
    headers = None
    if any(r.headers is not None for r in runs):
        headers = [h for r in runs for h in (r.headers if r.headers is not None else [None] * len(r.offsets))]
    return RawBatch(
        topic, partition, None,
        np.concatenate([r.offsets for r in runs]) if runs else np.empty(0, np.int64),
        np.concatenate([r.timestamps for r in runs]) if runs else np.empty(0, np.int64),
        keys, joined=b"\n".join(r.values for r in runs), lengths=value_lengths, headers=headers,
    )

