"""One event contract, end to end: the drain and the scorer judge every record alike, on the real broker.

A few thousand demo events are produced interleaved with a couple of thousand records made by a seeded
mutation fuzzer (byte flips, truncations, NaN / Infinity / 1e400 literals, nesting around and far past
the depth limit, invalid UTF-8, byte-order marks, duplicate keys, wrong JSON types in declared fields,
two documents in one value, random bytes, odd event times, values on both sides of the size limit),
plus tombstones and records without a key; some records carry Kafka headers. What each record *is*
comes from the reference decoder (``decode_reference``: every record judged alone), never from the
mutation's name: a mutation may well leave a valid event. Then:

* the drain accounts for every offset of every partition exactly once, as a drained row or a rejected
  row, and agrees with the reference on which and why (local and S3 store);
* a scorer over the same topic predicts every event the drain kept (at least once, or exactly once
  with transactions, as a read_committed consumer sees it) and dead-letters every other record; each
  rejected record is on ``<topic>.dlq`` once per stage (``flywheel.stage``: drain, scorer), with the
  same reason from both, its own value, key and headers;
* a record that makes the decoder (or the scoring step) raise costs that record only: it is set aside as
  ``internal_error`` and everything else is drained and scored, and the scorer keeps running.

Every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import random
import re
import shutil
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.drain.reader import read_topic as read_store_topic
from flywheel.events import decode
from flywheel.events.dead_letter import dead_letter_topic
from flywheel.events.decode import MAX_DEPTH, RawBatch, decode_reference
from flywheel.events.rejections import REASONS
from flywheel.events.schema import TopicSchema, topic_schemas
from flywheel.kafka_config import client_config, ensure_topics, produce_waiting
from flywheel.scoring import core
from flywheel.scoring.metrics import ScorerMetrics
from flywheel.scoring.service import Scorer, ScorerOptions
from flywheel.specs import load_spec
from flywheel.storage import open_store

from tests.fixtures.s3_server import TEST_CREDENTIALS, new_bucket
from tests.fixtures.stores import FlywheelEnv, write_spec
from tests.integration.conftest import ChampionTemplate
from tests.integration.scoring.conftest import (
    LIVE_START,
    committed_offsets,
    end_offsets,
    read_topic,
    wait_for_topics,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
GOOD = 3000
MUTANTS = 2000
TOMBSTONES = 60
#: Small, so values on both sides of the limit are cheap to make (both stages read it from the spec).
MAX_EVENT_BYTES = 4096
#: Small chunks and batches: every partition is drained in several chunks and scored in several batches.
SPEC_CHANGES = {"drain__flush_rows": 500, "drain__max_event_bytes": MAX_EVENT_BYTES}
SCORER_BATCH = 500
#: How long a scorer may take over the whole topic before the test calls it stalled (it needs seconds).
SCORER_BUDGET_S = 90.0
#: The headers every dead letter ends with, in this order, after the record's own.
FLYWHEEL_HEADERS = ("flywheel.stage", "flywheel.source.topic", "flywheel.source.partition",
                    "flywheel.source.offset", "flywheel.reason", "flywheel.detail")
MARKER = b"BOOM"

Where = tuple[int, int]  # (partition, offset)
Headers = list[tuple[str, bytes | None]]


# -- environments: the session's champion (tests/integration/conftest.py), a fresh copy of it per test ------------------------------


@pytest.fixture
def contract_env(champion_template: ChampionTemplate, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., FlywheelEnv]:
    """``contract_env(backend="local"|"s3", **spec_changes)``: the champion's model in a fresh store of
    that backend, and a spec of the same model name on fresh topics (features, labels, predictions,
    dead letters, model events, metrics) with its own consumer-group prefix."""

    def build(backend: str = "local", **changes: object) -> FlywheelEnv:
        tag = uuid.uuid4().hex[:8]
        base = f"{champion_template.name}-{tag}"
        home = tmp_path / f"env-{tag}"
        specs_dir = home / "specs"
        topics = {kind: f"{base}.{kind}" for kind in ("features", "labels", "predictions")}
        write_spec(specs_dir, champion_template.name, topics=topics, **changes)
        overrides: dict[str, Any] = {}
        if backend == "s3":
            endpoint = request.getfixturevalue("s3_endpoint")
            store_url = f"s3://{new_bucket(endpoint, 'flywheel-contract')}/lake"
            overrides = {"s3_endpoint_url": endpoint, "s3_region": TEST_CREDENTIALS["region"],
                         "s3_access_key": TEST_CREDENTIALS["access_key"],
                         "s3_secret_key": TEST_CREDENTIALS["secret_key"]}
        else:
            assert backend == "local", backend
            store_url = (home / "store").as_uri()
        settings = champion_template.settings.with_overrides(
            home=home, store_url=store_url, specs_dir=specs_dir, group_prefix=f"fw-{base}",
            model_events_topic=f"{base}.model-events", metrics_topic=f"{base}.metrics", **overrides)
        store = settings.open_store()
        if backend == "local":
            shutil.copytree(champion_template.store_dir / "models", home / "store" / "models")
        else:
            template = open_store(champion_template.store_dir.as_uri())
            for info in template.list("models/"):
                store.put(info.key, template.get(info.key))
        spec = load_spec(specs_dir / f"{champion_template.name}.yaml")
        dlq = dead_letter_topic(spec.topics.features)
        ensure_topics(settings, [*spec.drained_topics, dlq], partitions=PARTITIONS)
        ensure_topics(settings, [settings.model_events_topic], partitions=1, compacted=[settings.model_events_topic])
        ensure_topics(settings, [settings.metrics_topic], partitions=1)
        wait_for_topics(settings, [*spec.drained_topics, dlq, settings.model_events_topic])
        return FlywheelEnv(settings, spec, store)

    return build


@pytest.fixture
def alerts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Alerts raised, as (kind, message), instead of delivered (no Airflow connection lookups)."""
    raised: list[tuple[str, str]] = []

    def record(kind: str, model: str, message: str, **details: Any) -> dict[str, Any]:
        raised.append((kind, message))
        return {"kind": kind, "model": model, "message": message, **details, "delivery": {}}

    monkeypatch.setattr("flywheel.alerts.alert", record)
    return raised


def features_schema(env: FlywheelEnv) -> TopicSchema:
    return next(s for s in topic_schemas(env.spec) if s.kind == "features")


# -- the fuzzer -------------------------------------------------------------------------------------------

#: A top-level ``"name":value`` of a compact (orjson) event: a string, or anything up to the next , } or ].
_FIELD = re.compile(rb'"([A-Za-z_]+)":("(?:[^"\\]|\\.)*"|[^,}\]]*)')
_LITERALS = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1E999", b"1e308", b"1e-400",
             b"-0", b"00", b"+1", b".5", b"0x1F", b"1.0", b"1e2", b"9223372036854775807", b"9223372036854775808",
             b"-9223372036854775809", b"18446744073709551616", b"123456789012345678901234567890", b"null",
             b"true", b"True", b"[]", b"{}", b'""', b'"\\ud800"', b'"\\udc00x"', b'"\\u0000"', b'"\\x"', b"'s'",
             b"undefined", b"/*c*/", b",", b":", b"}", b"{", b"]", b"\\"]
_BAD_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
             b"\xf8\x88\x80\x80\x80", b"caf\xe9"]
_WRONG = {  # a declared field's kind -> JSON values of another type
    "float": [b'"12.50"', b"true", b"false", b"[1.5]", b'{"v":0.1}', b'""'],
    "int": [b"3.5", b"3.0", b'"3"', b"false", b"[3]", b"1e2", b"18446744073709551616"],
    "bool": [b"1", b"0", b'"true"', b"[true]", b"1.0"],
    "string": [b"123", b"1.5", b"true", b"[]", b'{"id":"x"}'],
}
_KINDS = {"double": "float", "int64": "int", "bool": "bool", "string": "string"}


class Fuzzer:
    """Seeded mutations of valid events: 1 to 3 operations stacked, each on the bytes of the value."""

    def __init__(self, schema: TopicSchema, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds = {n: _KINDS[str(t)] for n, t in zip(schema.parse_schema.names, schema.parse_schema.types,
                                                         strict=True)}
        self.ops: list[tuple[str, Callable[[bytes], bytes]]] = [
            ("flip", self.flip), ("truncate", self.truncate), ("literal", self.literal),
            ("literal_in_field", self.literal_in_field), ("deep", self.deep), ("bad_utf8", self.bad_utf8),
            ("bom", self.bom), ("duplicate_key", self.duplicate_key), ("wrong_type", self.wrong_type),
            ("two_documents", self.two_documents), ("random_bytes", self.random_bytes),
            ("drop_field", self.drop_field), ("null_field", self.null_field), ("event_time", self.event_time),
            ("not_an_object", self.not_an_object), ("newlines", self.newlines),
        ]

    def mutate(self, event: dict[str, Any]) -> tuple[str, bytes]:
        value = orjson.dumps(event)
        count = 1 + (self.rng.random() < 0.3) + (self.rng.random() < 0.1)
        chosen = [self.rng.choice(self.ops) for _ in range(count)]
        for _, op in chosen:
            value = op(value)
        names = [name for name, _ in chosen]
        if self.rng.random() < 0.05:  # last, so the size lands where it was aimed: at the limit or past it
            value, names = self.pad(value), [*names, "pad"]
        return "+".join(names), value

    # -- helpers
    def _fields(self, value: bytes) -> list[re.Match[bytes]]:
        return list(_FIELD.finditer(value))

    def _replace_value(self, value: bytes, new: bytes, names: tuple[bytes, ...] | None = None) -> bytes | None:
        fields = [m for m in self._fields(value) if names is None or m.group(1) in names]
        if not fields:
            return None
        m = self.rng.choice(fields)
        return value[:m.start(2)] + new + value[m.end(2):]

    def _insert(self, value: bytes, piece: bytes) -> bytes:
        i = self.rng.randrange(len(value) + 1)
        return value[:i] + piece + value[i:]

    def _add_field(self, value: bytes, name: bytes, new: bytes) -> bytes:
        member = b'"' + name + b'":' + new
        end = value.rstrip().rfind(b"}")
        if end < 0 or self.rng.random() < 0.3:  # first instead of last
            start = value.find(b"{")
            if start < 0:
                return self._insert(value, member)
            return value[:start + 1] + member + b"," + value[start + 1:]
        return value[:end] + b"," + member + value[end:]

    # -- operations
    def flip(self, value: bytes) -> bytes:
        data = bytearray(value)
        for _ in range(self.rng.randint(1, 3)):
            if data:
                data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def truncate(self, value: bytes) -> bytes:
        return value[:self.rng.randrange(len(value))] if value else value

    def literal(self, value: bytes) -> bytes:
        return self._insert(value, self.rng.choice(_LITERALS))

    def literal_in_field(self, value: bytes) -> bytes:
        literal = self.rng.choice(_LITERALS[:21])  # the numbers and number-like words
        return self._replace_value(value, literal) or self.literal(value)

    def deep(self, value: bytes) -> bytes:
        """Nesting just around the limit (MAX_DEPTH counts the event itself) or far past it."""
        depth = self.rng.choice([self.rng.randint(MAX_DEPTH - 3, MAX_DEPTH + 1), self.rng.randint(200, 320)])
        if self.rng.random() < 0.5:
            nested = b"[" * depth + b"]" * depth
        else:
            nested = b'{"d":' * depth + b"0" + b"}" * depth
        if self.rng.random() < 0.3:
            replaced = self._replace_value(value, nested)
            if replaced is not None:
                return replaced
        return self._add_field(value, b"nested", nested)

    def bad_utf8(self, value: bytes) -> bytes:
        seq = self.rng.choice(_BAD_UTF8)
        strings = [m for m in self._fields(value) if m.group(2).startswith(b'"')]
        if strings and self.rng.random() < 0.7:  # inside a string, where a JSON parser would carry it along
            m = self.rng.choice(strings)
            i = self.rng.randrange(m.start(2) + 1, m.end(2))
            return value[:i] + seq + value[i:]
        return self._insert(value, seq)

    def bom(self, value: bytes) -> bytes:
        return self.rng.choice([b"\xef\xbb\xbf", b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe"]) + value

    def duplicate_key(self, value: bytes) -> bytes:
        name = self.rng.choice(list(self.kinds))
        kind = self.kinds[name]
        good = {"float": b"1.25", "int": b"7", "bool": b"true", "string": b'"dup"'}[kind]
        if name == "event_time":
            good = b'"2026-11-21T10:00:00Z"'
        new = self.rng.choice([good, good, b"null", self.rng.choice(_WRONG[kind])])
        return self._add_field(value, name.encode(), new)

    def wrong_type(self, value: bytes) -> bytes:
        fields = [m for m in self._fields(value) if m.group(1).decode(errors="replace") in self.kinds]
        if not fields:
            return self.literal(value)
        m = self.rng.choice(fields)
        new = self.rng.choice(_WRONG[self.kinds[m.group(1).decode()]])
        return value[:m.start(2)] + new + value[m.end(2):]

    def two_documents(self, value: bytes) -> bytes:
        sep = self.rng.choice([b"", b" ", b"\n", b"\r\n", b"\t", b"\n\n"])
        second = self.rng.choice([value, value, b"{}", b"[]", b"1", b"null", b'{"event_id":"x"}'])
        return value + sep + second

    def random_bytes(self, value: bytes) -> bytes:
        n = self.rng.randint(0, 300)
        kind = self.rng.randrange(4)
        if kind == 0:
            return self.rng.randbytes(n)
        if kind == 1:
            return b"{" + self.rng.randbytes(n)
        if kind == 2:
            return bytes(self.rng.choice(b" !\"#,-.0123456789:[]abcdeflnrstu{}\\\n") for _ in range(n))
        tokens = [b"{", b"}", b"[", b"]", b":", b",", b'"event_id"', b'"amount"', b'"a"', b"1", b"-2.5", b"null",
                  b"true", b"NaN", b" ", b"\n"]
        return b"".join(self.rng.choice(tokens) for _ in range(n // 4 + 1))

    def drop_field(self, value: bytes) -> bytes:
        fields = self._fields(value)
        if not fields:
            return value
        m = self.rng.choice(fields)
        end = m.end() + 1 if value[m.end():m.end() + 1] == b"," else m.end()
        return value[:m.start()] + value[end:]

    def null_field(self, value: bytes) -> bytes:
        return self._replace_value(value, b"null") or value

    def event_time(self, value: bytes) -> bytes:
        """An odd event time. Years stay within 1001-9998: see test_event_times_outside_four_digit_years."""
        r = self.rng
        year = r.randint(1001, 9998)
        month = r.choice([r.randint(1, 12)] * 4 + [0, 13])
        day = r.choice([r.randint(1, 28)] * 4 + [0, 29, 30, 31, 32])
        hour, minute, second = (r.choice([r.randint(0, 23)] * 6 + [24]), r.choice([r.randint(0, 59)] * 6 + [60]),
                                r.choice([r.randint(0, 59)] * 6 + [60, 61]))
        frac = r.choice(["", ".5", ".123", ".123456", ".123456789", ".1234567891", "."])
        tz = r.choice(["Z", "Z", "z", "", "+00:00", "-05:30", "+14:00", "+25:00", "+0530", "+05", " UTC", "-00:00"])
        sep = r.choice(["T", "T", "T", "t", " ", "_"])
        text = r.choice([f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{frac}{tz}",
                         f"{year:04d}-{month:02d}-{day:02d}", f"{year:04d}{month:02d}{day:02d}T{hour:02d}{minute:02d}",
                         f"{year}-{month}-{day}T{hour}:{minute}", "yesterday", "", " 2026-11-21T00:00:00Z"])
        return self._replace_value(value, orjson.dumps(text), (b"event_time",)) or value

    def not_an_object(self, value: bytes) -> bytes:
        return self.rng.choice([b"[" + value + b"]", b"[1,2]", b'"an event"', b"42", b"-0.5", b"null", b"true",
                                b"", b" ", b"\n", b"\t\r\n", orjson.dumps(value.decode(errors="replace"))])

    def newlines(self, value: bytes) -> bytes:
        """Newlines and other whitespace inside the value (a pretty-printed event is still one)."""
        try:
            return orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2)
        except (orjson.JSONDecodeError, TypeError):  # not JSON, or nested too deep to write back
            return self._insert(value, self.rng.choice([b"\n", b"\r\n", b"\n\n", b"\n{"]))

    def pad(self, value: bytes) -> bytes:
        """An undeclared field that brings the value to the size limit, one byte past it, or far past it."""
        target = MAX_EVENT_BYTES + self.rng.choice([-1, 0, 0, 1, 1, 2, 5000])
        member_overhead = len(b',"pad":""')
        room = target - len(value) - member_overhead
        if room < 0:
            return value
        return self._add_field_last(value, b"pad", b'"' + b"x" * room + b'"')

    def _add_field_last(self, value: bytes, name: bytes, new: bytes) -> bytes:
        end = value.rstrip().rfind(b"}")
        if end < 0:
            return value + b"," + b'"' + name + b'":' + new
        return value[:end] + b',"' + name + b'":' + new + value[end:]


# -- the records of a run ----------------------------------------------------------------------------------


@dataclass
class Planned:
    partition: int
    value: bytes | None
    key: bytes | None
    headers: Headers | None
    kind: str  # "good", "tombstone", or the mutation's operations


def header_variants(i: int) -> list[Headers]:
    trace = f"trace-{i}".encode()
    return [
        [("trace", trace)],
        [("trace", trace), ("origin", None), ("trace", b"\xff\x00binary"), ("empty", b"")],
        [("flywheel.reason", b"set upstream, not by flywheel"), ("trace", trace)],
    ]


def plan_records(schema: TopicSchema, *, good: int, mutants: int, tombstones: int, seed: int) -> list[Planned]:
    """Good events, fuzzed ones and tombstones, shuffled over the partitions; some without a key, some with
    headers."""
    rng = random.Random(seed)
    fuzzer = Fuzzer(schema, seed)
    records: list[Planned] = []
    for e in event_stream(good, start=LIVE_START, seed=seed, prefix="good"):
        value = e.features
        records.append(Planned(0, orjson.dumps(value), value["event_id"].encode(), None, "good"))
    for i, e in enumerate(event_stream(mutants, start=LIVE_START, seed=seed + 1, prefix="mut")):
        kind, value = fuzzer.mutate(e.features)
        records.append(Planned(0, value, f"mut-{i}".encode(), None, kind))
    for i in range(tombstones):
        records.append(Planned(0, None, f"good{rng.randrange(good)}".encode() if i % 3 else None, None, "tombstone"))
    rng.shuffle(records)
    for i, r in enumerate(records):
        r.partition = rng.randrange(PARTITIONS)
        if rng.random() < 0.06:
            r.key = None
        if rng.random() < 0.15:
            r.headers = rng.choice(header_variants(i))
    return records


def produce_planned(env: FlywheelEnv, records: list[Planned]) -> None:
    """Produce with a Producer of our own (FlywheelEnv.produce sends no headers), in order per partition."""
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    producer = Producer(client_config(env.settings, "producer", linger_ms=20))
    topic = env.spec.topics.features
    for r in records:
        extra: dict[str, Any] = {"partition": r.partition, "on_delivery": delivered}
        if r.headers is not None:
            extra["headers"] = r.headers
        produce_waiting(producer, topic, r.value, r.key, **extra)
    assert producer.flush(30) == 0, "the producer could not deliver every test record within 30 s"
    assert not errors, f"{len(errors)} test records not delivered: {errors[:3]}"


@dataclass
class Source:
    """What the features topic holds, read back, and what the reference decoder says of each record."""

    records: dict[Where, Any]  # confluent_kafka Messages
    ends: dict[int, int]
    good: dict[Where, tuple[bytes | None, Any]]  # -> (Kafka key, event id)
    rejected: dict[Where, str]  # -> reason

    def describe(self, where: Where) -> str:
        m = self.records[where]
        value = m.value()
        shown = value if value is None or len(value) <= 160 else value[:160] + b"..."
        return f"{where}: key={m.key()!r} value={shown!r}"


def read_source(env: FlywheelEnv, planned: list[Planned]) -> Source:
    topic = env.spec.topics.features
    messages = read_topic(env.settings.kafka_bootstrap, topic)
    records = {(m.partition(), m.offset()): m for m in messages}
    assert len(records) == len(messages) == len(planned), (len(records), len(messages), len(planned))
    ends = end_offsets(env.settings, topic)
    for p in range(PARTITIONS):
        in_order = [records[(p, o)].value() for o in range(ends[p])]  # KeyError: a gap in the offsets
        assert in_order == [r.value for r in planned if r.partition == p], f"partition {p} is not as produced"
        headers = [records[(p, o)].headers() for o in range(ends[p])]
        assert headers == [r.headers for r in planned if r.partition == p], f"partition {p}: headers not as produced"
    schema = features_schema(env)
    good: dict[Where, tuple[bytes | None, Any]] = {}
    rejected: dict[Where, str] = {}
    for p in range(PARTITIONS):
        batch = [records[(p, o)] for o in range(ends[p])]
        headers = [m.headers() for m in batch]
        raw = RawBatch(topic, p, [m.value() for m in batch], [m.offset() for m in batch],
                       [m.timestamp()[1] for m in batch], [m.key() for m in batch],
                       headers=headers if any(headers) else None)
        reference = decode_reference(schema, raw, max_event_bytes=env.spec.drain.max_event_bytes)
        table = reference.table
        for offset, key, event_id in zip(table.column("_offset").to_pylist(), table.column("_key").to_pylist(),
                                         table.column(env.spec.key_field).to_pylist(), strict=True):
            good[(p, offset)] = (key, event_id)
        for r in reference.rejected:
            rejected[(p, r.offset)] = r.reason
    assert good.keys().isdisjoint(rejected) and len(good) + len(rejected) == len(records)
    return Source(records, ends, good, rejected)


def produce_fuzzed_topic(env: FlywheelEnv, seed: int) -> Source:
    planned = plan_records(features_schema(env), good=GOOD, mutants=MUTANTS, tombstones=TOMBSTONES, seed=seed)
    produce_planned(env, planned)
    source = read_source(env, planned)
    reasons = Counter(source.rejected.values())
    # The fuzzer must reach every rule, and leave some mutants valid, or it tests less than it claims.
    reachable = set(REASONS) - {"internal_error"}
    assert reachable <= reasons.keys(), f"the fuzzer never produced {sorted(reachable - reasons.keys())}: {reasons}"
    mutants_kept = sum(1 for where in source.good if not source.records[where].value().startswith(b'{"event_id":"good'))
    assert mutants_kept > 0, "every mutant was rejected: the reference judged nothing borderline"
    kinds = Counter(r.kind.split("+")[0] for r in planned)
    print(f"\nproduced {len(planned)} records: {len(source.good)} valid (of which {mutants_kept} mutants), "
          f"rejected {dict(sorted(reasons.items()))}; first mutation {dict(sorted(kinds.items()))}")
    return source


# -- checks --------------------------------------------------------------------------------------------------


def _examples(source: Source, where: set[Where] | list[Where], n: int = 5) -> str:
    return "\n  ".join(source.describe(w) for w in sorted(where)[:n])


def check_drain(env: FlywheelEnv, source: Source, summary: dict[str, Any]) -> None:
    """Every offset once, as a row or a rejected row, as the reference says."""
    topic = env.spec.topics.features
    key_field = env.spec.key_field
    rows = read_store_topic(env.store, topic, columns=["_partition", "_offset", "_key", key_field])
    rejected = read_store_topic(env.store, topic, rejected=True,
                                columns=["_partition", "_offset", "_key", "value", "reason", "detail"])
    assert rows is not None and rejected is not None, "the drain wrote no rows or no rejected rows"
    row_where = list(zip(rows.column("_partition").to_pylist(), rows.column("_offset").to_pylist(), strict=True))
    rej = rejected.to_pylist()
    rej_where = [(r["_partition"], r["_offset"]) for r in rej]
    every = Counter(row_where) + Counter(rej_where)
    offsets = set(source.records)
    twice = {w for w, n in every.items() if n > 1}
    missing = offsets - every.keys()
    unknown = every.keys() - offsets
    assert not twice, f"{len(twice)} offsets drained more than once (as rows and/or rejected):\n  {_examples(source, twice)}"
    assert not missing, f"{len(missing)} offsets neither drained nor rejected:\n  {_examples(source, missing)}"
    assert not unknown, f"{len(unknown)} drained offsets that are not in the topic: {sorted(unknown)[:5]}"

    kept_not_valid = set(row_where) - source.good.keys()
    dropped_valid = set(rej_where) & source.good.keys()
    assert not kept_not_valid, (f"{len(kept_not_valid)} records the reference rejects were drained as rows:\n  "
                                + "\n  ".join(f"{source.describe(w)} -> reference: {source.rejected[w]}"
                                              for w in sorted(kept_not_valid)[:5]))
    reasons = {(r["_partition"], r["_offset"]): r["reason"] for r in rej}
    assert not dropped_valid, (f"{len(dropped_valid)} records the reference accepts were rejected:\n  "
                               + "\n  ".join(f"{source.describe(w)} -> drain: {reasons[w]}"
                                             for w in sorted(dropped_valid)[:5]))
    other_reason = {w: (reasons[w], source.rejected[w]) for w in reasons if reasons[w] != source.rejected[w]}
    assert not other_reason, (f"{len(other_reason)} records rejected for another reason than the reference's "
                              "(drain, reference):\n  " + "\n  ".join(f"{source.describe(w)} -> {other_reason[w]}"
                                                                     for w in sorted(other_reason)[:5]))
    for r in rej:
        m = source.records[(r["_partition"], r["_offset"])]
        assert (r["value"], r["_key"]) == (m.value(), m.key()), f"rejected row {source.describe((m.partition(), m.offset()))}"
        assert r["detail"], f"rejected row without detail: {r}"
    drained_ids = Counter(zip(rows.column("_key").to_pylist(), rows.column(key_field).to_pylist(), strict=True))
    assert drained_ids == Counter(source.good.values()), "drained rows carry other keys or event ids than the records"

    assert summary["rows"] == len(source.good), summary
    assert summary["rejected"] == len(source.rejected), summary
    assert summary["reasons"] == dict(Counter(source.rejected.values())), summary
    assert summary["partitions"] == {str(p): source.ends[p] for p in range(PARTITIONS)}, summary


@dataclass
class DeadLetter:
    stage: str
    where: Where
    reason: str
    detail: str
    value: bytes | None
    key: bytes | None
    original_headers: Headers


def read_dead_letters(env: FlywheelEnv) -> list[DeadLetter]:
    topic = env.spec.topics.features
    letters = []
    for m in read_topic(env.settings.kafka_bootstrap, dead_letter_topic(topic)):
        headers = list(m.headers() or [])
        ours = dict(headers[-len(FLYWHEEL_HEADERS):])
        assert [name for name, _ in headers[-len(FLYWHEEL_HEADERS):]] == list(FLYWHEEL_HEADERS), (
            f"a dead letter does not end with flywheel's headers in order: {headers}")
        assert ours["flywheel.source.topic"] == topic.encode(), headers
        where = (int(ours["flywheel.source.partition"]), int(ours["flywheel.source.offset"]))
        letters.append(DeadLetter(ours["flywheel.stage"].decode(), where, ours["flywheel.reason"].decode(),
                                  ours["flywheel.detail"].decode(), m.value(), m.key(),
                                  headers[:-len(FLYWHEEL_HEADERS)]))
    return letters


def check_dead_letters(env: FlywheelEnv, source: Source, letters: list[DeadLetter],
                       stages: tuple[str, ...] = ("drain", "scorer")) -> None:
    """Each rejected record once per stage, with the reference's reason, its own value, key and headers."""
    by_stage: dict[str, Counter[Where]] = defaultdict(Counter)
    reason_of: dict[tuple[str, Where], str] = {}
    for d in letters:
        by_stage[d.stage][d.where] += 1
        reason_of[(d.stage, d.where)] = d.reason
        m = source.records.get(d.where)
        assert m is not None, f"a dead letter points at {d.where}, which is not in the topic"
        assert (d.value, d.key) == (m.value(), m.key()), f"{d.stage} dead letter of {source.describe(d.where)}: " \
                                                         f"value or key changed to {d.value!r:.200}, {d.key!r}"
        assert d.original_headers == list(m.headers() or []), (
            f"{d.stage} dead letter of {d.where} lost or changed the record's headers: "
            f"{d.original_headers} instead of {m.headers()}")
        assert d.detail, f"{d.stage} dead letter of {d.where} without detail"
    assert set(by_stage) == set(stages), f"dead letters from stages {sorted(by_stage)}, expected {list(stages)}"
    for stage in stages:
        got = by_stage[stage]
        twice = {w for w, n in got.items() if n > 1}
        missing = source.rejected.keys() - got.keys()
        extra = got.keys() - source.rejected.keys()
        assert not twice, f"{len(twice)} records dead-lettered more than once by the {stage}:\n  {_examples(source, twice)}"
        assert not missing, f"{len(missing)} rejected records not dead-lettered by the {stage}:\n  " \
                            f"{_examples(source, missing)}"
        assert not extra, (f"{len(extra)} valid records dead-lettered by the {stage}:\n  "
                           + "\n  ".join(f"{source.describe(w)} -> {reason_of[(stage, w)]}" for w in sorted(extra)[:5]))
    disagree = {w: tuple(reason_of[(s, w)] for s in stages) for w in source.rejected
                if {reason_of[(s, w)] for s in stages} != {source.rejected[w]}}
    assert not disagree, (f"{len(disagree)} records dead-lettered for different reasons ({', '.join(stages)}; "
                          "reference):\n  " + "\n  ".join(f"{source.describe(w)} -> {disagree[w]}; {source.rejected[w]}"
                                                          for w in sorted(disagree)[:5]))


def read_predictions(env: FlywheelEnv) -> list[tuple[bytes | None, Any, dict[str, Any]]]:
    """(Kafka key, event id, prediction) of every prediction a read_committed consumer sees."""
    out = []
    for m in read_topic(env.settings.kafka_bootstrap, env.spec.topics.predictions):
        value = orjson.loads(m.value())
        out.append((m.key(), value[env.spec.key_field], value))
    return out


def check_predictions(env: FlywheelEnv, expected: Counter[tuple[bytes | None, Any]], *, exactly_once: bool,
                      may_miss: frozenset[tuple[bytes | None, Any]] = frozenset()) -> None:
    """Every expected (key, event id) predicted (``may_miss`` excused), nothing else; exactly once if asked."""
    predictions = read_predictions(env)
    got = Counter((key, event_id) for key, event_id, _ in predictions)
    missing = Counter({k: n for k, n in (expected - got).items() if k not in may_miss})
    unexpected = got.keys() - expected.keys()
    assert not missing, f"{sum(missing.values())} events the drain kept have no prediction, e.g. {list(missing)[:5]}"
    assert not unexpected, f"predictions of {len(unexpected)} events that are not valid, e.g. {sorted(unexpected, key=repr)[:5]}"
    if exactly_once:
        twice = {k: n for k, n in got.items() if n > expected[k]}
        assert not twice, f"{len(twice)} events scored more than once, e.g. {list(twice.items())[:5]}"
    versions = Counter(p["model_version"] for _, _, p in predictions)
    assert versions.keys() == {"1"}, f"predictions by model versions {versions}, expected all by champion v1"


# -- running the stages ----------------------------------------------------------------------------------------

#: The drain stops itself between chunks after the spec's max_seconds (120 s); past this it hangs.
DRAIN_BUDGET_S = 150.0


def drain_bounded(env: FlywheelEnv) -> dict[str, Any]:
    """``drain_topic`` of the features topic on a thread: what it returned, or a clear failure if it hangs."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = drain_topic(env.settings, env.spec.topics.features)
        except BaseException as exc:  # re-raised below, on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="contract-drain", daemon=True)
    thread.start()
    thread.join(DRAIN_BUDGET_S)
    assert not thread.is_alive(), f"the drain did not return within {DRAIN_BUDGET_S:g}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"]



class ScorerThread(threading.Thread):
    """``Scorer.run`` on a thread of its own; what it returned, or what it raised."""

    def __init__(self, scorer: Scorer, **bounds: Any) -> None:
        super().__init__(name="contract-scorer", daemon=True)
        self.scorer, self.bounds = scorer, bounds
        self.result: ScorerMetrics | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.scorer.run(**self.bounds)
        except BaseException as exc:  # reported by the test, with the scorer's progress
            self.error = exc

    def stop(self, timeout: float = 30) -> None:
        self.scorer.stop()
        self.join(timeout)
        assert not self.is_alive(), f"the scorer did not stop within {timeout:g}s of stop()"

    def assert_alive(self) -> None:
        assert self.error is None, f"the scorer raised: {self.error!r}"
        assert self.is_alive(), f"the scorer stopped by itself: {self.scorer.metrics.snapshot()}"


def scorer_group(env: FlywheelEnv) -> str:
    return f"{env.settings.group_prefix}-scorer-{env.spec.name}"


def score_everything(env: FlywheelEnv, total: int, *, exactly_once: bool,
                     budget_s: float = SCORER_BUDGET_S) -> ScorerMetrics:
    """A scorer bounded by the topic's size and by ``budget_s``; fails clearly if it stalls or raises."""
    scorer = Scorer(env.settings, env.spec, ScorerOptions(exactly_once=exactly_once, batch_size=SCORER_BATCH,
                                                          poll_interval_s=300, metrics_interval_s=1))
    thread = ScorerThread(scorer, max_events=total, max_seconds=budget_s)
    started = time.monotonic()
    thread.start()
    thread.join(budget_s + 60)
    if thread.is_alive():
        thread.stop()
        pytest.fail(f"the scorer was still running {time.monotonic() - started:.0f}s after it started "
                    f"(consumed {scorer.metrics.consumed} of {total})")
    assert thread.error is None, f"the scorer raised after consuming {scorer.metrics.consumed} of {total}: " \
                                 f"{thread.error!r}"
    metrics = thread.result
    assert metrics is not None
    assert metrics.consumed == total, (
        f"the scorer stalled: it consumed {metrics.consumed} of {total} records in {budget_s:g}s "
        f"(model v{metrics.model_version}, {metrics.batches} batches)")
    committed = {p: max(o, 0) for p, o in  # -1001: nothing committed, right for an empty partition
                 committed_offsets(env.settings, scorer_group(env), env.spec.topics.features).items()}
    ends = end_offsets(env.settings, env.spec.topics.features)
    assert committed == ends, f"the scorer's committed offsets {committed} are not the partitions' ends {ends}"
    print(f"scorer ({'exactly-once' if exactly_once else 'at-least-once'}): consumed {metrics.consumed}, "
          f"scored {metrics.scored}, dead-lettered {metrics.dead_lettered} in {time.monotonic() - started:.1f}s")
    return metrics


# -- 1 and 2: fuzzed records through both stages ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "exactly_once"), [
    ("local", False), ("s3", False), ("local", True), ("s3", True),
], ids=["local-at-least-once", "s3-at-least-once", "local-exactly-once", "s3-exactly-once"])
def test_drain_and_scorer_agree_on_every_fuzzed_record(contract_env, alerts, backend, exactly_once):
    """Every offset drained or rejected once, as the reference says; every kept event predicted; every
    rejected record dead-lettered once by each stage, for the same reason, with its own headers."""
    env = contract_env(backend, **SPEC_CHANGES)
    source = produce_fuzzed_topic(env, seed=20261121)
    total = len(source.records)

    summary = drain_bounded(env)
    check_drain(env, source, summary)

    metrics = score_everything(env, total, exactly_once=exactly_once)
    letters = read_dead_letters(env)
    check_dead_letters(env, source, letters)
    check_predictions(env, Counter(source.good.values()), exactly_once=exactly_once)
    assert metrics.internal_errors == 0, f"{metrics.internal_errors} records made the scorer raise"
    assert metrics.dead_lettered == len(source.rejected), (metrics.dead_lettered, len(source.rejected))
    if exactly_once:
        assert metrics.scored == len(source.good), (metrics.scored, len(source.good))
    assert not [a for a in alerts if a[0] == "scorer_failing"], alerts


# -- 3: a record that makes the code raise ------------------------------------------------------------------


def _boom(batch: RawBatch, what: str) -> None:
    if any(v is not None and MARKER in v for v in batch.value_list()):
        raise RuntimeError(f"injected: the {what} met the marker")


def good_events(n: int, prefix: str, seed: int) -> list[dict[str, Any]]:
    return [e.features for e in event_stream(n, start=LIVE_START, seed=seed, prefix=prefix)]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["decoder", "scoring"])
def test_a_record_that_makes_the_code_raise_costs_only_that_record(contract_env, alerts, monkeypatch, where):
    """``decoder``: ``_Decoder.run`` raises for any batch holding the marked record, so both stages isolate
    it through the one contract. ``scoring``: ``core.score_records`` raises instead (the drain never sees
    it): the scorer isolates it, the drain keeps it as the valid event it is."""
    env = contract_env("local", **SPEC_CHANGES)
    topic = env.spec.topics.features
    if where == "decoder":
        real_run = decode._Decoder.run

        def run(self: Any) -> Any:
            _boom(self.batch, "decoder")
            return real_run(self)

        monkeypatch.setattr(decode._Decoder, "run", run)
    else:
        real_score = core.score_records

        def score_records(spec: Any, schema: Any, raw: RawBatch, *args: Any, **kwargs: Any) -> Any:
            _boom(raw, "scoring step")
            return real_score(spec, schema, raw, *args, **kwargs)

        monkeypatch.setattr(core, "score_records", score_records)

    first = good_events(600, "first", seed=31)
    boom_event = dict(first[301], note=MARKER.decode())
    first[301] = boom_event
    planned = [Planned(i % PARTITIONS, orjson.dumps(e), e["event_id"].encode(),
                       [("trace", b"boom-trace")] if e is boom_event else None, "good")
               for i, e in enumerate(first)]
    produce_planned(env, planned)
    boom_where = (1, 75)  # the 302nd record (index 301) goes to partition 1 as its 76th
    source_messages = {(m.partition(), m.offset()): m for m in read_topic(env.settings.kafka_bootstrap, topic)}
    assert MARKER in source_messages[boom_where].value()

    summary = drain_bounded(env)
    rows = read_store_topic(env.store, topic, columns=["_partition", "_offset", env.spec.key_field])
    drained = set(zip(rows.column("_partition").to_pylist(), rows.column("_offset").to_pylist(), strict=True))
    if where == "decoder":
        assert summary["reasons"] == {"internal_error": 1}, summary
        assert summary["rows"] == len(first) - 1 and drained == set(source_messages) - {boom_where}, summary
        rejected = read_store_topic(env.store, topic, rejected=True).to_pylist()
        assert [(r["_partition"], r["_offset"], r["reason"]) for r in rejected] == [(*boom_where, "internal_error")]
        assert "RuntimeError" in rejected[0]["detail"] and "injected" in rejected[0]["detail"], rejected[0]["detail"]
        assert [kind for kind, _ in alerts] == ["internal_error"], alerts
    else:
        assert summary["reasons"] == {} and summary["rows"] == len(first), summary
        assert drained == set(source_messages)
        assert alerts == []

    # The scorer runs until stopped: it must go past the marked record and score what comes after it.
    scorer = Scorer(env.settings, env.spec, ScorerOptions(batch_size=SCORER_BATCH, poll_interval_s=300,
                                                          metrics_interval_s=1))
    thread = ScorerThread(scorer, max_seconds=SCORER_BUDGET_S)
    thread.start()
    try:
        wait_until(lambda: thread.error is not None or scorer.metrics.consumed >= len(first), 60,
                   lambda: f"the scorer to consume the first {len(first)} records (consumed "
                           f"{scorer.metrics.consumed}, internal errors {scorer.metrics.internal_errors})")
        thread.assert_alive()
        assert scorer.metrics.internal_errors == 1, scorer.metrics.snapshot()
        second = good_events(400, "second", seed=32)
        produce_planned(env, [Planned(i % PARTITIONS, orjson.dumps(e), e["event_id"].encode(), None, "good")
                              for i, e in enumerate(second)])
        total = len(first) + len(second)
        wait_until(lambda: thread.error is not None or scorer.metrics.consumed >= total, 60,
                   lambda: f"the scorer to consume the {len(second)} records produced after the marked one "
                           f"(consumed {scorer.metrics.consumed} of {total})")
        thread.assert_alive()
    finally:
        thread.stop()
    assert thread.error is None, f"the scorer raised: {thread.error!r}"
    metrics = scorer.metrics
    assert (metrics.consumed, metrics.scored, metrics.dead_lettered, metrics.internal_errors) == \
        (total, total - 1, 1, 1), metrics.snapshot()

    expected = Counter((e["event_id"].encode(), e["event_id"]) for e in first + second if e is not boom_event)
    check_predictions(env, expected, exactly_once=False)
    letters = read_dead_letters(env)
    stages = ("drain", "scorer") if where == "decoder" else ("scorer",)
    assert sorted((d.stage, d.where, d.reason) for d in letters) == \
        sorted((stage, boom_where, "internal_error") for stage in stages), letters
    for d in letters:
        assert "RuntimeError" in d.detail and "injected" in d.detail, d.detail
        assert d.original_headers == [("trace", b"boom-trace")], d.original_headers
        assert (d.value, d.key) == (source_messages[boom_where].value(), boom_event["event_id"].encode())
    # The scorer's alert goes out on a thread of its own.
    wait_until(lambda: [kind for kind, _ in alerts] == ["internal_error"] * len(stages), 10,
               lambda: f"one internal_error alert per stage, got {alerts}")


# -- disagreements the fuzzer found (fixed), pinned down one record at a time --------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["between_good_events", "alone_in_a_batch"])
def test_an_int_feature_beyond_2_53_is_scored_not_dead_lettered(contract_env, alerts, layout):
    env = contract_env("local")
    topic = env.spec.topics.features
    events = good_events(3, "big", seed=41)
    events[1]["card_age_days"] = 2**53 + 1
    if layout == "alone_in_a_batch":
        events = events[1:]
        events[1]["account_age_days"] = -(2**62)
    env.produce(topic, [orjson.dumps(e) for e in events], [e["event_id"].encode() for e in events], partition=0)

    summary = drain_bounded(env)
    assert (summary["rows"], summary["reasons"]) == (len(events), {}), "the drain keeps them: valid 64-bit integers"
    score_everything(env, len(events), exactly_once=False, budget_s=10)
    scorer_letters = [(d.where, d.reason, d.detail) for d in read_dead_letters(env) if d.stage == "scorer"]
    assert not scorer_letters, f"the drain kept {events[1]} as a row; the scorer dead-lettered it: {scorer_letters}"
    check_predictions(env, Counter((e["event_id"].encode(), e["event_id"]) for e in events), exactly_once=True)


@pytest.mark.parametrize("event_time", ["0000-06-01T00:00:00Z", "0999-12-31T23:00:00Z", "9999-12-31T23:30:00-01:00"],
                         ids=["year_0", "year_999", "past_year_9999"])
def test_event_times_outside_four_digit_years_are_drained_or_rejected(make_env, event_time):
    """Arrow's ISO-8601 cast takes these times; the drain must then store the row where readers find it
    (or reject it as bad_timestamp, and the scorer with it), and never fail the chunk, which every later
    run would replay."""
    env = make_env()
    topic = env.spec.topics.features
    events = good_events(3, "time", seed=42)
    events[1]["event_time"] = event_time
    env.produce(topic, [orjson.dumps(e) for e in events], [e["event_id"].encode() for e in events], partition=0)

    try:
        summary = drain_topic(env.settings, topic)
    except Exception as exc:
        try:
            drain_topic(env.settings, topic)
            again = "a second run went through"
        except Exception as second:
            again = f"a second run raised too ({second!r}): the partition is stuck"
        pytest.fail(f"the drain raised on event_time={event_time!r}: {exc!r}; {again}")
    rows = read_store_topic(env.store, topic, columns=["_offset"])
    rejected = read_store_topic(env.store, topic, rejected=True, columns=["_offset", "reason"])
    found = sorted([*(rows.column("_offset").to_pylist() if rows else []),
                    *(rejected.column("_offset").to_pylist() if rejected else [])])
    assert found == [0, 1, 2], (f"event_time={event_time!r}: offsets {found} found by read_topic (rows + rejected), "
                                f"the drain reported {summary['rows']} rows, {summary['reasons']}")
