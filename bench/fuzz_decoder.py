"""Mutation fuzzer of the event decoder: the bulk path must agree with the per-record reference.

    python -m bench.fuzz_decoder --records 2000000 --seed 1          (what `make fuzz` runs)
    python -m bench.fuzz_decoder --replay .local/fuzz/failure-1.json (re-run one saved failing batch)

Batches of about 2000 records; each record is a valid event, or one changed by a mutation family: literals
that strict JSON refuses (NaN, Infinity, 1e400, ...) and odd numbers, deep nesting, broken UTF-8, lone
surrogate escapes, duplicate names, a byte-order mark, control characters, long strings, whitespace,
pretty-printing, two documents in one value, truncation, byte flips, wrong types, nulls, escaped names, odd
timestamps, documents split over consecutive records, non-objects, random bytes. Each batch picks its own
mix: the share of bad records, ``max_event_bytes``, the decoder's block size (so that a bad record does not
send every good one of the batch to the slow path) and how the batch is handed over (a value list or the
drain's joined buffer, keys as a list or an Arrow array, headers or none).

Each batch goes through ``decode_batch`` and ``decode_reference``, and must pass: no exception, no
``internal_error``, every offset exactly once (a row or a rejection), reasons from ``REASONS``, both paths
agree (``table.equals`` and the (offset, reason) list), each rejection carries its record unchanged, valid
events come out as rows holding their values, and records whose reason is certain (a NaN literal, a BOM,
nesting deeper than MAX_DEPTH, ...) get it. Up to 40 mutated records of each batch are also decoded alone
by ``decode_batch`` (a bad record in a batch sends its whole block to the per-record path, so alone is
where Arrow's bulk parse meets it). A -0.0 that one path gives and the other 0.0 is counted apart
(``table.equals`` does not see it) and fails the run only with ``--strict-zero``.

A batch is made from (seed, batch number) alone, so any batch can be made again (``--first-batch N
--records 2000`` runs batch N alone). Batches run in worker processes (``--jobs``); a worker that dies (a
crash in native code) still has its batch saved, shrunk in fresh interpreters. A failing batch is shrunk
to a small one that still fails the same way and saved, values in base64, to
``.local/fuzz/failure-<n>.json`` (with the whole batch beside it); the run then exits non-zero.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import queue
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from flywheel.events import decode as decode_module
from flywheel.events.decode import MAX_DEPTH, DecodedBatch, RawBatch, decode_batch, decode_reference
from flywheel.events.rejections import REASONS
from flywheel.events.schema import TopicSchema

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / ".local" / "fuzz"
BATCH_RECORDS = 2000

# -- the schemas: every field type, a string key and an integer key ---------------------------------


@dataclass(frozen=True)
class Shape:
    """A schema and the role of each of its fields."""

    name: str
    schema: TopicSchema
    key: str
    float_: str
    int_: str
    bool_: str
    category: str
    nullable_int: str
    nullable_float: str
    time: str

    @property
    def declared(self) -> list[str]:
        return [*self.schema.fields, self.time]


def _shape(name: str, key: str, key_type: pa.DataType, names: list[str]) -> Shape:
    float_, int_, bool_, category, nullable_int, nullable_float, time_ = names
    fields = {key: key_type, float_: pa.float64(), int_: pa.int64(), bool_: pa.bool_(), category: pa.string(),
              nullable_int: pa.int64(), nullable_float: pa.float64()}
    schema = TopicSchema(f"fuzz.{name}", "features", "fuzz", fields,
                         frozenset({key, float_, int_, bool_, category}), time_)
    return Shape(name, schema, key, float_, int_, bool_, category, nullable_int, nullable_float, time_)


SHAPES = {
    "string_key": _shape("string_key", "event_id", pa.string(),
                         ["amount", "count", "online", "category", "age", "ratio", "event_time"]),
    "int_key": _shape("int_key", "reading_id", pa.int64(),
                      ["value", "level", "flag", "zone", "retries", "score", "ts"]),
}

# -- values ---------------------------------------------------------------------------------------

_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-"
    "\"\\/{}[]:,.'`~!@#$%^&*()+=<>?|"
    "\x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x1f\x7f"
    "é€ß☕\u2028\u2029\ufeff\u00a0\U0001f600\U0010ffff\ud7ff\ue000\uffff"
)
CATEGORIES = ["a", "b", "books", "électronique", "", " ", "null", "NaN", "0", "日本"]


def rand_str(rng: random.Random, max_len: int = 12) -> str:
    n = rng.choice([0, 1, 2, 3, 5, 8, max_len, rng.randint(0, max_len)])
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def rand_float(rng: random.Random) -> float | int:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.choice([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                           -1.7976931348623157e308, 0.1, 1e-300, 9007199254740993.0, 1e22, 1e23])
    if kind == 1:  # any finite double, bit by bit
        while True:
            f = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            if math.isfinite(f):
                return f
    if kind == 2:  # an integer where a float is declared: valid, becomes a float
        return rng.choice([0, 1, -1, 2**53 + 1, -(2**63), 2**63 - 1, 2**64 - 1, rng.randint(-(2**63), 2**64 - 1)])
    if kind == 3:
        return round(rng.uniform(-1000, 1000), rng.randint(0, 6))
    return rng.uniform(-1e6, 1e6)


def rand_int(rng: random.Random) -> int:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, -(2**63)])
    if kind == 1:
        return rng.randint(-(2**63), 2**63 - 1)
    return rng.randint(-1000, 10**6)


def rand_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value orjson can write (objects and arrays of mixed types, nulls inside)."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([rand_int(rng), rng.randint(2**63, 2**64 - 1)])
    if kind == 3:
        return rand_float(rng)
    if kind in (4, 5):
        return rand_str(rng)
    if kind in (6, 7):
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rand_str(rng, 6): rand_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def extra_name(rng: random.Random, shape: Shape) -> str:
    while True:
        name = rng.choice(["meta", "tags", "note", "_extra", "_offset", "", "x", "Event_Id", "amount ", "n"]
                          + [rand_str(rng, 8)])
        if name not in shape.declared:
            return name


# -- event times ------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rand_time(rng: random.Random) -> tuple[str, int]:
    """A valid ISO-8601 time and its instant in microseconds since the epoch, UTC."""
    us = rng.randint(0, 130 * 365 * 86400 * 10**6)
    digits = rng.choice([0, 0, 1, 3, 6, rng.randint(1, 6)])
    us -= us % 10 ** (6 - digits)
    instant = _EPOCH + timedelta(microseconds=us)
    zone = rng.choice(["Z", "Z", "", "+00:00", "offset"])
    offset = timedelta(0)
    if zone == "offset":
        minutes = rng.randint(-14 * 60 + 1, 14 * 60 - 1)
        offset = timedelta(minutes=minutes)
        sign = "-" if minutes < 0 else "+"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    local = instant + offset
    text = local.strftime("%Y-%m-%d") + rng.choice("TT ") + local.strftime("%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}"[:digits]
    return text + zone, us


ODD_TIMES = [
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00-01:00", "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+01:00", "9999-12-31T23:59:59",
    "2025-11-25", "2025-11-25T10", "2025-11-25T10:00", "2025-11-25T10:00:00.1234567Z", "2025-11-25T10:00:00,5Z",
    "2025-11-25t10:00:00z", "20251125T100000Z", "2025-W48-2", "2025-W48-2T10:00:00", "2025-329",
    "2025-11-25T24:00:00Z", "2025-11-25T23:59:60Z", "2025-02-29T00:00:00Z", "2024-02-29T00:00:00Z",
    "2025-11-25T10:00:00+01", "2025-11-25T10:00:00+0100", "2025-11-25T10:00:00+01:00:30", "2025-11-25T10:00:00+24:00",
    "2025-11-25T10:00:00-00:00", "2025-11-25T10:00:00 +01:00", " 2025-11-25T10:00:00Z", "2025-11-25T10:00:00Z ",
    "", "yesterday", "１９７０-01-01T00:00:00Z", "2025-11-25T10:00:00\x00", "2025-11-25T10:00:00.Z",
    "1970-01-01T00:00:00-23:59", "99999-01-01T00:00:00Z", "-0001-01-01T00:00:00Z", "1e10", "0000-01-01T00:00:00Z",
    "2025-11-25T10:00:00.000000000000000001Z", "2025-11-25T10:00:00Z[Europe/Paris]", "2025-11-25T10:00:00UTC",
    "2025-11-25T10:00:00+01:00Z", "2025-1-5T1:2:3Z", "2025-11-25T10:00:00.5+05:30", "1969-12-31T23:59:59.999999Z",
    "2262-04-11T23:47:16.854775807Z", "1677-09-21T00:12:43.145224192Z", "2025-11-25T10:00:00\u2028",
]


def odd_time(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(ODD_TIMES)
    if kind == 1:
        return rand_str(rng, 30)
    text = list(rand_time(rng)[0])
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text))
        text[i] = rng.choice("0123456789:-+TZ. x")
    return "".join(text)


# -- valid events and what they must become ---------------------------------------------------------


@dataclass
class Event:
    fields: dict[str, Any]
    time_us: int | None


def stable_extras(rng: random.Random) -> dict[str, Any]:
    """Undeclared fields whose types stay the same from event to event (so Arrow takes a block of them)."""
    extras: dict[str, Any] = {}
    if rng.random() < 0.5:
        extras["meta"] = {"src": rand_str(rng), "n": rng.randint(-(2**63), 2**63 - 1)}
    if rng.random() < 0.4:
        extras["tags"] = [rand_str(rng) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        extras["note"] = rng.choice([None, rand_str(rng, 40)])
    if rng.random() < 0.3:
        extras["weight"] = rng.uniform(-1e9, 1e9)
    return extras


def rand_event(rng: random.Random, shape: Shape, i: int, extras: str = "random") -> Event:
    key = f"e{i}-{rand_str(rng, 6)}" if shape.key == "event_id" else rand_int(rng)
    ev: dict[str, Any] = {shape.key: key, shape.float_: rand_float(rng), shape.int_: rand_int(rng),
                          shape.bool_: rng.random() < 0.5, shape.category: rng.choice(CATEGORIES + [rand_str(rng)])}
    for name, make in ((shape.nullable_int, rand_int), (shape.nullable_float, rand_float)):
        roll = rng.random()
        if roll < 0.6:
            ev[name] = make(rng)
        elif roll < 0.8:
            ev[name] = None
    time_us = None
    roll = rng.random()
    if roll < 0.85:
        ev[shape.time], time_us = rand_time(rng)
    elif roll < 0.92:
        ev[shape.time] = None
    if extras == "stable":
        ev.update(stable_extras(rng))
    elif extras == "random":
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 4])):
            ev[extra_name(rng, shape)] = rand_json(rng)
    items = list(ev.items())
    rng.shuffle(items)
    return Event(dict(items), time_us)


def expectation(shape: Shape, event: Event) -> dict[str, Any]:
    """What the row of a valid event must hold (JSON-friendly, so it can be saved with a failure)."""
    out: dict[str, Any] = {}
    for name, arrow_type in shape.schema.fields.items():
        v = event.fields.get(name)
        out[name] = float(v) if arrow_type == pa.float64() and v is not None else v
    out[shape.time] = event.time_us
    extra = {k: v for k, v in event.fields.items() if k not in shape.declared and v is not None}
    out["_extra"] = extra or None
    return out


# -- mutation families --------------------------------------------------------------------------------

PLACEHOLDER = "\x00fuzz-placeholder\x00"
PLACEHOLDER_JSON = orjson.dumps(PLACEHOLDER)
#: Literals strict JSON refuses wherever they stand: the record must be not_json (or oversized).
NOT_JSON_LITERALS = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"Inf", b"-Inf", b"nan", b"1e400", b"-1e400",
                     b"1.8e308", b"-1.8e308", b"1.7976931348623159e308", b"1" + b"0" * 400, b"01", b"-", b"+1",
                     b".5", b"1.", b"0x10", b"1e", b"True", b"nul", b"[1,]", b"{,}", b'"\\ud800"', b'"\\udc00"',
                     b"'a'", b"undefined", b"1_000", b"--1", b"1e+", b"\\u0031"]
#: Refused by the rule, but read by Arrow into a float column (the bulk path must check them itself).
ARROW_FLOATS = [b"NaN", b"Infinity", b"-Infinity", b"Inf", b"-Inf", b"1.8e308", b"-1.8e308", b"1.7976931348623159e308"]
#: Valid JSON numbers whose types and values are worth a close look.
ODD_NUMBERS = [b"-0", b"-0.0", b"0.0", b"-0e0", b"0e5", b"1E2", b"1e2", b"1e+2", b"1E-2", b"1.0", b"1.5", b"1e-400",
               b"-1e-400", b"5e-324", b"2.4703282292062327e-324", b"2.4703282292062328e-324",
               b"1.7976931348623157e308", b"1.7976931348623158e308", b"99999999999999999999",
               b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809",
               b"18446744073709551615", b"18446744073709551616", b"9007199254740993", b"0.1e1", b"-1.5e-5",
               b"123456789012345678901234567890e-10", b"0." + b"0" * 300 + b"1", b"1" + b"0" * 300, b"true",
               b"false", b"null", b'"1"', b"[]", b"{}", b"[1,2.5]", b'{"a":1}']
INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xef\xbb"]
SURROGATE_STRINGS = [b'"\\ud800"', b'"a\\udc00b"', b'"\\udc00\\ud800"', b'"\\ud800\\u0041"', b'"\\ud83d"',
                     b'"\\uDBFF\\uDFFF"', b'"\\uD83D\\uDE00"', b'"\\ud800\\ud800"', b'"x\\uD800"', b'"\\u00e9\\ud800"']
JSON_SPACE = [b" ", b"\t", b"\n", b"\r", b"\r\n", b"  \n\t "]
OTHER_SPACE = [b"\x0c", b"\x0b", b"\xc2\xa0", b"\x00", b"\xef\xbb\xbf", b"\x1f", b"\xe2\x80\xa8"]


@dataclass
class Made:
    """What one mutation made: the values (one, or several consecutive records) and what must come of each."""

    values: list[bytes | None]
    expected: list[dict[str, Any] | None] | None = None  # the rows of valid events
    reason: str | None = None  # a reason certain for every value (unless it is oversized)
    reasons: list[str | None] | None = None  # or one for each value


class Generator:
    def __init__(self, rng: random.Random, shape: Shape, extras: str = "random") -> None:
        self.rng = rng
        self.shape = shape
        self.extras = extras  # none | stable | random: the undeclared fields of the events
        self.i = 0

    def event(self) -> Event:
        self.i += 1
        return rand_event(self.rng, self.shape, self.i, self.extras)

    def valid(self, event: Event, value: bytes) -> Made:
        return Made([value], [expectation(self.shape, event)])

    def field(self, declared_only: bool = False) -> str:
        if declared_only or self.rng.random() < 0.75:
            return self.rng.choice(self.shape.declared)
        return extra_name(self.rng, self.shape)

    def plain(self, event: Event) -> Event:
        """The event without undeclared fields (whose presence alone makes the bulk path re-read a record)."""
        return Event({k: v for k, v in event.fields.items() if k in self.shape.declared}, event.time_us)

    def with_literal(self, event: Event, name: str, literal: bytes, wrap: bool = True) -> bytes:
        fields = dict(event.fields)
        if wrap and self.rng.random() < 0.2 and name not in self.shape.declared:  # inside an array or object
            fields[name] = self.rng.choice([[1, PLACEHOLDER], {"k": PLACEHOLDER}, [[{"a": PLACEHOLDER}]]])
        else:
            fields[name] = PLACEHOLDER
        option = orjson.OPT_INDENT_2 if self.rng.random() < 0.1 else 0
        return orjson.dumps(fields, option=option).replace(PLACEHOLDER_JSON, literal, 1)

    # each family: (generator) -> Made

    def f_valid(self) -> Made:
        event = self.event()
        return self.valid(event, orjson.dumps(event.fields))

    def f_pretty(self) -> Made:
        event = self.event()
        return self.valid(event, orjson.dumps(event.fields, option=orjson.OPT_INDENT_2))

    def f_stdlib_json(self) -> Made:
        """Python's json module: spaces between tokens, \\uXXXX escapes (surrogate pairs for astral characters)."""
        event = self.event()
        rng = self.rng
        separators = rng.choice([(",", ":"), (", ", ": "), (" , ", " : "), (",\t", ":\n")])
        text = json.dumps(event.fields, ensure_ascii=rng.random() < 0.7, separators=separators,
                          indent=rng.choice([None, None, 1, "\t"]))
        return self.valid(event, text.encode())

    def f_escaped_names(self) -> Made:
        event = self.event()
        rng = self.rng
        parts = []
        for k, v in event.fields.items():
            name = "".join(f"\\u{ord(c):04{rng.choice('xX')}}" if ord(c) < 0x10000 and rng.random() < 0.4
                           else json.dumps(c)[1:-1] for c in k)
            parts.append(b'"' + name.encode() + b'":' + orjson.dumps(v))
        return self.valid(event, b"{" + b",".join(parts) + b"}")

    def f_duplicates(self) -> Made:
        """A name given twice or more: the last one wins."""
        event = self.event()
        rng = self.rng
        pairs = list(event.fields.items())
        final = dict(event.fields)
        for _ in range(rng.randint(1, 3)):
            name = self.field()
            decoy = rng.choice([None, rand_json(rng), "x", 1, 1.5, True, [1], {"a": 1}, rand_float(rng)])
            if name in final and rng.random() < 0.7:  # the decoy first: the real value still wins
                last = max(i for i, (k, _) in enumerate(pairs) if k == name)
                pairs.insert(rng.randint(0, last), (name, decoy))
            else:  # the decoy last: it wins
                pairs.append((name, decoy))
                final[name] = decoy
        value = b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in pairs) + b"}"
        if any(final[k] is not event.fields.get(k) for k in self.shape.declared if k in final):
            return Made([value])  # a decoy won a declared field: the reference decides
        time_us = event.time_us if self.shape.time in final else None
        return self.valid(Event(final, time_us), value)

    def f_nested_duplicates(self) -> Made:
        event = self.event()
        name = extra_name(self.rng, self.shape)
        value = orjson.dumps(event.fields)[:-1]
        value += (b"," if len(event.fields) else b"") + orjson.dumps(name) + b':{"k":1,"k":[2,{"k":null,"k":3}]}}'
        event.fields[name] = {"k": [2, {"k": 3}]}
        return self.valid(event, value)

    def f_whitespace(self) -> Made:
        event = self.event()
        rng = self.rng
        lead = rng.choice([b""] + JSON_SPACE)
        trail = rng.choice([b""] + JSON_SPACE)
        value = lead + orjson.dumps(event.fields) + trail
        if rng.random() < 0.3:
            bad = rng.choice(OTHER_SPACE)
            value = bad + value if rng.random() < 0.5 else value + bad
            return Made([value], reason="not_json")
        return self.valid(event, value)

    def f_heterogeneous_extras(self) -> Made:
        event = self.event()
        rng = self.rng
        shapes = [[1, "a", 2.5, True, None, [], {}, [[None]]], {"a": [1, {"b": None}], "c": "d", "e": {}},
                  [[1, 2], ["x"], [{"y": [True]}]], {"": {"": {"": []}}}, [], {}, [None], 2**64 - 1, -(2**63),
                  [2**64 - 1, -1, 0.5], {"big": 18446744073709551615}, rand_json(rng), rand_json(rng)]
        for _ in range(rng.randint(1, 4)):
            event.fields[extra_name(rng, self.shape)] = rng.choice(shapes)
        return self.valid(event, orjson.dumps(event.fields))

    def f_long_string(self) -> Made:
        event = self.event()
        rng = self.rng
        n = rng.choice([1000, 5000, rng.randint(100, 100_000)])
        text = rng.choice(["x", "é", "☕", "\\", '"', "\x00", "{", "\U0001f600"]) * n
        name = rng.choice([self.shape.category, self.shape.key if self.shape.key == "event_id" else self.shape.category,
                           extra_name(rng, self.shape)])
        event.fields[name] = text
        return self.valid(event, orjson.dumps(event.fields))

    def f_literal(self) -> Made:
        event = self.event()
        rng = self.rng
        if rng.random() < 0.3:  # where Arrow reads them into a float column instead of failing
            floats = [n for n, t in self.shape.schema.fields.items() if t == pa.float64()]
            value = self.with_literal(self.plain(event), rng.choice(floats), rng.choice(ARROW_FLOATS))
            return Made([value], reason="not_json")
        if rng.random() < 0.5:
            return Made([self.with_literal(event, self.field(), rng.choice(NOT_JSON_LITERALS))], reason="not_json")
        literal = rng.choice(ODD_NUMBERS) if rng.random() < 0.7 else self.number_text()
        return Made([self.with_literal(event, self.field(), literal)])

    def number_text(self) -> bytes:
        """A JSON number with any number of digits and any exponent."""
        rng = self.rng
        text = rng.choice(["", "-"]) + rng.choice(["0", str(rng.randint(1, 9)) + "".join(
            rng.choice("0123456789") for _ in range(rng.choice([0, 1, 5, 15, 16, 17, 18, 19, 20, 25, 40])))])
        if rng.random() < 0.6:
            text += "." + "".join(rng.choice("0123456789") for _ in range(rng.choice([1, 3, 17, 20, 40])))
        if rng.random() < 0.5:
            text += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.choice([0, 1, 22, 23, 300, 307, 308,
                                                                                     309, 320, 323, 324, 325, 400]))
        return text.encode()

    def f_deep(self) -> Made:
        event = self.event()
        rng = self.rng
        levels = rng.choice([rng.randint(50, 2000), rng.randint(MAX_DEPTH - 3, MAX_DEPTH + 2), rng.randint(2, 60)])
        name = self.field()
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]"), (b'{"a":[', b"]}")])
        leaf = rng.choice([b"", b"1", b'"x"', b"null", b"{}", b"[]"]) if opener == b"[" else rng.choice(
            [b"1", b'"x"', b"null", b"{}", b"[]"])
        per = opener.count(b"[") + opener.count(b"{")
        k = max(1, levels // per)
        nested = opener * k + leaf + closer * k
        depth = 1 + k * per + (1 if leaf in (b"{}", b"[]") else 0)  # the event object is level 1
        if rng.random() < 0.1:  # unclosed
            nested = opener * k + leaf
            return Made([self.with_literal(event, name, nested, wrap=False)], reason="not_json")
        value = self.with_literal(event, name, nested, wrap=False)
        if depth > MAX_DEPTH:
            return Made([value], reason="not_json")
        if name in self.shape.declared:
            return Made([value], reason="wrong_type")
        return Made([value])

    def f_very_deep(self) -> Made:
        """Thousands of levels (Arrow's reader once overflowed the stack on these, killing the process)."""
        event = self.event()
        levels = self.rng.choice([3000, 10_000, 30_000, 100_000])
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        leaf = b"" if opener == b"[" else b"1"
        name = extra_name(self.rng, self.shape) if self.rng.random() < 0.8 else self.field()  # Arrow infers undeclared
        return Made([self.with_literal(event, name, opener * levels + leaf + closer * levels, wrap=False)],
                    reason="not_json")

    def f_deep_chain(self) -> Made:
        """Values that are no document alone but nest thousands deep read one after another as one text."""
        k, per = self.rng.randint(2, 40), self.rng.randint(50, 1000)
        key = orjson.dumps(self.shape.key) + b":" + orjson.dumps(self.event().fields[self.shape.key])
        opening = [b"{" + key + b',"m":' + b"[" * per] + [b'{"a":' + b"[" * per for _ in range(k - 1)]
        closing = [b"{}" + b"]" * per + b"}," for _ in range(k - 1)] + [b"{}" + b"]" * per + b"}"]
        values: list[bytes | None] = [*opening, *closing]
        return Made(values, reason="not_json")

    def f_invalid_utf8(self) -> Made:
        event = self.event()
        rng = self.rng
        value = orjson.dumps(event.fields)
        bad = rng.choice(INVALID_UTF8)
        if rng.random() < 0.3:  # inside a declared string, which Arrow would keep as it is
            strings = [f.name for f in self.shape.schema.parse_schema if f.type == pa.string()]
            value = self.with_literal(self.plain(event), rng.choice(strings), b'"a' + bad + b'b"', wrap=False)
        else:
            quotes = [i for i, c in enumerate(value) if c == 34]
            if quotes and rng.random() < 0.5:  # inside some string
                at = rng.choice(quotes) + 1
            else:
                at = rng.randint(0, len(value))
            value = value[:at] + bad + value[at:]
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return Made([value], reason="not_utf8")
        return Made([value])

    def f_surrogate(self) -> Made:
        event = self.event()
        literal = self.rng.choice(SURROGATE_STRINGS)
        value = self.with_literal(event, self.field(), literal)
        try:
            orjson.loads(literal)
        except orjson.JSONDecodeError:
            return Made([value], reason="not_json")
        return Made([value])

    def f_bom(self) -> Made:
        event = self.event()
        value = orjson.dumps(event.fields)
        where = self.rng.randrange(3)
        value = (b"\xef\xbb\xbf" + value if where == 0 else value + b"\xef\xbb\xbf" if where == 1
                 else b"\xef\xbb\xbf\xef\xbb\xbf" + value)
        return Made([value], reason="not_json")

    def f_control(self) -> Made:
        event = self.event()
        rng = self.rng
        value = orjson.dumps(event.fields)
        if rng.random() < 0.5:  # escaped: valid
            event.fields[extra_name(rng, self.shape)] = "".join(chr(rng.randint(0, 31)) for _ in range(rng.randint(1, 5)))
            return self.valid(event, orjson.dumps(event.fields))
        at = rng.randint(0, len(value))
        char = bytes([rng.choice(list(range(32)) + [127])])
        return Made([value[:at] + char + value[at:]])

    def f_two_documents(self) -> Made:
        first, second = self.event(), self.event()
        sep = self.rng.choice([b"", b" ", b"\n", b"\r", b"\r\n", b"\t", b"\n\n", b","])
        tail = self.rng.choice([orjson.dumps(second.fields), b"{}", b"[]", b"1", b"null", b'"x"'])
        return Made([orjson.dumps(first.fields) + sep + tail], reason="not_json")

    def f_truncated(self) -> Made:
        value = orjson.dumps(self.event().fields)
        return Made([value[:self.rng.randint(0, len(value) - 1)]])

    def f_flip(self) -> Made:
        rng = self.rng
        value = bytearray(orjson.dumps(self.event().fields))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(value))
            op = rng.randrange(3)
            if op == 0:
                value[at] = rng.choice(b'{}[]",:\\ 0123456789eE.+-ntfalsu\n\t\x00\xff')
            elif op == 1:
                value[at] ^= 1 << rng.randrange(8)
            else:
                del value[at]
        return Made([bytes(value)])

    def f_wrong_type(self) -> Made:
        event = self.event()
        rng = self.rng
        name = self.field(declared_only=True)
        arrow_type = self.shape.schema.parse_schema.field(name).type
        wrong: list[Any] = [[], {}, [1], {"a": 1}]
        if arrow_type != pa.bool_():
            wrong += [True, False]
        if arrow_type != pa.string():
            wrong += ["1", "1.5", "true", "", "2025-11-25T10:00:00Z"]
        if arrow_type == pa.int64():
            wrong += [1.5, 1.0, 2.0**63, -0.0, 1e300, 2**63, 2**64 - 1, -(2**63) - 1]
        if arrow_type in (pa.string(), pa.bool_()):
            wrong += [0, 1, 1.5, 17, -0.0, 2**64 - 1]
        if arrow_type == pa.float64():
            wrong += ["NaN", "1e5"]
        w = rng.choice(wrong)
        if type(w) is int and not -(2**63) <= w <= 2**64 - 1:
            return Made([self.with_literal(event, name, str(w).encode())], reason="wrong_type")
        event.fields[name] = w
        return Made([orjson.dumps(event.fields)], reason="wrong_type")

    def f_null(self) -> Made:
        event = self.event()
        rng = self.rng
        name = self.field(declared_only=True)
        if rng.random() < 0.5:
            event.fields[name] = None
        else:
            event.fields.pop(name, None)
        if name == self.shape.time:
            event.time_us = None
        value = orjson.dumps(event.fields)
        if name in self.shape.schema.required:
            return Made([value], reason="missing_field")
        return self.valid(event, value)

    def f_odd_time(self) -> Made:
        event = self.event()
        event.fields[self.shape.time] = odd_time(self.rng)
        return Made([orjson.dumps(event.fields)])

    def f_non_object(self) -> Made:
        rng = self.rng
        doc = rng.choice([[orjson.loads(orjson.dumps(self.event().fields))], [], "x", 1, 1.5, None, True,
                          rand_json(rng), [rand_json(rng)]])
        if isinstance(doc, dict):
            return Made([orjson.dumps(doc)])
        return Made([orjson.dumps(doc)], reason="not_object")

    def f_empty(self) -> Made:
        value = self.rng.choice([b"", b" ", b"\n", b"\t\r\n", b"\x00"])
        return Made([value], reason="not_json")

    def f_tombstone(self) -> Made:
        return Made([None], reason="tombstone")

    def f_split(self) -> Made:
        """One document cut where an object opens, over two or more consecutive records."""
        event = self.event()
        name = extra_name(self.rng, self.shape)
        event.fields[name] = self.rng.choice([{"a": {"b": {}}}, [{"a": 1}, {"b": [{}]}], {"x": [{"y": {"z": 1}}]}])
        value = orjson.dumps(event.fields)
        cuts = sorted(self.rng.sample([i for i, c in enumerate(value) if c == ord("{") and i > 0],
                                      k=self.rng.randint(1, 2)))
        pieces: list[bytes | None] = [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]
        # A proper prefix of one object is never JSON; a later piece may be (a cut inside a string).
        return Made(pieces, reasons=["not_json"] + [None] * (len(pieces) - 1))

    def f_random_object(self) -> Made:
        rng = self.rng
        names = self.shape.declared + [extra_name(rng, self.shape)]
        doc = {rng.choice(names): rand_json(rng) for _ in range(rng.randint(0, 8))}
        return Made([orjson.dumps(doc)])

    def f_random_bytes(self) -> Made:
        rng = self.rng
        n = rng.choice([0, 1, 2, 5, 20, 100])
        if rng.random() < 0.5:
            return Made([bytes(rng.getrandbits(8) for _ in range(n))])
        return Made([b"{" + bytes(rng.choice(b'{}[]",:\\ 01e.-ntrufalsx') for _ in range(n))])

    def f_oversized_edge(self) -> Made:
        """A valid event whose size is chosen by the batch's ``max_event_bytes`` (padded to it, or one over)."""
        event = self.event()
        if self.max_event_bytes > 1 << 16:
            return self.valid(event, orjson.dumps(event.fields))
        name = extra_name(self.rng, self.shape)
        event.fields[name] = ""
        empty = len(orjson.dumps(event.fields))
        target = self.max_event_bytes + self.rng.choice([-1, 0, 1])
        event.fields[name] = "p" * max(0, target - empty)
        return self.valid(event, orjson.dumps(event.fields))

    max_event_bytes = 1 << 20


FAMILIES: list[tuple[str, int]] = [
    ("valid", 30), ("pretty", 3), ("stdlib_json", 4), ("escaped_names", 3), ("duplicates", 3),
    ("nested_duplicates", 1), ("whitespace", 3), ("heterogeneous_extras", 3), ("long_string", 1), ("literal", 8),
    ("deep", 3), ("very_deep", 1), ("deep_chain", 1), ("invalid_utf8", 3), ("surrogate", 3), ("bom", 1), ("control", 2), ("two_documents", 2),
    ("truncated", 3), ("flip", 4), ("wrong_type", 4), ("null", 3), ("odd_time", 4), ("non_object", 2),
    ("empty", 1), ("tombstone", 1), ("split", 2), ("random_object", 3), ("random_bytes", 2), ("oversized_edge", 1),
]


# -- a batch ---------------------------------------------------------------------------------------


@dataclass
class Record:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None
    family: str
    expected: dict[str, Any] | None = None
    reason: str | None = None


@dataclass
class Case:
    """One batch and how it is handed to the decoder."""

    shape: str
    max_event_bytes: int
    block_records: int
    joined: bool
    key_array: bool
    offsets_array: bool
    partition: int
    records: list[Record]
    seed: int = 0
    batch: int = 0

    def raw(self) -> RawBatch:
        """A fresh RawBatch (each decode gets its own: a RawBatch caches what it builds)."""
        shape = SHAPES[self.shape]
        rs = self.records
        offsets: Any = [r.offset for r in rs]
        stamps: Any = [r.timestamp_ms for r in rs]
        if self.offsets_array:
            offsets, stamps = np.asarray(offsets, dtype=np.int64), np.asarray(stamps, dtype=np.int64)
        keys: Any = [r.key for r in rs]
        if self.key_array:
            keys = pa.array(keys, pa.binary())
        headers = [r.headers for r in rs] if any(r.headers is not None for r in rs) else None
        values = [r.value for r in rs]
        if self.joined:
            lengths = np.asarray([-1 if v is None else len(v) for v in values], dtype=np.int64)
            return RawBatch(shape.schema.topic, self.partition, None, offsets, stamps, keys,
                            joined=b"\n".join(v or b"" for v in values), lengths=lengths, headers=headers)
        return RawBatch(shape.schema.topic, self.partition, values, offsets, stamps, keys, headers=headers)

    def subset(self, keep: list[int]) -> Case:
        return Case(self.shape, self.max_event_bytes, self.block_records, self.joined, self.key_array,
                    self.offsets_array, self.partition, [self.records[i] for i in keep], self.seed, self.batch)

    def to_json(self) -> dict[str, Any]:
        def b64(v: bytes | None) -> str | None:
            return None if v is None else base64.b64encode(v).decode()

        return {
            "shape": self.shape, "max_event_bytes": self.max_event_bytes, "block_records": self.block_records,
            "joined": self.joined, "key_array": self.key_array, "offsets_array": self.offsets_array,
            "partition": self.partition, "seed": self.seed, "batch": self.batch,
            "records": [{"offset": r.offset, "timestamp_ms": r.timestamp_ms, "key": b64(r.key), "value": b64(r.value),
                         "headers": None if r.headers is None else [[k, b64(v)] for k, v in r.headers],
                         "family": r.family, "expected": r.expected, "reason": r.reason,
                         "value_preview": None if r.value is None else r.value[:300].decode("utf-8", "replace")}
                        for r in self.records],
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Case:
        def unb64(v: str | None) -> bytes | None:
            return None if v is None else base64.b64decode(v)

        records = [Record(r["offset"], r["timestamp_ms"], unb64(r["key"]), unb64(r["value"]),
                          None if r["headers"] is None else [(k, unb64(v)) for k, v in r["headers"]],
                          r["family"], r.get("expected"), r.get("reason")) for r in d["records"]]
        return Case(d["shape"], d["max_event_bytes"], d["block_records"], d["joined"], d["key_array"],
                    d["offsets_array"], d["partition"], records, d.get("seed", 0), d.get("batch", 0))


def make_case(seed: int, number: int, size: int = BATCH_RECORDS) -> Case:
    """Batch ``number`` of run ``seed``: the same every time."""
    rng = random.Random(f"fuzz-decoder:{seed}:{number}")
    shape = SHAPES[rng.choice(list(SHAPES))]
    max_event_bytes = rng.choice([1 << 20, 1 << 20, 1 << 20, rng.randint(200, 4096), rng.randint(1, 200)])
    # Small blocks: a bad record then costs only its block the fast path (each Arrow call costs ~2 ms).
    block = rng.choice([decode_module.BLOCK_RECORDS] * 3 + [499, 97, 23])
    bad_share = rng.choice([0.0, 0.0005, 0.002, 0.01, 0.05, 0.2, 0.5, 1.0])
    gen = Generator(rng, shape, rng.choice(["none", "stable", "stable", "random"]))
    gen.max_event_bytes = max_event_bytes
    names = [n for n, _ in FAMILIES]
    weights = [w for _, w in FAMILIES]
    if rng.random() < 0.4:  # every bad record of the batch from one family (rare families get their turn)
        names, weights = [rng.choice(names)], [1]
    with_headers = rng.random() < 0.3
    records: list[Record] = []
    offset = rng.choice([0, rng.randint(0, 2**40), 2**63 - 1 - 1001 * size])
    while len(records) < size:
        mutated = rng.random() < bad_share  # else a plain valid event, which Arrow takes in bulk
        family = rng.choices(names, weights)[0] if mutated else "valid"
        made: Made = getattr(gen, f"f_{family}")()
        if mutated and rng.random() < 0.1 and len(made.values) == 1 and family != "tombstone":  # and a byte change
            extra = rng.choice(["truncate", "flip", "insert"])
            v = made.values[0]
            assert v is not None
            if extra == "truncate" and v:
                v = v[:rng.randrange(len(v))]
            elif extra == "flip" and v:
                b = bytearray(v)
                b[rng.randrange(len(b))] = rng.getrandbits(8)
                v = bytes(b)
            else:
                at = rng.randint(0, len(v))
                v = v[:at] + rng.choice([b"\n", b",", b"}", b"{", b"\\", b'"', b"\x00", b"NaN"]) + v[at:]
            made = Made([v])
            family += "+" + extra
        reasons = made.reasons or [made.reason] * len(made.values)
        for j, value in enumerate(made.values):
            offset += rng.choice([1, 1, 1, 1, 2, 7, 1000])
            key = None if rng.random() < 0.1 else rng.choice([b"", b"k", str(offset).encode(), rng.randbytes(8)])
            headers = None
            if with_headers and rng.random() < 0.5:
                headers = [(rand_str(rng, 5), rng.choice([None, b"", rng.randbytes(rng.randint(1, 8))]))
                           for _ in range(rng.randint(0, 3))]
            records.append(Record(offset, rng.randint(-1, 2**41), key, value, headers, family,
                                  made.expected[j] if made.expected else None, reasons[j]))
    return Case(shape.name, max_event_bytes, block, rng.random() < 0.3, rng.random() < 0.5, rng.random() < 0.5,
                rng.randint(0, 2**31 - 1), records[:size], seed, number)


# -- the checks -----------------------------------------------------------------------------------------


#: Rows the bulk path took from Arrow (not from the per-record rule): how much of the fast path a run covered.
BULK_ROWS = [0]
_parse_bulk = decode_module._Decoder.parse_bulk


def _counting_parse_bulk(self: Any, idx: np.ndarray, text: memoryview) -> pa.Table | None:
    table = _parse_bulk(self, idx, text)
    if table is not None:
        BULK_ROWS[0] += table.num_rows
    return table


decode_module._Decoder.parse_bulk = _counting_parse_bulk  # type: ignore[method-assign]


@contextmanager
def block_records(n: int):
    saved = decode_module.BLOCK_RECORDS
    decode_module.BLOCK_RECORDS = n
    try:
        yield
    finally:
        decode_module.BLOCK_RECORDS = saved


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    signed_zeros: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    bulk_rows: int = 0

    @property
    def kind(self) -> str | None:
        return self.problems[0].split(":", 1)[0] if self.problems else None


def _comparable(table: pa.Table) -> dict[str, list[Any]]:
    out = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        out[name] = column.to_pylist()
    return out


def describe_table_difference(fast: pa.Table, ref: pa.Table) -> str:
    if fast.schema != ref.schema:
        return f"schemas differ: {fast.schema} vs {ref.schema}"
    if fast.num_rows != ref.num_rows:
        return f"{fast.num_rows} rows vs {ref.num_rows}"
    a, b = _comparable(fast), _comparable(ref)
    offsets = a["_offset"]
    for name in fast.column_names:
        for row, (x, y) in enumerate(zip(a[name], b[name], strict=True)):
            if x != y or (type(x) is float and type(y) is float and repr(x) != repr(y)):
                return f"column {name!r} at offset {offsets[row]}: bulk {x!r} vs reference {y!r}"
    return "tables differ (no cell differs in Python terms)"


def _signed_zero_differences(case: Case, fast: pa.Table, ref: pa.Table) -> list[str]:
    out = []
    if fast.num_rows != ref.num_rows or fast.schema != ref.schema:
        return out
    for name, t in SHAPES[case.shape].schema.fields.items():
        if t != pa.float64():
            continue
        x = fast.column(name).to_numpy(zero_copy_only=False)
        y = ref.column(name).to_numpy(zero_copy_only=False)
        differs = (x == 0) & (y == 0) & (np.signbit(x) != np.signbit(y))
        for row in np.flatnonzero(differs).tolist():
            offset = fast.column("_offset")[row].as_py()
            out.append(f"{name} at offset {offset}: bulk {x[row]!r} vs reference {y[row]!r}")
    return out


def _check_expected(case: Case, table: pa.Table, rejected: dict[int, str], o: Outcome) -> None:
    shape = SHAPES[case.shape]
    want = [r for r in case.records if r.expected is not None or r.reason is not None]
    if not want:
        return
    rows = {off: i for i, off in enumerate(table.column("_offset").to_pylist())}
    columns: dict[str, list[Any]] = {}
    for r in want:
        value_len = -1 if r.value is None else len(r.value)
        if value_len > case.max_event_bytes:
            if rejected.get(r.offset) != "oversized":
                o.problems.append(f"expected: offset {r.offset} ({r.family}) is over max_event_bytes but came out as "
                                  f"{rejected.get(r.offset, 'a row')}")
            continue
        if r.reason is not None:
            if rejected.get(r.offset) != r.reason:
                o.problems.append(f"expected: offset {r.offset} ({r.family}) must be {r.reason}, "
                                  f"got {rejected.get(r.offset, 'a row')}")
            continue
        assert r.expected is not None
        if r.offset not in rows:
            o.problems.append(f"expected: valid event at offset {r.offset} ({r.family}) was rejected as "
                              f"{rejected.get(r.offset)}")
            continue
        if not columns:
            columns = _comparable(table)
        row = rows[r.offset]
        for name, expected in r.expected.items():
            got = columns[name][row]
            if name == "_extra":
                got = None if got is None else orjson.loads(got)
                same = got == expected
            elif type(expected) is float:
                same = type(got) is float and repr(got) == repr(expected)
            else:
                same = got == expected and type(got) is type(expected)
            if not same:
                o.problems.append(f"expected: offset {r.offset} ({r.family}) field {name!r}: want {expected!r}, "
                                  f"got {got!r}")
        if columns["_key"][row] != r.key or columns["_timestamp"][row] != r.timestamp_ms:
            o.problems.append(f"expected: offset {r.offset}: key or timestamp not carried over")
    del shape


#: Mutated records of a batch also decoded alone by the bulk path (at most this many per batch).
SOLO_RECORDS = 40


def _check_solo(case: Case, ref: DecodedBatch, o: Outcome) -> None:
    """Some mutated records, each alone through ``decode_batch``: in a batch, a block with a bad record goes
    to the per-record path whole, so a subtly bad record meets Arrow's bulk parse mostly alone or among good
    ones. The reference decodes each record alone anyway, so its verdict on the record is the one to match."""
    shape = SHAPES[case.shape]
    mutated = [i for i, r in enumerate(case.records) if r.family != "valid"]
    if len(mutated) > SOLO_RECORDS:
        mutated = random.Random(case.batch * 7919 + case.seed).sample(mutated, SOLO_RECORDS)
    ref_reasons = {r.offset: r.reason for r in ref.rejected}
    ref_offsets = ref.table.column("_offset")
    for i in sorted(mutated):
        alone = case.subset([i])
        offset = alone.records[0].offset
        try:
            out = decode_batch(shape.schema, alone.raw(), max_event_bytes=case.max_event_bytes)
        except Exception as exc:
            o.problems.append(f"exception: bulk raised {type(exc).__name__} on offset {offset} alone: {exc}"[:2000])
            continue
        reasons = [(r.offset, r.reason) for r in out.rejected]
        if offset in ref_reasons:
            same = reasons == [(offset, ref_reasons[offset])] and out.table.num_rows == 0
        else:
            row = ref.table.filter(pc.equal(ref_offsets, offset))
            same = not reasons and out.table.equals(row)
            if not same and not reasons:
                detail = describe_table_difference(out.table, row)
        if not same:
            got = reasons[0][1] if reasons else f"a row ({detail})" if offset not in ref_reasons else "a row"
            want = ref_reasons.get(offset, "a row")
            o.problems.append(f"disagree_solo: offset {offset} ({case.records[i].family}) decoded alone by the bulk "
                              f"path: {got}; the reference: {want}")


def run_case(case: Case, check_expectations: bool = True) -> Outcome:
    shape = SHAPES[case.shape]
    o = Outcome()
    results: dict[str, DecodedBatch] = {}
    bulk_before = BULK_ROWS[0]
    for name, fn in (("bulk", decode_batch), ("reference", decode_reference)):
        if name == "reference":
            o.bulk_rows = BULK_ROWS[0] - bulk_before
        try:
            with block_records(case.block_records):
                results[name] = fn(shape.schema, case.raw(), max_event_bytes=case.max_event_bytes)
        except Exception as exc:  # the contract: total
            o.problems.append(f"exception: {name} raised {type(exc).__name__}: {exc}"[:2000])
    if o.problems:
        return o
    fast, ref = results["bulk"], results["reference"]
    offsets = [r.offset for r in case.records]
    by_offset = {r.offset: r for r in case.records}
    for name, out in results.items():
        if out.table.schema != shape.schema.output_schema:
            o.problems.append(f"schema: {name} table is not in the output schema")
            continue
        got = out.table.column("_offset").to_pylist()
        rejected = [r.offset for r in out.rejected]
        if sorted(got + rejected) != offsets or got != sorted(got) or rejected != sorted(rejected):
            lost = sorted(set(offsets) - set(got) - set(rejected))
            twice = sorted(k for k, n in Counter(got + rejected).items() if n > 1)
            o.problems.append(f"accounting: {name}: lost {lost[:10]}, twice {twice[:10]}, "
                              f"{len(got)} rows + {len(rejected)} rejected for {len(offsets)} records")
        for r in out.rejected:
            if r.reason not in REASONS:
                o.problems.append(f"reason: {name}: unknown reason {r.reason!r} at offset {r.offset}")
            elif r.reason == "internal_error":
                o.problems.append(f"internal_error: {name}: offset {r.offset}: {r.detail}")
            source = by_offset.get(r.offset)
            if source is not None and (r.value != source.value or r.key != source.key
                                       or r.timestamp_ms != source.timestamp_ms
                                       or r.headers != tuple(source.headers or ()) or not r.detail):
                o.problems.append(f"rejected_record: {name}: the rejection of offset {r.offset} does not carry its record")
    if not fast.table.equals(ref.table):
        o.problems.append(f"disagree_table: {describe_table_difference(fast.table, ref.table)}")
    fast_reasons = [(r.offset, r.reason) for r in fast.rejected]
    ref_reasons = [(r.offset, r.reason) for r in ref.rejected]
    if fast_reasons != ref_reasons:
        diff = sorted(set(fast_reasons) ^ set(ref_reasons))[:5]
        detail = {r.offset: r.detail for r in fast.rejected + ref.rejected}
        o.problems.append(f"disagree_rejects: bulk vs reference differ at {diff} "
                          f"({[detail.get(off, '')[:120] for off, _ in diff]})")
    o.signed_zeros = _signed_zero_differences(case, fast.table, ref.table)
    _check_solo(case, ref, o)
    if check_expectations:
        _check_expected(case, ref.table, {r.offset: r.reason for r in ref.rejected}, o)
    o.reasons = fast.reason_counts()
    o.rows = fast.table.num_rows
    return o


# -- shrinking and saving ---------------------------------------------------------------------------------


def shrink(case: Case, still_fails: Callable[[Case], bool], budget: int, seconds: float = 300) -> Case:
    """Delta debugging over the records: drop chunks while the batch still fails (within ``budget`` tries and
    about ``seconds``)."""
    keep = list(range(len(case.records)))
    chunk = max(1, len(keep) // 2)
    tries = 0
    deadline = time.monotonic() + seconds
    while tries < budget and len(keep) > 1 and time.monotonic() < deadline:
        removed = False
        start = 0
        while start < len(keep) and tries < budget:
            candidate = keep[:start] + keep[start + chunk:]
            tries += 1
            if candidate and still_fails(case.subset(candidate)):
                keep = candidate
                removed = True
            else:
                start += chunk
        if not removed:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    return case.subset(keep)


def save_failure(case: Case, problems: list[str], out_dir: Path, note: str = "") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while (path := out_dir / f"failure-{n}.json").exists():
        n += 1
    body = {"problems": problems, "note": note, **case.to_json()}
    try:
        with path.open("x") as f:
            json.dump(body, f, indent=1)
    except FileExistsError:
        return save_failure(case, problems, out_dir, note)
    return path


def replay_in_subprocess(case: Case, timeout: float = 300) -> int:
    """The return code of replaying ``case`` in a fresh interpreter (negative: killed by a signal)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(case.to_json(), f)
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.fuzz_decoder", "--replay", f.name, "--quiet"],
                              cwd=REPO, capture_output=True, timeout=timeout)
        return proc.returncode
    except subprocess.TimeoutExpired:
        return -9
    finally:
        os.unlink(f.name)


# -- the worker and the run ---------------------------------------------------------------------------------


def batch_size(args: argparse.Namespace, number: int) -> int:
    return min(args.batch, args.records - (number - args.first_batch) * args.batch)


def worker(args: argparse.Namespace) -> int:
    """Batches ``args.worker``, ``args.worker + jobs``, ...; one JSON line per batch on stdout."""
    out_dir = Path(args.out)
    for number in range(args.first_batch + args.worker, args.first_batch + args.batches, args.jobs):
        size = batch_size(args, number)
        print(json.dumps({"start": number}), flush=True)
        case = make_case(args.seed, number, size)
        outcome = run_case(case)
        if outcome.problems or (args.strict_zero and outcome.signed_zeros):
            problems = outcome.problems or [f"signed_zero: {s}" for s in outcome.signed_zeros]
            kind = problems[0].split(":", 1)[0]

            def same_kind(c: Case, kind: str = kind) -> bool:
                o = run_case(c)
                ps = o.problems or ([f"signed_zero: {s}" for s in o.signed_zeros] if args.strict_zero else [])
                return any(p.startswith(kind + ":") for p in ps)

            small = shrink(case, same_kind, budget=3000)
            small_outcome = run_case(small)
            path = save_failure(small, small_outcome.problems or problems, out_dir,
                                note=f"shrunk from batch {number} of seed {args.seed} ({len(case.records)} records)")
            full = save_failure(case, problems, out_dir, note=f"batch {number} of seed {args.seed}, unshrunk")
            print(json.dumps({"failure": str(path), "full": str(full), "batch": number, "problems": problems[:5]}),
                  flush=True)
            return 1
        print(json.dumps({"done": number, "records": len(case.records), "rows": outcome.rows,
                          "bulk_rows": outcome.bulk_rows,
                          "reasons": outcome.reasons, "signed_zeros": outcome.signed_zeros[:3],
                          "signed_zero_count": len(outcome.signed_zeros)}), flush=True)
    return 0


def supervise(args: argparse.Namespace) -> int:
    started = time.monotonic()
    batches = -(-args.records // args.batch)
    jobs = max(1, min(args.jobs, batches))
    out_dir = Path(args.out)
    lines: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
    procs = []
    for k in range(jobs):
        cmd = [sys.executable, "-m", "bench.fuzz_decoder", "--worker", str(k), "--jobs", str(jobs),
               "--batches", str(batches), "--records", str(args.records), "--batch", str(args.batch),
               "--first-batch", str(args.first_batch),
               "--seed", str(args.seed), "--out", str(out_dir)] + (["--strict-zero"] if args.strict_zero else [])
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        procs.append(proc)

        def pump(k: int = k, proc: subprocess.Popen[str] = proc) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    lines.put((k, json.loads(line)))
                except json.JSONDecodeError:
                    print(line, end="", file=sys.stderr)
            lines.put((k, None))

        threading.Thread(target=pump, daemon=True).start()

    records = rows = bulk_rows = done = zero_count = 0
    reasons: Counter[str] = Counter()
    zeros: list[str] = []
    in_flight: dict[int, int] = {}
    failures: list[str] = []
    stopped: set[int] = set()  # workers this run terminated itself (after a failure elsewhere)

    def stop_all() -> None:
        for j, p in enumerate(procs):
            if p.poll() is None:
                stopped.add(j)
                p.terminate()

    finished = 0
    last_print = time.monotonic()
    while finished < jobs:
        k, msg = lines.get()
        if msg is None:
            finished += 1
            rc = procs[k].wait()
            number = in_flight.pop(k, None)
            if k not in stopped and rc != 0 and number is not None:  # died: a crash in native code
                failures.append(crashed(args, number, rc, out_dir))
            if failures:
                stop_all()
            continue
        if "start" in msg:
            in_flight[k] = msg["start"]
        elif "done" in msg:
            in_flight.pop(k, None)
            done += 1
            records += msg["records"]
            rows += msg["rows"]
            bulk_rows += msg["bulk_rows"]
            reasons.update(msg["reasons"])
            zero_count += msg["signed_zero_count"]
            zeros += msg["signed_zeros"][: max(0, 3 - len(zeros))]
            if time.monotonic() - last_print > 10 or done == batches:
                last_print = time.monotonic()
                elapsed = time.monotonic() - started
                print(f"[fuzz] {records:,}/{args.records:,} records, {done}/{batches} batches, {elapsed:.0f} s, "
                      f"{records / max(elapsed, 1e-9):,.0f} records/s", flush=True)
        elif "failure" in msg:
            in_flight.pop(k, None)
            failures.append(msg["failure"])
            print(f"[fuzz] FAILURE in batch {msg['batch']}: {msg['problems'][0]}", file=sys.stderr, flush=True)
            print(f"[fuzz]   shrunk batch saved to {msg['failure']} (whole batch: {msg['full']})", file=sys.stderr)
            stop_all()
    elapsed = time.monotonic() - started
    by_reason = " ".join(f"{r}={reasons[r]}" for r in sorted(reasons))
    summary = (f"fuzz_decoder: seed={args.seed} records={records} batches={done} seconds={elapsed:.1f} rows={rows} "
               f"bulk_rows={bulk_rows} "
               f"rejected: {by_reason or 'none'} signed_zero_diffs={zero_count} disagreements={len(failures)}")
    print(summary, flush=True)
    if zeros:
        print(f"[fuzz] -0.0 vs 0.0 (not counted as disagreements; table.equals does not see them): {zeros}",
              flush=True)
    if failures:
        print(f"[fuzz] failing batches saved: {failures}", file=sys.stderr)
        return 1
    return 0


def crashed(args: argparse.Namespace, number: int, rc: int, out_dir: Path) -> str:
    """A worker died on batch ``number``: make it again, shrink it with fresh interpreters, save it."""
    print(f"[fuzz] CRASH: the worker died (rc {rc}) on batch {number}; shrinking it in subprocesses",
          file=sys.stderr, flush=True)
    case = make_case(args.seed, number, batch_size(args, number))
    full = save_failure(case, [f"crash: the decoding process died, rc {rc}"], out_dir,
                        note=f"batch {number} of seed {args.seed}, unshrunk")
    if replay_in_subprocess(case) >= 0:
        return str(full)
    small = shrink(case, lambda c: replay_in_subprocess(c) < 0, budget=args.crash_shrink_budget)
    path = save_failure(small, [f"crash: the decoding process died, rc {rc}"], out_dir,
                        note=f"shrunk from batch {number} of seed {args.seed}")
    print(f"[fuzz]   shrunk crashing batch ({len(small.records)} records) saved to {path}", file=sys.stderr)
    return str(path)


def replay(path: str, quiet: bool) -> int:
    case = Case.from_json(json.loads(Path(path).read_text()))
    outcome = run_case(case)
    if not quiet:
        print(f"{len(case.records)} records, {outcome.rows} rows, rejected {dict(outcome.reasons)}")
        for p in outcome.problems:
            print("PROBLEM", p)
        for s in outcome.signed_zeros:
            print("SIGNED ZERO", s)
    return 1 if outcome.problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=BATCH_RECORDS, help="records per batch")
    parser.add_argument("--first-batch", type=int, default=0,
                        help="start at this batch number (a batch depends only on the seed and its number)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--out", default=str(OUT_DIR), help="where failing batches are saved")
    parser.add_argument("--strict-zero", action="store_true", help="a -0.0 vs 0.0 difference fails the run")
    parser.add_argument("--crash-shrink-budget", type=int, default=40, help="subprocesses spent shrinking a crash")
    parser.add_argument("--replay", help="run one saved batch and report")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.quiet)
    if args.worker is not None:
        return worker(args)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
