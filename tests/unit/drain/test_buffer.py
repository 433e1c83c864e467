"""The per-partition buffer: records split into columns as they arrive, cut into chunks by offset."""

from __future__ import annotations

import numpy as np
from confluent_kafka import Message
from flywheel.drain.buffer import PartitionBuffer, value_bytes


def _messages(offsets: list[int], values: dict[int, bytes | None] | None = None) -> list[Message]:
    values = values or {}
    return [Message(topic="t", partition=2, offset=o, key=f"k{o}".encode(),
                    value=values.get(o, f'{{"n": {o}}}'.encode()), timestamp=(1, 1_000 + o)) for o in offsets]


def test_columns_and_a_cut_by_offset_keep_everything_in_order():
    buf = PartitionBuffer()
    buf.add(_messages([0, 1, 2]))
    buf.add(_messages([4, 5]))  # a gap (a transaction marker or compaction): offsets are not positions
    assert len(buf) == 5 and buf.last_offset() == 5
    assert buf.size == sum(len(f'{{"n": {o}}}') for o in [0, 1, 2, 4, 5])

    batch, size = buf.take("t", 2, 4)
    assert (batch.topic, batch.partition) == ("t", 2)
    assert list(batch.offsets) == [0, 1, 2, 4]
    assert list(batch.timestamps_ms) == [1000, 1001, 1002, 1004]
    assert batch.keys == [b"k0", b"k1", b"k2", b"k4"]
    assert batch.values[3] == b'{"n": 4}' and size == value_bytes(batch.values)

    assert len(buf) == 1 and buf.last_offset() == 5 and buf.size == len(b'{"n": 5}')
    buf.add(_messages([6]))
    rest, _ = buf.take("t", 2, 6)
    assert list(rest.offsets) == [5, 6] and rest.keys == [b"k5", b"k6"]
    assert len(buf) == 0 and buf.size == 0


def test_tombstones_count_no_bytes():
    buf = PartitionBuffer()
    buf.add(_messages([0, 1, 2], values={1: None}))
    assert buf.size == 2 * len(b'{"n": 0}')
    batch, size = buf.take("t", 2, 2)
    assert batch.values[1] is None and size == buf.size + 2 * len(b'{"n": 0}')


def test_natural_cut_by_rows_and_by_bytes():
    buf = PartitionBuffer()
    buf.add(_messages(list(range(10)), values={o: b"x" * 100 for o in range(10)}))
    assert buf.natural_cut(rows=4, size=10_000) == 4
    # 1000 bytes buffered, 250 wanted: the record that crosses 250 closes the chunk
    assert buf.natural_cut(rows=100, size=250) == 3
    assert buf.natural_cut(rows=100, size=10_000) == 10
    assert np.array_equal(buf.offsets(), np.arange(10))
