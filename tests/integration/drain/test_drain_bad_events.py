"""Bad events on a real topic: each one is set aside, with its reason, its exact bytes and its offset,
in the store's rejected area and on ``<topic>.dlq``; every good event around it still lands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.drain.reader import read_topic
from flywheel.kafka_config import client_config

from tests.fixtures.kafka_broker import REPO, unique

pytestmark = pytest.mark.integration

MAX_EVENT_BYTES = 2000
PARTITIONS = 4


def _good(n: int, prefix: str) -> list[dict]:
    return [e.features for e in event_stream(n, prefix=prefix, rate_per_s=1 / 20)]


def _changed(event: dict, drop: tuple[str, ...] = (), **changes: Any) -> bytes:
    out = {k: v for k, v in event.items() if k not in drop}
    out.update(changes)
    return orjson.dumps(out)


def _bad_events(template: dict) -> list[tuple[str, bytes | None, str]]:
    """(name, raw value, expected reason) of every kind of bad event."""
    return [
        ("not_json", b"definitely, not {json", "not_json"),
        ("json_array", b'[{"event_id": "x1"}, 2]', "not_object"),
        ("json_number", b"42", "not_object"),
        ("json_string", b'"an event"', "not_object"),
        ("string_for_float", _changed(template, amount="12.50"), "wrong_type"),
        ("float_for_int", _changed(template, hour_of_day=3.5), "wrong_type"),
        ("number_for_bool", _changed(template, is_online=1), "wrong_type"),
        ("bool_for_int", _changed(template, card_age_days=True), "wrong_type"),
        ("object_for_float", _changed(template, ip_risk={"v": 0.1}), "wrong_type"),
        ("number_for_key", _changed(template, event_id=12345), "wrong_type"),
        ("missing_required", _changed(template, drop=("amount",)), "missing_field"),
        ("null_required", _changed(template, merchant_risk=None), "missing_field"),
        ("bad_event_time", _changed(template, event_time="yesterday at noon"), "bad_timestamp"),
        ("event_time_month_13", _changed(template, event_time="2026-13-01T00:00:00Z"), "bad_timestamp"),
        ("oversized", _changed(template, padding="x" * MAX_EVENT_BYTES), "oversized"),
        ("tombstone", None, "tombstone"),
        ("invalid_utf8", b"\xff\xfe{\x80}", "not_utf8"),
        ("empty", b"", "not_json"),
        ("blank", b"  \n ", "not_json"),
        ("truncated", _changed(template)[:-20], "not_json"),
        ("nan_in_declared_float", _changed(template, drop=("amount",))[:-1] + b',"amount":NaN}', "not_json"),
        ("nan_in_undeclared_field", _changed(template)[:-1] + b',"ratio":NaN}', "not_json"),
        ("too_deep_undeclared", _changed(template)[:-1] + b',"m":' + b"[" * 200 + b"]" * 200 + b"}", "not_json"),
        ("huge_number", _changed(template, drop=("amount",))[:-1] + b',"amount":1e400}', "not_json"),
    ]


def _accepted_oddities(events: list[dict]) -> list[tuple[str, bytes, dict]]:
    """(name, raw value, the event it must land as) of unusual events that are valid."""
    pretty, extra, no_age, offset_time = (dict(e) for e in events[:4])
    extra["brand_new_field"] = {"nested": [1, 2]}
    extra["mixed"] = {"a": [1, 2, {"b": None}], "tags": [1, "a"]}
    extra["note"] = "hello"
    del no_age["customer_age"]
    offset_time["event_time"] = "2026-11-25T03:00:00.25+01:00"
    return [
        ("pretty_printed", json.dumps(pretty, indent=2).encode(), pretty),
        ("extra_fields", orjson.dumps(extra), extra),
        ("nullable_missing", orjson.dumps(no_age), no_age),
        ("event_time_with_offset", orjson.dumps(offset_time), offset_time),
    ]


def _consume_all(settings: Any, topic: str) -> list[Any]:
    """Every record of ``topic``, from the beginning of each partition to its end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(client_config(settings, "consumer", **{"group.id": unique("fw-dlq-reader")}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending, records = set(partitions), []
        deadline = time.monotonic() + 20
        while pending:
            assert time.monotonic() < deadline, f"no end of partition {sorted(pending)} of {topic} within 20 s"
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    records.append(m)
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                else:
                    raise AssertionError(m.error().str())
        return records
    finally:
        consumer.close()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_every_bad_event_is_set_aside_with_its_reason_bytes_and_offset(make_env, backend):
    env = make_env(backend, drain__max_event_bytes=MAX_EVENT_BYTES, drain__flush_rows=25)
    topic = env.spec.topics.features
    goods = _good(240, "g")
    bad = _bad_events(goods[0])
    odd = _accepted_oddities(goods[-4:])
    goods = goods[:-4]

    # Spread over the partitions: first and last, inside chunks, on chunk edges, next to each other.
    plan = {p: [("good", orjson.dumps(e), e["event_id"].encode(), e) for e in goods[p::PARTITIONS]]
            for p in range(PARTITIONS)}
    for k, (_, value, event) in enumerate(odd):
        plan[k % PARTITIONS].insert(3 + 11 * k, ("good", value, event["event_id"].encode(), event))
    for j, (name, value, reason) in enumerate(bad):
        records = plan[j % PARTITIONS]
        records.insert(j * 13 % len(records), ("bad", value, f"bad-{name}".encode(), (name, reason)))
    plan[0].insert(0, ("bad", b"{first record of the partition", b"bad-first", ("first", "not_json")))
    plan[1].append(("bad", None, b"bad-last", ("last", "tombstone")))

    produced = 0
    for p, records in plan.items():
        produced += env.produce(topic, [r[1] for r in records], [r[2] for r in records], partition=p)
    expected_bad = {(p, o): r for p, records in plan.items() for o, r in enumerate(records) if r[0] == "bad"}
    expected_good = {(p, o): r for p, records in plan.items() for o, r in enumerate(records) if r[0] == "good"}
    assert len(expected_bad) == len(bad) + 2

    summary = drain_topic(env.settings, topic)
    assert summary["rows"] + summary["rejected"] == produced, (produced, summary)
    assert summary["rows"] == len(expected_good)
    assert summary["rejected"] == len(expected_bad)
    assert summary["rows"] + summary["rejected"] == produced
    assert summary["reasons"] == dict(Counter(r[3][1] for r in expected_bad.values()))

    # Every good event landed, at its own offset, with its own values.
    table = read_topic(env.store, topic)
    rows = {(r["_partition"], r["_offset"]): r for r in table.to_pylist()}
    assert rows.keys() == expected_good.keys()
    for where, (_, _, key, event) in expected_good.items():
        row = rows[where]
        assert row["_key"] == key
        for name, value in event.items():
            if name != "event_time" and name in row:
                assert row[name] == value, (where, name)
    by_id = {r["event_id"]: r for r in rows.values()}
    pretty, extra, no_age, offset_time = (e for _, _, e in odd)
    assert by_id[pretty["event_id"]]["_extra"] is None
    assert orjson.loads(by_id[extra["event_id"]]["_extra"]) == {
        "brand_new_field": {"nested": [1, 2]}, "note": "hello", "mixed": {"a": [1, 2, {"b": None}], "tags": [1, "a"]}}
    assert by_id[no_age["event_id"]]["customer_age"] is None
    assert by_id[offset_time["event_id"]]["event_time"].isoformat() == "2026-11-25T02:00:00.250000+00:00"

    # Every bad one is in the rejected area: exact bytes, offset, key and reason, nothing else.
    rejected = read_topic(env.store, topic, rejected=True)
    assert rejected.num_rows == len(expected_bad)
    got = {(r["_partition"], r["_offset"]): r for r in rejected.to_pylist()}
    assert got.keys() == expected_bad.keys()
    for where, (_, value, key, (name, reason)) in expected_bad.items():
        r = got[where]
        assert (r["reason"], r["value"], r["_key"], r["_topic"]) == (reason, value, key, topic), name
        assert r["detail"], name

    # ...and on the dead-letter topic, once each, with where it came from.
    dlq = _consume_all(env.settings, f"{topic}.dlq")
    assert len(dlq) == len(expected_bad)
    seen = {}
    for m in dlq:
        headers = {k: v.decode() for k, v in m.headers()}
        assert headers["flywheel.stage"] == "drain"
        assert headers["flywheel.source.topic"] == topic
        where = (int(headers["flywheel.source.partition"]), int(headers["flywheel.source.offset"]))
        seen[where] = (m.value(), m.key(), headers["flywheel.reason"])
        assert headers["flywheel.detail"]
    assert seen == {w: (r[1], r[2], r[3][1]) for w, r in expected_bad.items()}

    again = drain_topic(env.settings, topic)
    assert (again["rows"], again["rejected"], again["files"]) == (0, 0, 0)
    assert len(_consume_all(env.settings, f"{topic}.dlq")) == len(expected_bad)


# -- bad events the drain currently mishandles ---------------------------------------------------------


@pytest.mark.parametrize("where", ["declared_field", "extra_field"])
def test_invalid_utf8_inside_valid_json_is_rejected(make_env, where):
    env = make_env()
    topic = env.spec.topics.features
    a, b, c = (orjson.dumps(e) for e in _good(3, "u"))
    if where == "declared_field":
        broken = b.replace(b'"u1"', b'"u\xff1"')
    else:
        broken = b[:-1] + b',"note":"caf\xe9"}'
    env.produce(topic, [a, broken, c], partition=0)

    summary = drain_topic(env.settings, topic)
    assert summary["reasons"] == {"not_utf8": 1}
    assert read_topic(env.store, topic).column("event_id").to_pylist() == ["u0", "u2"]


def test_a_blank_and_a_two_object_value_in_one_chunk_are_both_rejected(make_env):
    env = make_env()
    topic = env.spec.topics.features
    e0, e1, e2, e3 = (orjson.dumps(e) for e in _good(4, "m"))
    env.produce(topic, [e0, e1 + e2, b"", e3], partition=0)

    summary = drain_topic(env.settings, topic)
    table = read_topic(env.store, topic)
    landed = dict(zip(table.column("_offset").to_pylist(), table.column("event_id").to_pylist(), strict=True))
    assert summary["reasons"] == {"not_json": 2}, (summary["reasons"], landed)
    assert landed == {0: "m0", 3: "m3"}


def _process_env(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update({
        "FLYWHEEL_HOME": str(settings.home), "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLYWHEEL_STORE_URL": settings.store_url, "FLYWHEEL_SPECS_DIR": str(settings.specs_dir),
        "FLYWHEEL_GROUP_PREFIX": settings.group_prefix, "FLYWHEEL_BROKER_TIMEOUT_S": str(settings.broker_timeout_s),
    })
    return env


def test_a_json_null_value_is_rejected_not_fatal(make_env):
    env = make_env()
    topic = env.spec.topics.features
    a, b = (orjson.dumps(e) for e in _good(2, "n"))
    env.produce(topic, [b"null", a, b"null", b], partition=0)

    # In a subprocess: the crash is a segfault, which would take the test session with it.
    proc = subprocess.run([sys.executable, "-m", "flywheel.cli", "drain", topic], env=_process_env(env.settings),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the drain died: rc={proc.returncode}\n{proc.stderr[-2000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["reasons"] == {"not_object": 2}
    assert summary["rows"] == 2
