"""The records of one partition waiting for their chunk, held column by column.

The consumer hands out one Python ``Message`` object per record; reading its fields one record at a
time in bytecode held the GIL long enough to starve the decoding thread, and keeping the objects until
the chunk is cut kept four allocations per record alive (and cold in cache). So each run of records of
a ``consume()`` batch is split into columns at once, by C-level ``map``, and the messages are dropped:
values and keys as lists of the very same ``bytes``, offsets and timestamps as int64 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from flywheel.drain.decode import RawBatch

_SECOND = itemgetter(1)


def value_bytes(values: Sequence[bytes | None]) -> int:
    """Total length of the values; a tombstone (None) counts 0."""
    try:
        return sum(map(len, values))  # type: ignore[arg-type]
    except TypeError:
        return sum(len(v) for v in values if v is not None)


class PartitionBuffer:
    """Consumed records of one partition, in offset order, not yet cut into a chunk."""

    def __init__(self) -> None:
        self.values: list[bytes | None] = []
        self.keys: list[bytes | None] = []
        self._offsets: list[np.ndarray] = []  # one int64 array per consumed run; joined when cut
        self._timestamps: list[np.ndarray] = []
        self.size = 0  # bytes of the values

    def __len__(self) -> int:
        return len(self.values)

    def add(self, records: Sequence[Any]) -> None:
        """Append confluent_kafka Messages (no errors among them) of this partition, in offset order."""
        from confluent_kafka import Message

        n = len(records)
        values = list(map(Message.value, records))
        self.values += values
        self.keys += map(Message.key, records)
        self._offsets.append(np.fromiter(map(Message.offset, records), np.int64, n))
        self._timestamps.append(np.fromiter(map(_SECOND, map(Message.timestamp, records)), np.int64, n))
        self.size += value_bytes(values)

    def offsets(self) -> np.ndarray:
        if len(self._offsets) != 1:
            self._offsets = [np.concatenate(self._offsets)] if self._offsets else [np.empty(0, np.int64)]
        return self._offsets[0]

    def last_offset(self) -> int:
        return int(self._offsets[-1][-1])

    def natural_cut(self, rows: int, size: int) -> int:
        """How many leading records make a chunk of at most ``rows`` records and about ``size`` bytes."""
        cut = min(len(self), rows)
        if self.size >= size:
            sizes = np.cumsum([len(v) if v is not None else 0 for v in self.values[:cut]])
            cut = min(cut, int(np.searchsorted(sizes, size, side="left")) + 1)
        return cut

    def take(self, topic: str, partition: int, last: int) -> tuple[RawBatch, int]:
        """Remove the records up to offset ``last``; return them as a batch, with their value bytes."""
        offsets = self.offsets()
        cut = int(np.searchsorted(offsets, last, side="right"))
        stamps = self._timestamps[0] if len(self._timestamps) == 1 else np.concatenate(self._timestamps)
        batch = RawBatch(topic, partition, self.values[:cut], offsets[:cut], stamps[:cut], self.keys[:cut])
        del self.values[:cut], self.keys[:cut]
        self._offsets, self._timestamps = [offsets[cut:].copy()], [stamps[cut:].copy()]
        size = value_bytes(batch.values)
        self.size -= size
        return batch, size

    def clear(self) -> None:
        self.values.clear(), self.keys.clear(), self._offsets.clear(), self._timestamps.clear()
        self.size = 0
