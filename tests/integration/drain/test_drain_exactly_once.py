"""The drain against the real broker and both real store backends: every offset lands exactly once."""

from __future__ import annotations

import orjson
import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.drain.reader import read_topic

pytestmark = pytest.mark.integration


def _events(n: int, prefix: str = "e") -> list[dict]:
    return [e.features for e in event_stream(n, prefix=prefix, rate_per_s=5)]


def _offsets_by_partition(table) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p, o in zip(table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True):
        out.setdefault(p, []).append(o)
    return {p: sorted(v) for p, v in out.items()}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_n_events_in_gives_n_rows_out_every_offset_once(make_env, backend):
    env = make_env(backend, drain__flush_rows=700)
    topic = env.spec.topics.features
    n = 5000
    env.produce_json(topic, _events(n))

    summary = drain_topic(env.settings, topic)
    assert summary["rows"] == n and summary["rejected"] == 0

    table = read_topic(env.store, topic)
    assert table.num_rows == n
    ids = table.column("event_id").to_pylist()
    assert len(set(ids)) == n
    for partition, offsets in _offsets_by_partition(table).items():
        assert offsets == list(range(len(offsets))), f"partition {partition} has gaps or duplicates"
    # event hours were spread over several files, named by offset range
    assert summary["files"] > 4

    # a second run with nothing new writes nothing and still succeeds
    again = drain_topic(env.settings, topic)
    assert again["rows"] == 0 and again["files"] == 0
    assert read_topic(env.store, topic).num_rows == n


def test_types_follow_the_spec_and_extra_fields_are_kept(make_env):
    env = make_env()
    topic = env.spec.topics.features
    events = _events(10)
    events[3]["brand_new_field"] = {"nested": [1, 2]}
    env.produce_json(topic, events)
    drain_topic(env.settings, topic)
    table = read_topic(env.store, topic)
    assert str(table.schema.field("amount").type) == "double"
    assert str(table.schema.field("hour_of_day").type) == "int64"
    assert str(table.schema.field("is_online").type) == "bool"
    assert str(table.schema.field("event_time").type) == "timestamp[us, tz=UTC]"
    extras = [x for x in table.column("_extra").to_pylist() if x]
    assert [orjson.loads(x) for x in extras] == [{"brand_new_field": {"nested": [1, 2]}}]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_compaction_keeps_every_row_once_and_leaves_one_file_per_hour(make_env, backend):
    from datetime import timedelta

    import pyarrow.compute as pc
    from flywheel.drain import layout
    from flywheel.drain.compact import compact_topic

    env = make_env(backend, drain__flush_rows=700)
    topic = env.spec.topics.features
    env.produce_json(topic, _events(3000))
    drain_topic(env.settings, topic)
    env.produce_json(topic, _events(1500, prefix="late"))  # the same event hours, drained later
    drain_topic(env.settings, topic)

    def ordered(table):
        return table.take(pc.sort_indices(table, sort_keys=[("_partition", "ascending"), ("_offset", "ascending")]))

    before = ordered(read_topic(env.store, topic))
    files_before = [i.key for i in env.store.list(layout.topic_data_prefix(topic))]
    hours = {k.rsplit("/", 1)[0] for k in files_before}
    assert len(files_before) > 2 * len(hours)

    summary = compact_topic(env.store, topic, settle=timedelta(0), compression=env.settings.parquet_compression)
    assert summary["files_merged"] == len(files_before) and summary["rows"] == 4500
    files_after = [i.key for i in env.store.list(layout.topic_data_prefix(topic))]
    assert sorted(k.rsplit("/", 1)[0] for k in files_after) == sorted(hours)  # one file per hour
    after = ordered(read_topic(env.store, topic))
    assert after.equals(before)

    # The drain goes on after compaction: new rows land beside the merged files, once.
    env.produce_json(topic, _events(500, prefix="more"))
    assert drain_topic(env.settings, topic)["rows"] == 500
    assert read_topic(env.store, topic).num_rows == 5000
    assert len(set(read_topic(env.store, topic).column("event_id").to_pylist())) == 5000
