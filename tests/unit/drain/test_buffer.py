"""The per-partition buffer: records split into columns as they arrive, cut into chunks by offset."""

from __future__ import annotations

import numpy as np
from confluent_kafka import Message
from flywheel.drain.buffer import PartitionBuffer


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
    assert batch.keys.to_pylist() == [b"k0", b"k1", b"k2", b"k4"]
    assert batch.joined == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n{"n": 4}'
    assert batch.value_list()[3] == b'{"n": 4}' and size == len(batch.joined) - 3

    assert len(buf) == 1 and buf.last_offset() == 5 and buf.size == len(b'{"n": 5}')
    buf.add(_messages([6]))
    rest, _ = buf.take("t", 2, 6)
    assert list(rest.offsets) == [5, 6] and rest.keys.to_pylist() == [b"k5", b"k6"]
    assert len(buf) == 0 and buf.size == 0


def test_tombstones_empty_values_and_missing_keys_survive_the_round_trip():
    buf = PartitionBuffer()
    msgs = _messages([0, 1, 2, 3], values={1: None, 2: b""})
    msgs[3] = Message(topic="t", partition=2, offset=3, key=None, value=b"{}", timestamp=(1, 1003))
    buf.add(msgs)
    assert buf.size == len(b'{"n": 0}') + 2
    batch, size = buf.take("t", 2, 3)
    assert batch.value_list() == [b'{"n": 0}', None, b"", b"{}"]
    assert batch.keys.to_pylist() == [b"k0", b"k1", b"k2", None]
    assert size == len(b'{"n": 0}') + 2 and buf.size == 0


def test_a_cut_inside_a_run_splits_values_and_keys_at_the_record():
    buf = PartitionBuffer()
    buf.add(_messages([10, 11, 12, 13], values={11: None}))
    first, _ = buf.take("t", 2, 11)
    second, _ = buf.take("t", 2, 13)
    assert first.value_list() == [b'{"n": 10}', None] and first.keys.to_pylist() == [b"k10", b"k11"]
    assert second.value_list() == [b'{"n": 12}', b'{"n": 13}'] and second.keys.to_pylist() == [b"k12", b"k13"]
    assert list(second.offsets) == [12, 13] and list(second.timestamps_ms) == [1012, 1013]


def test_natural_cut_by_rows_and_by_bytes():
    buf = PartitionBuffer()
    buf.add(_messages(list(range(10)), values={o: b"x" * 100 for o in range(10)}))
    assert buf.natural_cut(rows=4, size=10_000) == 4
    # 1000 bytes buffered, 250 wanted: the record that crosses 250 closes the chunk
    assert buf.natural_cut(rows=100, size=250) == 3
    assert buf.natural_cut(rows=100, size=10_000) == 10
    assert np.array_equal(buf.offsets(), np.arange(10))


def test_a_joined_batch_decodes_like_a_list_batch_bad_records_included():
    import pyarrow as pa
    from flywheel.events.decode import RawBatch, decode_batch
    from flywheel.events.schema import TopicSchema

    schema = TopicSchema("t", "features", "m", {"event_id": pa.string(), "n": pa.int64()}, frozenset({"event_id"}),
                         None)
    values = {0: b'{"event_id": "a", "n": 1}', 1: None, 2: b"not json", 3: b'{"event_id": "b", "n": "x"}',
              4: b'{"event_id": "c", "n": 3, "new": true}', 5: b""}
    buf = PartitionBuffer()
    buf.add(_messages(list(range(6)), values=values))
    joined, _ = buf.take("t", 2, 5)
    listed = RawBatch("t", 2, [values[o] for o in range(6)], list(range(6)), [1000 + o for o in range(6)],
                      [f"k{o}".encode() for o in range(6)])
    a, b = decode_batch(schema, joined), decode_batch(schema, listed)
    assert a.table.equals(b.table) and a.table.column("event_id").to_pylist() == ["a", "c"]
    assert a.rejected == b.rejected
    assert [(r.offset, r.key, r.reason) for r in a.rejected] == [
        (1, b"k1", "tombstone"), (2, b"k2", "not_json"), (3, b"k3", "wrong_type"), (5, b"k5", "not_json")]


def test_a_clean_joined_batch_takes_the_one_parse_path():
    import pyarrow as pa
    from flywheel.events.decode import decode_batch
    from flywheel.events.schema import TopicSchema

    schema = TopicSchema("t", "features", "m", {"n": pa.int64()}, frozenset({"n"}), None)
    buf = PartitionBuffer()
    buf.add(_messages([3, 4, 5]))
    batch, _ = buf.take("t", 2, 5)
    out = decode_batch(schema, batch)
    assert out.rejected == [] and batch.values is None  # never split back into per-record objects
    assert out.table.column("n").to_pylist() == [3, 4, 5]
    assert out.table.column("_key").to_pylist() == [b"k3", b"k4", b"k5"]
