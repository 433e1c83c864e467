"""Raw Kafka records to a typed Arrow table plus the records set aside, each with a reason. Total.

One rule decides what a record is, written once, record by record (:func:`judge`): the value must be
one strict JSON document (RFC 8259, as orjson reads it: no NaN or Infinity literals, no number beyond
the double range, no byte-order mark, nothing after the document), nested at most :data:`MAX_DEPTH`
levels, an object, and every declared field present in it must hold its declared JSON type. Duplicate
names: the last one wins (as in JavaScript and Python). Undeclared fields, of any shape, are kept in
``_extra`` as a JSON object (nulls left out).

Judging record by record in Python costs more than Arrow's bulk JSON reader, so a block of records
goes through Arrow first and is trusted only where Arrow provably agrees with the rule: every record
framed as one line starting with ``{``, one row per record, every declared float finite, and the
undeclared fields re-read by orjson. A block that fails any check is judged record by record instead
(cost linear in the block: no bisection), so a bad record costs its block a slower path, never the
partition. Anything that still raises (a bug) costs only the record that raised it: the batch is
split until that record stands alone and is rejected as ``internal_error``. The property tests check
that the bulk path and :func:`decode_reference` agree on every input.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from flywheel.events.rejections import Rejected
from flywheel.events.schema import EVENT_TIME_TYPE, TopicSchema

#: Deepest nesting of objects and arrays accepted in a value (the event object itself is level 1).
MAX_DEPTH = 128
#: Records parsed by Arrow at once: one bad record sends at most this many to the per-record path.
BLOCK_RECORDS = 65_536
#: Arrow's JSON reader recurses once per level of nesting and overflows the stack (the process dies) some
#: thousands of levels deep: a value with more opening brackets than this is never handed to Arrow.
_ARROW_MAX_OPENERS = 1024
_READ_OPTIONS = pj.ReadOptions(block_size=1 << 22, use_threads=True)
_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64}
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: What every ISO-8601 time starts with; other values skip the bulk cast (a prefilter, not the rule).
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}"
#: Times the store can file (years 1-9999 UTC), in microseconds since the epoch.
_MIN_TIME_US = (datetime(1, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
_MAX_TIME_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) \
    // timedelta(microseconds=1)
Headers = Sequence[tuple[str, bytes | None]]


def from_numpy(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A numpy vector as an Arrow array, zero-copy (``pa.array`` would inspect it element-wise)."""
    if arrow_type == pa.bool_():
        bits = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[arrow_type])
    return pa.Array.from_buffers(arrow_type, len(data), [None, pa.py_buffer(data)])


@dataclass
class RawBatch:
    """Records of one topic-partition, in offset order, as the consumer returned them.

    The drain hands values over already joined (``joined``: newline-separated, a tombstone as an empty
    line; ``lengths``: -1 for a tombstone) and keys as an Arrow array, so a chunk is never a million
    small Python objects; ``values`` is then None and built from ``joined`` only if a slow path asks.
    ``headers`` holds each record's Kafka headers (None: none), or is None when no record had any.
    """

    topic: str
    partition: int
    values: list[bytes | None] | None
    offsets: Sequence[int] | np.ndarray  # a list, or an int64 array
    timestamps_ms: Sequence[int] | np.ndarray
    keys: list[bytes | None] | pa.Array
    joined: bytes | None = None
    lengths: np.ndarray | None = None
    headers: Sequence[Headers | None] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def value_list(self) -> list[bytes | None]:
        if self.values is None:
            assert self.joined is not None and self.lengths is not None
            data, lengths = self.joined, self.lengths.tolist()
            starts = np.cumsum(np.maximum(self.lengths, 0) + 1) - (np.maximum(self.lengths, 0) + 1)
            self.values = [data[s:s + n] if n >= 0 else None for s, n in zip(starts.tolist(), lengths, strict=True)]
        return self.values

    def key(self, i: int) -> bytes | None:
        return self.keys[i].as_py() if isinstance(self.keys, pa.Array) else self.keys[i]

    def record_headers(self, i: int) -> tuple[tuple[str, bytes | None], ...]:
        return tuple(self.headers[i] or ()) if self.headers is not None else ()

    def slice(self, start: int, stop: int) -> RawBatch:
        """Records ``start`` to ``stop`` as a batch of their own (value by value: for slow paths only)."""
        keys = self.keys.slice(start, stop - start) if isinstance(self.keys, pa.Array) else self.keys[start:stop]
        return RawBatch(self.topic, self.partition, self.value_list()[start:stop], self.offsets[start:stop],
                        self.timestamps_ms[start:stop], keys,
                        headers=None if self.headers is None else self.headers[start:stop])

    def reject(self, i: int, reason: str, detail: str) -> Rejected:
        return Rejected(int(self.offsets[i]), int(self.timestamps_ms[i]), self.key(i), self.value_list()[i], reason,
                        detail, self.record_headers(i))


@dataclass
class DecodedBatch:
    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)

    def reason_counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejected)


# -- the rule, record by record -----------------------------------------------------------------------

_JSON_TYPES = {bool: "bool", int: "int", float: "float", str: "string", list: "array", dict: "object"}
_EXPECTED = {pa.float64(): "float", pa.int64(): "int", pa.bool_(): "bool", pa.string(): "string"}


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _as_float(v: object) -> float | None:
    if type(v) is float:
        return v if math.isfinite(v) else None
    if type(v) is int:
        return float(v)
    return None


def _as_int(v: object) -> int | None:
    return v if type(v) is int and _INT64_MIN <= v <= _INT64_MAX else None


_CONVERT: dict[pa.DataType, Callable[[object], object]] = {
    pa.float64(): _as_float,
    pa.int64(): _as_int,
    pa.bool_(): lambda v: v if type(v) is bool else None,
    pa.string(): lambda v: v if type(v) is str else None,
}


def _too_deep(raw: bytes, obj: object) -> bool:
    """Whether ``obj`` nests deeper than MAX_DEPTH (counting brackets first: most values cannot)."""
    if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return False
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False


def _extra_json(obj: dict[str, Any], declared: frozenset[str]) -> str | None:
    extra = {k: v for k, v in obj.items() if k not in declared and v is not None}
    return orjson.dumps(extra).decode() if extra else None


class _Rule:
    """The per-record rule for one schema, with its field list and converters looked up once."""

    def __init__(self, schema: TopicSchema, max_event_bytes: int) -> None:
        parse = schema.parse_schema
        self.max_event_bytes = max_event_bytes
        self.fields = [(name, _CONVERT[t], _EXPECTED[t], t == pa.int64())
                       for name, t in zip(parse.names, parse.types, strict=True)]
        self.declared = frozenset(parse.names)

    def __call__(self, value: bytes | None) -> tuple[list[object], str | None] | tuple[str, str]:
        if value is None:
            return "tombstone", "record has no value (a delete marker)"
        if len(value) > self.max_event_bytes:
            return "oversized", f"{len(value)} bytes is over the limit of {self.max_event_bytes}"
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as bad:
                return "not_utf8", f"value is not valid UTF-8 (byte {bad.start})"
            return "not_json", f"not JSON: {exc}"
        if _too_deep(value, obj):
            return "not_json", f"nested deeper than {MAX_DEPTH} levels"
        if type(obj) is not dict:
            return "not_object", f"JSON {_json_type(obj)}, expected an object"
        values: list[object] = []
        append = values.append
        get = obj.get
        for name, convert, expected, is_int in self.fields:
            raw = get(name)
            if raw is None:
                append(None)
                continue
            converted = convert(raw)
            if converted is None:
                got = "an integer outside 64 bits" if is_int and type(raw) is int else _json_type(raw)
                return "wrong_type", f"field {name!r}: expected {expected}, got {got}"
            append(converted)
        declared = self.declared
        if len(obj) > len(values) or not declared.issuperset(obj):
            return values, _extra_json(obj, declared)
        return values, None


def judge(schema: TopicSchema, value: bytes | None, max_event_bytes: int) -> tuple[list[object], str | None] | tuple[str, str]:
    """The rule for one value: (declared values in ``parse_schema`` order, ``_extra``) or (reason, detail).

    orjson refuses invalid UTF-8 too; which of the two a value is, Python's own decoder then says.
    Required fields and event times are checked on the rows afterwards, the same way for both paths.
    """
    return _Rule(schema, max_event_bytes)(value)


_INT64 = Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]
_MSGSPEC_TYPES: dict[pa.DataType, Any] = {pa.float64(): float, pa.int64(): _INT64, pa.bool_(): bool, pa.string(): str}


@functools.lru_cache(maxsize=64)
def _typed_decoder(parse_schema: pa.Schema) -> msgspec.json.Decoder[Any]:
    """A msgspec decoder that accepts exactly the plain good records of a schema: every declared field
    optional and of its JSON type, integers within 64 bits, no other field (so no ``_extra`` to keep).
    Attribute names are positional (``f0`` ...): field names need not be Python identifiers."""
    struct = msgspec.defstruct(
        "PlainEvent", [(f"f{i}", _MSGSPEC_TYPES[t] | None, None) for i, t in enumerate(parse_schema.types)],
        rename={f"f{i}": name for i, name in enumerate(parse_schema.names)}, forbid_unknown_fields=True, gc=False,
    )
    return msgspec.json.Decoder(struct)


class _Decoder:
    def __init__(self, schema: TopicSchema, batch: RawBatch, max_event_bytes: int, bulk: bool = True) -> None:
        self.schema = schema
        self.batch = batch
        self.max_event_bytes = max_event_bytes
        self.bulk = bulk
        self.parse_schema = schema.parse_schema
        self.parse_options = pj.ParseOptions(explicit_schema=self.parse_schema, unexpected_field_behavior="infer")
        self.declared = frozenset(self.parse_schema.names)
        self.floats = [n for n, t in zip(self.parse_schema.names, self.parse_schema.types, strict=True)
                       if t == pa.float64()]
        self.rejected: dict[int, Rejected] = {}
        self.ascii = False
        #: Whether the next block is tried in bulk straight away (False after a block with bad records).
        self.optimistic = True

    def reject(self, i: int, reason: str, detail: str) -> None:
        """Set record ``i`` aside; a record keeps the first reason it was given."""
        if i not in self.rejected:
            self.rejected[i] = self.batch.reject(i, reason, detail)

    # -- parsing ------------------------------------------------------------------------------------

    def pieces(self) -> list[tuple[np.ndarray, pa.Table]]:
        """(record indices, table in parse schema + ``_extra``) pieces covering every record not rejected."""
        b = self.batch
        n = len(b)
        if not n:
            return []
        if not self.bulk:
            return self.judge_all(np.arange(n))
        if b.joined is not None and b.lengths is not None:
            joined, lengths = b.joined, b.lengths
        else:
            values = b.value_list()
            lengths = np.fromiter((-1 if v is None else len(v) for v in values), np.int64, n)
            joined = b"\n".join(v or b"" for v in values)
        self.ascii = joined.isascii()
        starts = np.cumsum(np.maximum(lengths, 0) + 1) - (np.maximum(lengths, 0) + 1)
        data = np.frombuffer(joined, np.uint8)
        # Arrow may only see non-empty, not oversized values that start with "{" (one row each, at least)
        # and end with "}" (so no value leaves a document open for the next one to continue: a document
        # lies within one value, and nests no deeper than that value has opening brackets).
        first = np.zeros(n, np.uint8)
        last = np.zeros(n, np.uint8)
        nonempty = lengths > 0
        first[nonempty] = data[starts[nonempty]]
        last[nonempty] = data[starts[nonempty] + lengths[nonempty] - 1]
        bulk_ok = nonempty & (lengths <= self.max_event_bytes) & (first == ord("{")) & (last == ord("}"))
        for i in np.flatnonzero(bulk_ok & (lengths > _ARROW_MAX_OPENERS)).tolist():
            s, e = int(starts[i]), int(starts[i] + lengths[i])
            if joined.count(b"{", s, e) + joined.count(b"[", s, e) > _ARROW_MAX_OPENERS:
                bulk_ok[i] = False
        out = []
        if not bulk_ok.all():
            out += self.judge_all(np.flatnonzero(~bulk_ok))
        for lo in range(0, n, BLOCK_RECORDS):
            hi = min(n, lo + BLOCK_RECORDS)
            ok = bulk_ok[lo:hi]
            if ok.all():  # a contiguous run: its bytes are one slice of the joined buffer
                idx = np.arange(lo, hi)
                end = int(starts[hi - 1] + lengths[hi - 1])
                text = memoryview(joined)[int(starts[lo]):end]
            else:
                idx = lo + np.flatnonzero(ok)
                if not len(idx):
                    continue
                values = b.value_list()
                text = memoryview(b"\n".join(values[i] for i in idx.tolist()))  # type: ignore[misc]
            # After a block with bad records the next is screened first: a failed bulk parse costs nearly
            # a whole parse (Arrow's threads parse every block before the error is reported).
            table = self.parse_bulk(idx, text) if self.optimistic else None
            out += [(idx, table)] if table is not None else self.salvage(idx)
        return out

    def salvage(self, idx: np.ndarray) -> list[tuple[np.ndarray, pa.Table]]:
        """A block Arrow could not take whole. Judging each record by the rule in Python costs several
        times Arrow's parse, so a typed msgspec decoder first picks out, at C speed, the records that are
        plainly good (declared fields only, of their types, one line): Arrow parses those in one go, and
        only the rest (bad ones, and ones with undeclared fields) are judged one by one. msgspec only ever
        lets a record skip the slow judge; where it and the rule could differ it refuses, and the rule
        decides."""
        values = self.batch.value_list()
        decode = _typed_decoder(self.parse_schema).decode
        plain = []
        for i in idx.tolist():
            v = values[i]
            try:
                decode(v)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
                continue
            if b"\n" not in v and b"\r" not in v:
                plain.append(i)
        self.optimistic = len(plain) == len(idx)
        if not plain:
            return self.judge_all(idx)
        plain_idx = np.asarray(plain, dtype=np.int64)
        table = self.parse_bulk(plain_idx, memoryview(b"\n".join(values[i] for i in plain)))
        if table is None:
            return self.judge_all(idx)
        rest = np.setdiff1d(idx, plain_idx, assume_unique=True)
        return [(plain_idx, table), *self.judge_all(rest)] if len(rest) else [(plain_idx, table)]

    def parse_bulk(self, idx: np.ndarray, text: memoryview) -> pa.Table | None:
        """Arrow's parse of the records ``idx`` (``text``: their values, one per line), normalised; None
        unless it agrees with :func:`judge` on every one of them."""
        if not self.ascii:  # ASCII is valid UTF-8; anything else is checked (Arrow does not)
            try:
                str(text, "utf-8")
            except UnicodeDecodeError:
                return None
        try:
            table = pj.read_json(pa.py_buffer(text), read_options=_READ_OPTIONS, parse_options=self.parse_options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        # A pretty-printed value, or two documents on one line, change the row count.
        if table.num_rows != len(idx):
            return None
        for name in self.floats:  # NaN, Infinity and 1e309 parse in Arrow; they are not JSON
            if pc.any(pc.invert(pc.is_finite(table.column(name)))).as_py():
                return None
        return self.normalise(idx, table)

    def normalise(self, idx: np.ndarray, table: pa.Table) -> pa.Table | None:
        """Declared columns in order; undeclared ones folded into one JSON column ``_extra``, re-read by
        orjson from the record's own bytes (Arrow's inferred column types are shared by the whole block,
        and Arrow accepts literals and depths that orjson, the rule, does not). None on any disagreement."""
        extras = [n for n in table.column_names if n not in self.declared]
        columns = [table.column(n) for n in self.parse_schema.names]
        if extras:
            present = pc.is_valid(table.column(extras[0]))
            for name in extras[1:]:
                present = pc.or_(present, pc.is_valid(table.column(name)))
            extra: list[str | None] = [None] * table.num_rows
            values = self.batch.value_list()
            for row in np.flatnonzero(present.to_numpy(zero_copy_only=False)).tolist():
                raw = values[int(idx[row])]
                assert raw is not None
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return None
                if _too_deep(raw, obj):
                    return None
                extra[row] = _extra_json(obj, self.declared)
            columns.append(pa.chunked_array([pa.array(extra, pa.string())]))
        else:
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, pa.string())]))
        return pa.Table.from_arrays(columns, names=[*self.parse_schema.names, "_extra"])

    def judge_all(self, idx: np.ndarray) -> list[tuple[np.ndarray, pa.Table]]:
        """The per-record rule over records ``idx``: their rows as one table, the rest rejected."""
        values = self.batch.value_list()
        names = self.parse_schema.names
        columns: list[list[object]] = [[] for _ in names]
        extras: list[str | None] = []
        kept = []
        rule = _Rule(self.schema, self.max_event_bytes)
        for i in idx.tolist():
            verdict = rule(values[i])
            if isinstance(verdict[0], str):
                self.reject(i, verdict[0], verdict[1])
                continue
            row, extra = verdict
            for column, v in zip(columns, row, strict=True):
                column.append(v)
            extras.append(extra)
            kept.append(i)
        if not kept:
            return []
        arrays = [pa.array(c, t) for c, t in zip(columns, self.parse_schema.types, strict=True)]
        table = pa.Table.from_arrays([*arrays, pa.array(extras, pa.string())], names=[*names, "_extra"])
        return [(np.asarray(kept, dtype=np.int64), table)]

    # -- checks on rows -----------------------------------------------------------------------------

    def check_required(self, idx: np.ndarray, table: pa.Table) -> np.ndarray:
        missing_any = None
        for name in sorted(self.schema.required):
            is_null = pc.is_null(table.column(name))
            missing_any = is_null if missing_any is None else pc.or_(missing_any, is_null)
        if missing_any is None or not pc.any(missing_any).as_py():
            return np.ones(len(idx), dtype=bool)
        mask = missing_any.to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(mask):
            names = [n for n in sorted(self.schema.required) if not table.column(n)[int(row)].is_valid]
            self.reject(int(idx[row]), "missing_field", f"required field(s) missing or null: {', '.join(names)}")
        return ~mask

    def event_times(self, idx: np.ndarray, column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
        """ISO-8601 strings to UTC timestamps, value by value: Arrow's cast, else Python's parser (a naive
        time is UTC); nulls stay null. When the column does not cast whole, values that cannot start an
        ISO date go straight to the one-value path and the rest is cast in halves, so k bad values cost
        O(k log n) casts."""
        values = column.combine_chunks()
        ok = np.ones(len(idx), dtype=bool)
        try:
            return pc.cast(values, EVENT_TIME_TYPE), ok
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        micros = np.zeros(len(values), np.int64)
        valid = np.zeros(len(values), dtype=bool)
        plausible = pc.fill_null(pc.match_substring_regex(values, _ISO_DATE), True).to_numpy(zero_copy_only=False)
        self._cast_times(values, np.flatnonzero(plausible), micros, valid, ok, idx)
        for position in np.flatnonzero(~plausible).tolist():
            self._cast_times(values, np.asarray([position]), micros, valid, ok, idx)
        return pa.array(micros, pa.int64(), mask=~valid).cast(EVENT_TIME_TYPE), ok

    def _cast_times(self, values: pa.Array, positions: np.ndarray, micros: np.ndarray, valid: np.ndarray,
                    ok: np.ndarray, idx: np.ndarray) -> None:
        if not len(positions):
            return
        try:
            cast = pc.cast(pc.cast(values.take(from_numpy(positions, pa.int64())), EVENT_TIME_TYPE), pa.int64())
            valid[positions] = cast.is_valid().to_numpy(zero_copy_only=False)
            micros[positions] = cast.fill_null(0).to_numpy(zero_copy_only=False)
            return
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        if len(positions) > 1:
            mid = len(positions) // 2
            self._cast_times(values, positions[:mid], micros, valid, ok, idx)
            self._cast_times(values, positions[mid:], micros, valid, ok, idx)
            return
        position = int(positions[0])
        text = values[position].as_py()
        try:
            ts = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
            ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
            micros[position] = pa.scalar(ts, EVENT_TIME_TYPE).cast(pa.int64()).as_py()
            valid[position] = True
        except (ValueError, OverflowError, pa.ArrowException):
            ok[position] = False
            self.reject(int(idx[position]), "bad_timestamp",
                        f"{self.schema.time_field}={text[:200]!r} is not ISO-8601")

    def check_time_range(self, idx: np.ndarray, times: pa.Array | None, keep: np.ndarray) -> np.ndarray:
        """Rows whose time (the event time, else the Kafka timestamp) lies in years 1-9999 UTC: the store
        files rows by that hour, and no date outside those years can be named. Only rows still kept are
        judged, so a record keeps the first reason it was given."""
        stamps_us = np.asarray(self.batch.timestamps_ms, dtype=np.int64)[idx]
        stamps_us = np.clip(stamps_us, _MIN_TIME_US // 1000 - 1, _MAX_TIME_US // 1000 + 1) * 1000
        has_time = np.zeros(len(idx), dtype=bool)
        if times is not None:
            event_us = pc.cast(times, pa.int64())
            has_time = event_us.is_valid().to_numpy(zero_copy_only=False)
            stamps_us = np.where(has_time, event_us.fill_null(0).to_numpy(zero_copy_only=False), stamps_us)
        bad = keep & ((stamps_us < _MIN_TIME_US) | (stamps_us > _MAX_TIME_US))
        for row in np.flatnonzero(bad).tolist():
            source = f"event time ({self.schema.time_field})" if has_time[row] else "Kafka timestamp"
            self.reject(int(idx[row]), "bad_timestamp", f"the {source} is outside the years 1-9999 (UTC)")
        return ~bad

    # -- the result ---------------------------------------------------------------------------------

    def run(self) -> DecodedBatch:
        pieces = self.pieces()
        out_schema = self.schema.output_schema
        if not pieces:
            return DecodedBatch(out_schema.empty_table(), self.sorted_rejects())
        idx = np.concatenate([i for i, _ in pieces])
        table = pa.concat_tables([t for _, t in pieces])
        if len(pieces) > 1 and (np.diff(idx) < 0).any():  # rows judged one by one come back in offset order
            order = np.argsort(idx, kind="stable")
            idx, table = idx[order], table.take(from_numpy(order, pa.int64()))
        keep = self.check_required(idx, table)
        times = None
        if self.schema.time_field:
            times, ok = self.event_times(idx, table.column(self.schema.time_field))
            keep &= ok
        keep &= self.check_time_range(idx, times, keep)
        if not keep.all():
            mask = from_numpy(keep, pa.bool_())
            idx, table = idx[keep], table.filter(mask)
            if times is not None:
                times = times.filter(mask)
        b = self.batch
        all_rows = len(idx) == len(b)
        offsets = b.offsets if all_rows else np.asarray(b.offsets, dtype=np.int64)[idx]
        stamps = b.timestamps_ms if all_rows else np.asarray(b.timestamps_ms, dtype=np.int64)[idx]
        if isinstance(b.keys, pa.Array):
            keys = b.keys if all_rows else b.keys.take(from_numpy(idx, pa.int64()))
        else:
            keys = pa.array(b.keys if all_rows else [b.keys[i] for i in idx], pa.binary())
        n = len(idx)
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            name: table.column(name) for name in self.schema.fields
        }
        if self.schema.time_field and times is not None:
            columns[self.schema.time_field] = times
        columns |= {
            "_topic": pc.take(pa.array([b.topic], pa.string()), from_numpy(np.zeros(n), pa.int32())),
            "_partition": from_numpy(np.full(n, b.partition), pa.int32()),
            "_offset": from_numpy(np.asarray(offsets), pa.int64()),
            "_timestamp": from_numpy(np.asarray(stamps), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "_key": keys,
            "_extra": table.column("_extra"),
        }
        result = pa.Table.from_arrays([columns[f.name] for f in out_schema], schema=out_schema)
        return DecodedBatch(result, self.sorted_rejects())

    def sorted_rejects(self) -> list[Rejected]:
        return [self.rejected[i] for i in sorted(self.rejected)]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def isolate(batch: RawBatch, work: Callable[[RawBatch], Any], combine: Callable[[list[Any]], Any],
            alone: Callable[[RawBatch, BaseException], Any]) -> Any:
    """``work(batch)``; if it raises, the batch split in halves until each record that raises stands
    alone, where ``alone(record, exception)`` stands in for it. k such records cost O(k log n) calls.

    The one rule of every consumer for a record that makes the code throw: it costs that record, never
    the partition. Infrastructure failures are not caught here: ``work`` is pure.
    """
    try:
        return work(batch)
    except Exception as exc:
        if len(batch) <= 1:
            return alone(batch, exc)
        mid = len(batch) // 2
        return combine([isolate(batch.slice(0, mid), work, combine, alone),
                        isolate(batch.slice(mid, len(batch)), work, combine, alone)])


def internal_error(batch: RawBatch, exc: BaseException) -> Rejected:
    """The rejection of a lone record whose processing raised ``exc``."""
    return batch.reject(0, "internal_error", _describe(exc))


def _combine(schema: TopicSchema) -> Callable[[list[DecodedBatch]], DecodedBatch]:
    def combine(parts: list[DecodedBatch]) -> DecodedBatch:
        tables = [p.table for p in parts if p.table.num_rows] or [schema.output_schema.empty_table()]
        return DecodedBatch(pa.concat_tables(tables), [r for p in parts for r in p.rejected])
    return combine


def decode_batch(schema: TopicSchema, batch: RawBatch, *, max_event_bytes: int = 1 << 20) -> DecodedBatch:
    """Good rows as a table in ``schema.output_schema`` (offset order); every other record in ``rejected``.

    Never raises: a record that makes the decoder throw is rejected as ``internal_error``.
    """
    return isolate(batch, lambda b: _Decoder(schema, b, max_event_bytes).run(), _combine(schema),
                   lambda b, exc: DecodedBatch(schema.output_schema.empty_table(), [internal_error(b, exc)]))


def decode_reference(schema: TopicSchema, batch: RawBatch, *, max_event_bytes: int = 1 << 20) -> DecodedBatch:
    """The slow reference: each record decoded alone by :func:`judge`; what :func:`decode_batch` must equal."""
    parts = [
        isolate(batch.slice(i, i + 1), lambda b: _Decoder(schema, b, max_event_bytes, bulk=False).run(),
                _combine(schema), lambda b, exc: DecodedBatch(schema.output_schema.empty_table(), [internal_error(b, exc)]))
        for i in range(len(batch))
    ]
    return _combine(schema)(parts) if parts else DecodedBatch(schema.output_schema.empty_table())
