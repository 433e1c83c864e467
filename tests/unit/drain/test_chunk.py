"""The drain's sink without Kafka: a decoded chunk becomes one Parquet file per event hour plus one
file of rejected records, named by partition and offset range (a retry rewrites the same objects)."""

from __future__ import annotations

import io

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from flywheel.drain import layout
from flywheel.drain.chunk import ChunkWriter
from flywheel.events.decode import RawBatch, decode_batch
from flywheel.events.schema import TopicSchema
from flywheel.storage.local import LocalStore

SCHEMA = TopicSchema("t.features", "features", "m", {"id": pa.string(), "x": pa.float64()}, frozenset({"id"}),
                     "ts")


def test_rows_by_event_hour_and_rejections_in_one_file(tmp_path):
    store = LocalStore(tmp_path)
    values = [orjson.dumps({"id": "a", "x": 1.0, "ts": "2026-01-01T10:59:00Z"}), b"nope",
              orjson.dumps({"id": "b", "x": 2.0, "ts": "2026-01-01T11:00:00Z"}), None]
    batch = RawBatch(SCHEMA.topic, 1, values, [5, 6, 7, 8], [0, 0, 0, 0], [b"k"] * 4)
    decoded = decode_batch(SCHEMA, batch)
    writer = ChunkWriter(store, SCHEMA, "lz4")
    files = writer.write_rows(decoded, 1, 5, 8)
    assert [(f["rows"], f["min_offset"], f["max_offset"]) for f in files] == [(1, 5, 5), (1, 7, 7)]
    assert [f["key"] for f in files] == [layout.data_key(SCHEMA.topic, b, 1, 5, 8)
                                         for b in ("date=2026-01-01/hour=10", "date=2026-01-01/hour=11")]
    rejected = writer.write_rejected(decoded.rejected, 1, 5, 8)
    table = pq.read_table(io.BytesIO(store.get(rejected[0])))
    assert table.column("reason").to_pylist() == ["not_json", "tombstone"]
    assert table.column("value").to_pylist() == [b"nope", None]
    assert writer.write_rows(decoded, 1, 5, 8) == files  # a retry writes the same objects
