"""decode_batch on hand-made batches: every reason code, offsets kept in order, event times to UTC."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest
from flywheel.events.decode import RawBatch, decode_batch
from flywheel.events.schema import TopicSchema

SCHEMA = TopicSchema(
    topic="shop.features",
    kind="features",
    model="shop",
    fields={"event_id": pa.string(), "amount": pa.float64(), "count": pa.int64(), "online": pa.bool_(),
            "age": pa.int64()},
    required=frozenset({"event_id", "amount", "count", "online"}),
    time_field="event_time",
)
MAX_BYTES = 400
T0 = 1_764_064_800_000  # 2025-11-25T10:00:00Z in ms


def event(i: int = 0, **changes: object) -> dict:
    e = {"event_id": f"e{i}", "event_time": "2025-11-25T10:00:00Z", "amount": 10.5 + i, "count": i,
         "online": i % 2 == 0, "age": 30 + i}
    e.update(changes)
    return {k: v for k, v in e.items() if v is not _DROP}


_DROP = object()


def raw(e: dict) -> bytes:
    return orjson.dumps(e)


def batch(values: list[bytes | None], offsets: list[int] | None = None, partition: int = 3) -> RawBatch:
    offsets = offsets if offsets is not None else list(range(100, 100 + len(values)))
    keys = [f"k{o}".encode() for o in offsets]
    return RawBatch(SCHEMA.topic, partition, values, offsets, [T0 + o for o in offsets], keys)


def decode(values: list[bytes | None], offsets: list[int] | None = None):
    return decode_batch(SCHEMA, batch(values, offsets), max_event_bytes=MAX_BYTES)


# -- the happy path ----------------------------------------------------------------------------------


def test_a_clean_batch_becomes_one_typed_table_with_its_kafka_coordinates():
    values = [raw(event(i)) for i in range(5)]
    offsets = [7, 8, 12, 13, 40]  # compacted or transactional topics have gaps
    out = decode(values, offsets)
    assert out.rejected == [] and out.reason_counts() == {}
    assert out.table.schema == SCHEMA.output_schema
    rows = out.table.to_pylist()
    assert [r["_offset"] for r in rows] == offsets
    assert [r["event_id"] for r in rows] == [f"e{i}" for i in range(5)]
    assert {r["_topic"] for r in rows} == {"shop.features"} and {r["_partition"] for r in rows} == {3}
    assert [r["_key"] for r in rows] == [f"k{o}".encode() for o in offsets]
    assert [int(r["_timestamp"].timestamp() * 1000) for r in rows] == [T0 + o for o in offsets]
    assert rows[1]["_extra"] is None and rows[1]["count"] == 1 and rows[1]["online"] is False
    assert rows[0]["event_time"] == datetime(2025, 11, 25, 10, tzinfo=UTC)


def test_an_empty_batch_gives_an_empty_table_in_the_output_schema():
    out = decode([])
    assert out.table.num_rows == 0 and out.table.schema == SCHEMA.output_schema and out.rejected == []


# -- every reason -----------------------------------------------------------------------------------

BAD = [
    ("not_json", b"definitely not json", "not_json"),
    ("truncated", raw(event())[:-5], "not_json"),
    ("empty", b"", "not_json"),
    ("blank", b" \n\t ", "not_json"),
    ("array", b'[{"event_id": "x"}]', "not_object"),
    ("number", b"42", "not_object"),
    ("string", b'"e1"', "not_object"),
    ("bool", b"true", "not_object"),
    ("string_for_float", raw(event(amount="10.5")), "wrong_type"),
    ("float_for_int", raw(event(count=1.5)), "wrong_type"),
    ("integral_float_for_int", raw(event(count=2.0)), "wrong_type"),
    ("number_for_bool", raw(event(online=1)), "wrong_type"),
    ("bool_for_int", raw(event(count=True)), "wrong_type"),
    ("bool_for_float", raw(event(amount=False)), "wrong_type"),
    ("number_for_string", raw(event(event_id=17)), "wrong_type"),
    ("object_for_float", raw(event(amount={"value": 1})), "wrong_type"),
    ("list_for_nullable_int", raw(event(age=[30])), "wrong_type"),
    ("number_for_event_time", raw(event(event_time=1764064800)), "wrong_type"),
    ("missing_required", raw(event(amount=_DROP)), "missing_field"),
    ("null_required", raw(event(online=None)), "missing_field"),
    ("empty_object", b"{}", "missing_field"),
    ("bad_timestamp", raw(event(event_time="yesterday")), "bad_timestamp"),
    ("month_13", raw(event(event_time="2025-13-01T00:00:00Z")), "bad_timestamp"),
    ("oversized", raw(event(pad="x" * MAX_BYTES)), "oversized"),
    ("tombstone", None, "tombstone"),
    ("not_utf8", b"\xff\xfe\xfd", "not_utf8"),
    ("not_utf8_truncated_sequence", b"{\xc3", "not_utf8"),
    ("nan_in_declared_float", raw(event())[:-1] + b',"amount":NaN}', "not_json"),
    ("infinity_in_declared_float", raw(event(amount=_DROP))[:-1] + b',"amount":Infinity}', "not_json"),
    ("overflowing_float", raw(event(amount=_DROP))[:-1] + b',"amount":1.8e308}', "not_json"),
    ("huge_exponent", raw(event(amount=_DROP))[:-1] + b',"amount":1e400}', "not_json"),
    ("nan_in_undeclared_field", raw(event())[:-1] + b',"ratio":NaN}', "not_json"),
    ("too_deep_undeclared", b"{\"m\":" + b"[" * 140 + b"]" * 140 + b"}", "not_json"),
    ("byte_order_mark", b"\xef\xbb\xbf" + raw(event()), "not_json"),
    ("two_documents_on_one_line", raw(event()) + raw(event()), "not_json"),
    ("trailing_comma", raw(event())[:-1] + b",}", "not_json"),
    ("int_beyond_64_bits", raw(event(count=1 << 63)), "wrong_type"),
]


def test_undeclared_fields_of_any_shape_are_kept_exactly_in_extra():
    extras = {"meta": {"a": [1, 2, {"b": None}]}, "tags": [1, "a", 2.5, True, None, []], "deep": [[[[{"x": "y"}]]]],
              "n": 1, "big": 18446744073709551615}
    values = [raw(event(0, **extras)), raw(event(1, tags="plain")), raw(event(2))]
    out = decode(values)
    assert out.rejected == []
    assert [orjson.loads(x) if x else None for x in out.table.column("_extra").to_pylist()] == [
        extras, {"tags": "plain"}, None]


def test_duplicate_names_the_last_one_wins():
    out = decode([b'{"event_id":"a","event_id":"b","event_time":"2025-11-25T10:00:00Z","amount":1,"count":1,'
                  b'"online":true,"m":{"k":1,"k":2}}'])
    assert out.rejected == []
    assert out.table.column("event_id").to_pylist() == ["b"] and out.table.column("_extra").to_pylist() == ['{"m":{"k":2}}']


def test_an_integer_key_field_is_typed_by_the_spec():
    schema = TopicSchema("t", "features", "m", {"reading_id": pa.int64(), "x": pa.float64()},
                         frozenset({"reading_id"}), None)
    values = [b'{"reading_id": 12345, "x": 1}', b'{"reading_id": "12345", "x": 1}', b'{"reading_id": 1.5}']
    out = decode_batch(schema, RawBatch("t", 0, values, [0, 1, 2], [T0] * 3, [None] * 3))
    assert out.table.column("reading_id").to_pylist() == [12345]
    assert [(r.offset, r.reason) for r in out.rejected] == [(1, "wrong_type"), (2, "wrong_type")]


@pytest.mark.parametrize(("value", "reason"), [pytest.param(v, r, id=name) for name, v, r in BAD])
@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_each_bad_record_is_rejected_with_its_reason_and_kept_byte_for_byte(value, reason, position):
    good = [raw(event(i)) for i in range(4)]
    at = {"first": 0, "middle": 2, "last": 4}[position]
    values = good[:at] + [value] + good[at:]
    offsets = [50, 51, 52, 53, 54]
    out = decode(values, offsets)

    assert [(r.offset, r.reason) for r in out.rejected] == [(offsets[at], reason)], [r.detail for r in out.rejected]
    r = out.rejected[0]
    assert (r.value, r.key, r.timestamp_ms) == (value, f"k{offsets[at]}".encode(), T0 + offsets[at])
    assert r.detail
    assert out.reason_counts() == {reason: 1}
    assert out.table.column("_offset").to_pylist() == [o for o in offsets if o != offsets[at]]
    assert out.table.column("event_id").to_pylist() == ["e0", "e1", "e2", "e3"]


def test_oversized_is_strictly_over_the_limit():
    base = raw(event())
    fitting = base[:-1] + b',"p":"' + b"x" * (MAX_BYTES - len(base) - 7) + b'"}'
    assert len(fitting) == MAX_BYTES
    over = fitting[:-2] + b'x"}'
    out = decode([fitting, over])
    assert out.table.column("_offset").to_pylist() == [100]
    assert [(r.offset, r.reason) for r in out.rejected] == [(101, "oversized")]


def test_many_bad_records_keep_every_offset_in_order():
    values, expected_good, expected_bad = [], [], []
    for i in range(60):
        name, value, reason = BAD[i % len(BAD)] if i % 3 == 0 else ("good", raw(event(i)), None)
        values.append(value)
        (expected_good if reason is None else expected_bad).append((1000 + 2 * i, reason))
    out = decode(values, [1000 + 2 * i for i in range(60)])
    assert out.table.column("_offset").to_pylist() == [o for o, _ in expected_good]
    assert [(r.offset, r.reason) for r in out.rejected] == expected_bad
    assert out.table.num_rows + len(out.rejected) == len(values)
    # each row still carries its own event: e<i> sits at offset 1000 + 2i
    for offset, event_id in zip(out.table.column("_offset").to_pylist(), out.table.column("event_id").to_pylist(),
                                strict=True):
        assert event_id == f"e{(offset - 1000) // 2}"


# -- unusual but valid ---------------------------------------------------------------------------------


def test_pretty_printed_extra_fields_and_missing_nullables_are_accepted():
    pretty = orjson.dumps(event(0), option=orjson.OPT_INDENT_2)
    assert b"\n" in pretty
    extra = raw(event(1, brand_new={"nested": [1, 2]}, note="hi", nothing=None))
    no_age = raw(event(2, age=_DROP))
    null_age = raw(event(3, age=None))
    int_for_float = raw(event(4, amount=7))
    no_time = raw(event(5, event_time=_DROP))
    out = decode([pretty, extra, no_age, null_age, int_for_float, no_time])
    assert out.rejected == []
    rows = out.table.to_pylist()
    assert [r["_offset"] for r in rows] == list(range(100, 106))
    assert rows[0]["event_id"] == "e0" and rows[0]["_extra"] is None
    assert orjson.loads(rows[1]["_extra"]) == {"brand_new": {"nested": [1, 2]}, "note": "hi"}
    assert rows[2]["age"] is None and rows[3]["age"] is None
    assert rows[4]["amount"] == 7.0 and isinstance(rows[4]["amount"], float)
    assert rows[5]["event_time"] is None


# -- event time -------------------------------------------------------------------------------------

TIMES = [
    ("2025-11-25T10:00:00Z", datetime(2025, 11, 25, 10, tzinfo=UTC)),
    ("2025-11-25T10:00:00.123Z", datetime(2025, 11, 25, 10, 0, 0, 123000, tzinfo=UTC)),
    ("2025-11-25T10:00:00.123456Z", datetime(2025, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)),
    ("2025-11-25T10:00:00+01:00", datetime(2025, 11, 25, 9, tzinfo=UTC)),
    ("2025-11-25T10:00:00.5-02:30", datetime(2025, 11, 25, 12, 30, 0, 500000, tzinfo=UTC)),
    ("2025-11-25T00:30:00+01:00", datetime(2025, 11, 24, 23, 30, tzinfo=UTC)),  # crosses midnight
    ("2025-11-25T10:00:00", datetime(2025, 11, 25, 10, tzinfo=UTC)),  # naive: taken as UTC
    ("2025-11-25T10:00:00.25", datetime(2025, 11, 25, 10, 0, 0, 250000, tzinfo=UTC)),
    ("2025-11-25 10:00:00Z", datetime(2025, 11, 25, 10, tzinfo=UTC)),
]


@pytest.mark.parametrize(("text", "instant"), TIMES, ids=[t for t, _ in TIMES])
@pytest.mark.parametrize("neighbours", ["alone", "mixed"])
def test_event_times_are_parsed_to_utc(text, instant, neighbours):
    """The same instant whether the batch takes Arrow's bulk cast or the per-row fallback."""
    values = [raw(event(0, event_time=text))]
    if neighbours == "mixed":  # a naive time, an offset time and a bad one: the bulk cast cannot be used
        values += [raw(event(1, event_time="2025-11-25T11:00:00")), raw(event(2, event_time="2025-11-25T11:00:00+02:00")),
                   raw(event(3, event_time="soon"))]
    out = decode(values)
    times = out.table.column("event_time").to_pylist()
    assert times[0] == instant and times[0].utcoffset().total_seconds() == 0
    if neighbours == "mixed":
        assert times[1:] == [datetime(2025, 11, 25, 11, tzinfo=UTC), datetime(2025, 11, 25, 9, tzinfo=UTC)]
        assert [(r.offset, r.reason) for r in out.rejected] == [(103, "bad_timestamp")]
    assert str(out.table.schema.field("event_time").type) == "timestamp[us, tz=UTC]"


def test_topic_without_event_time_field():
    schema = TopicSchema("shop.labels", "labels", "shop", {"event_id": pa.string(), "label": pa.int64()},
                         frozenset({"event_id", "label"}), None)
    b = RawBatch("shop.labels", 0, [b'{"event_id":"a","label":1}', b'{"event_id":"b","label":"1"}'], [0, 1],
                 [T0, T0], [None, None])
    out = decode_batch(schema, b)
    assert out.table.column("event_id").to_pylist() == ["a"]
    assert out.table.schema == schema.output_schema
    assert [(r.offset, r.reason) for r in out.rejected] == [(1, "wrong_type")]


# -- bugs found and fixed, kept as regression tests ----------------------------------------------


@pytest.mark.parametrize("value", [
    raw(event(0)).replace(b'"e0"', b'"e\xff0"'),
    raw(event(0, note="x")).replace(b'"x"', b'"caf\xe9"'),
], ids=["declared_field", "extra_field"])
def test_invalid_utf8_inside_a_json_string_is_rejected(value):
    out = decode([raw(event(1)), value, raw(event(2))])
    assert [(r.offset, r.reason) for r in out.rejected] == [(101, "not_utf8")]


@pytest.mark.parametrize("joiner", [b"", b"\n", b" "], ids=["adjacent", "newline", "space"])
def test_a_two_object_value_is_not_hidden_by_a_blank_one(joiner):
    values = [raw(event(0)), raw(event(1)) + joiner + raw(event(2)), b"", raw(event(3))]
    out = decode(values)
    landed = dict(zip(out.table.column("_offset").to_pylist(), out.table.column("event_id").to_pylist(), strict=True))
    assert landed == {100: "e0", 103: "e3"}


def test_a_json_null_value_is_not_an_object():
    out = decode([raw(event(0)), b"null"])
    assert [(r.offset, r.reason) for r in out.rejected] == [(101, "not_object")]


_NULL_FIRST = """
import orjson, pyarrow as pa
from flywheel.events.decode import RawBatch, decode_batch
from flywheel.events.schema import TopicSchema
schema = TopicSchema("t", "features", "m", {"event_id": pa.string()}, frozenset({"event_id"}), None)
out = decode_batch(schema, RawBatch("t", 0, [b"null", b'{"event_id": "a"}'], [0, 1], [0, 0], [None, None]))
print([(r.offset, r.reason) for r in out.rejected])
"""


def test_a_json_null_value_first_in_a_batch_does_not_crash_the_process():
    proc = subprocess.run([sys.executable, "-c", _NULL_FIRST], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"rc={proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.strip() == "[(0, 'not_object')]"


@pytest.mark.parametrize(("first", "neighbour"), [(1, 1.5), (12345678901234567891, None)], ids=["int_next_to_float", "big_int"])
def test_extra_fields_keep_their_json_values(first, neighbour):
    values = [raw(event(0, ref=first))]
    if neighbour is not None:
        values.append(raw(event(1, ref=neighbour)))
    out = decode(values)
    assert out.table.column("_extra").to_pylist()[0] == orjson.dumps({"ref": first}).decode()


def test_valid_non_ascii_text_survives_the_ascii_shortcut():
    values = [raw(event(0, note="café ☕")), raw(event(1)).replace(b'"e1"', "\"é1\"".encode())]
    out = decode(values)
    assert out.rejected == []
    assert out.table.column("event_id").to_pylist() == ["e0", "é1"]
    assert orjson.loads(out.table.column("_extra")[0].as_py()) == {"note": "café ☕"}


def test_offsets_and_timestamps_may_come_as_int64_arrays():
    """As the drain's buffer hands them over; a rejected record still reports plain ints."""
    import numpy as np

    offsets = np.array([5, 6, 9], dtype=np.int64)
    b = RawBatch(SCHEMA.topic, 1, [raw(event(0)), b"[1]", b' {"event_id": "e2", "amount": 1.0, "count": 2, '
                                   b'"online": true}'], offsets, offsets + T0, [None, None, b"k"])
    out = decode_batch(SCHEMA, b, max_event_bytes=MAX_BYTES)
    assert out.table.column("_offset").to_pylist() == [5, 9]  # a leading blank is fine, off the bulk fast path
    assert [(r.offset, r.timestamp_ms, r.reason) for r in out.rejected] == [(6, T0 + 6, "not_object")]
    assert type(out.rejected[0].offset) is int and type(out.rejected[0].timestamp_ms) is int


@pytest.mark.parametrize("event_time", ["0000-06-01T00:00:00Z", "9999-12-31T23:30:00-01:00", "+10000-01-01T00:00:00Z"])
def test_event_times_outside_years_1_to_9999_are_bad_timestamps(event_time):
    out = decode([raw(event(0)), raw(event(1, event_time=event_time))])
    assert [(r.offset, r.reason) for r in out.rejected] == [(101, "bad_timestamp")]


def test_a_kafka_timestamp_beyond_year_9999_is_a_bad_timestamp_without_an_event_time():
    schema = TopicSchema("t", "features", "m", {"id": pa.string()}, frozenset({"id"}), None)
    far = 400_000 * 365 * 86_400_000
    out = decode_batch(schema, RawBatch("t", 0, [b'{"id":"a"}', b'{"id":"b"}', b'{}'], [0, 1, 2], [T0, far, far],
                                        [None] * 3))
    assert out.table.column("id").to_pylist() == ["a"]
    assert [(r.offset, r.reason) for r in out.rejected] == [(1, "bad_timestamp"), (2, "missing_field")]


def test_a_year_before_1000_is_filed_under_a_four_digit_year():
    from flywheel.drain import layout

    out = decode([raw(event(0, event_time="0999-12-31T23:00:00Z"))])
    assert out.rejected == []
    hour = out.table.column("event_time").cast(pa.int64())[0].as_py() // 3_600_000_000
    assert layout.hour_bucket(hour) == "date=0999-12-31/hour=23"


def test_a_record_keeps_the_first_reason_it_was_given():
    out = decode([raw(event(0, amount=_DROP, event_time="yesterday"))])
    assert [r.reason for r in out.rejected] == ["missing_field"]
