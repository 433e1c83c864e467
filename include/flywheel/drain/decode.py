"""Turn a batch of raw Kafka records into a typed Arrow table plus the records set aside, with reasons.

Decoding message by message in Python is the drain's bottleneck, so the happy path parses the whole
batch at once: values are joined into newline-delimited JSON and parsed by Arrow's C++ reader against
the topic's schema. Only when that fails is the batch bisected, so one bad event costs about two
extra bulk parses of its neighbourhood, and the lone culprit is examined in Python to name the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from flywheel.drain.schema import EVENT_TIME_TYPE, TopicSchema

_READ_OPTIONS = pj.ReadOptions(block_size=1 << 24, use_threads=True)
_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64}


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
    """

    topic: str
    partition: int
    values: list[bytes | None] | None
    offsets: Sequence[int]  # a list, or an int64 array
    timestamps_ms: Sequence[int]
    keys: list[bytes | None] | pa.Array
    joined: bytes | None = None
    lengths: np.ndarray | None = None

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


@dataclass(frozen=True)
class Rejected:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    #: A short stable code to count and alert on (e.g. ``wrong_type``); ``detail`` says the rest.
    reason: str
    detail: str


@dataclass
class DecodedBatch:
    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)

    def reason_counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.rejected)


_PY_TYPES: dict[pa.DataType, tuple[str, tuple[type, ...]]] = {
    pa.float64(): ("float", (int, float)),
    pa.int64(): ("int", (int,)),
    pa.bool_(): ("bool", (bool,)),
    pa.string(): ("string", (str,)),
}


def _json_type(value: object) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


class _Decoder:
    def __init__(self, schema: TopicSchema, batch: RawBatch, max_event_bytes: int) -> None:
        self.schema = schema
        self.batch = batch
        self.max_event_bytes = max_event_bytes
        self.parse_options = pj.ParseOptions(
            explicit_schema=schema.parse_schema, unexpected_field_behavior="infer"
        )
        self.declared = set(schema.parse_schema.names)
        self.rejected: dict[int, Rejected] = {}

    def reject(self, i: int, reason: str, detail: str) -> None:
        b = self.batch
        self.rejected[i] = Rejected(int(b.offsets[i]), int(b.timestamps_ms[i]), b.key(i), b.value_list()[i], reason,
                                    detail)

    # -- parsing ------------------------------------------------------------------------------------

    def candidates(self) -> list[int]:
        """Records worth a bulk parse: each one a non-blank value starting with ``{``, so each parses to
        at least one row and the row count can vouch for one row per record. The rest are examined here."""
        values = self.batch.value_list()
        if (None not in values and (not values or max(map(len, values)) <= self.max_event_bytes)  # type: ignore[arg-type]
                and all(v[:1] == b"{" for v in values)):  # type: ignore[index]
            return list(range(len(values)))
        keep = []
        for i, v in enumerate(values):
            if v is None:
                self.reject(i, "tombstone", "record has no value (a delete marker)")
            elif len(v) > self.max_event_bytes:
                self.reject(i, "oversized", f"{len(v)} bytes is over the limit of {self.max_event_bytes}")
            elif v[:1] == b"{" or v.lstrip()[:1] == b"{":
                keep.append(i)
            else:
                self.parse_one(i)  # never an object: rejected with its reason
        return keep

    def parse_all(self) -> list[tuple[Sequence[int], pa.Table]]:
        """The whole batch in one bulk parse when every value is a non-empty, not oversized line starting
        with ``{`` (checked on the joined buffer, not value by value); else :meth:`candidates` sorts it out."""
        b = self.batch
        if b.joined is not None and b.lengths is not None:
            joined, lengths = b.joined, b.lengths  # a tombstone's length is -1: caught by min() below
        else:
            values = b.value_list()
            try:
                lengths = np.fromiter(map(len, values), np.int64, len(values))  # type: ignore[arg-type]
            except TypeError:  # a tombstone (None) among them
                return self.parse(self.candidates())
            joined = None
        if not len(lengths) or lengths.min() <= 0 or lengths.max() > self.max_event_bytes:
            return self.parse(self.candidates())
        if joined is None:
            joined = b"\n".join(values)  # type: ignore[arg-type]
        starts = np.cumsum(lengths + 1) - (lengths + 1)
        if not (np.frombuffer(joined, np.uint8)[starts] == ord("{")).all():
            return self.parse(self.candidates())
        return self.parse(range(len(lengths)), joined)

    def parse(self, idx: Sequence[int], joined: bytes | None = None) -> list[tuple[Sequence[int], pa.Table]]:
        """Parse records ``idx``; return (indices, table) pieces in order, rejecting what cannot parse."""
        if not idx:
            return []
        if joined is None:  # (the whole batch comes joined already: its values are not split up unless it fails)
            values = self.batch.value_list()
            joined = b"\n".join(values if len(idx) == len(values) else [values[i] for i in idx])  # type: ignore[misc]
        try:
            if not joined.isascii():  # ASCII is valid UTF-8; anything else is checked (Arrow does not)
                joined.decode("utf-8")
            table = pj.read_json(pa.py_buffer(joined), read_options=_READ_OPTIONS, parse_options=self.parse_options)
            # A blank value or a pretty-printed (multi-line) one changes the line count: not a clean parse.
            if table.num_rows == len(idx):
                return [(idx, table)]
        except (UnicodeDecodeError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        if len(idx) == 1:
            return self.parse_one(idx[0])
        mid = len(idx) // 2
        return self.parse(idx[:mid]) + self.parse(idx[mid:])

    def parse_one(self, i: int) -> list[tuple[Sequence[int], pa.Table]]:
        raw = self.batch.value_list()[i]
        assert raw is not None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if "UTF-8" in str(exc):
                self.reject(i, "not_utf8", "value is not valid UTF-8")
            else:
                self.reject(i, "not_json", f"not JSON: {exc}")
            return []
        if not isinstance(obj, dict):
            self.reject(i, "not_object", f"JSON {_json_type(obj)}, expected an object")
            return []
        for name, arrow_type in zip(self.schema.parse_schema.names, self.schema.parse_schema.types, strict=True):
            value = obj.get(name)
            if value is None:
                continue
            expected, py_types = _PY_TYPES[arrow_type]
            if not isinstance(value, py_types) or (isinstance(value, bool) and expected != "bool"):
                self.reject(i, "wrong_type", f"field {name!r}: expected {expected}, got {_json_type(value)}")
                return []
        # Valid JSON that failed only on framing (e.g. spread over several lines): parse it compacted.
        try:
            table = pj.read_json(pa.py_buffer(orjson.dumps(obj)), parse_options=self.parse_options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            self.reject(i, "unparseable", str(exc).splitlines()[0][:300])
            return []
        return [([i], table)]

    # -- shaping ------------------------------------------------------------------------------------

    def normalise(self, idx: Sequence[int], table: pa.Table) -> pa.Table:
        """Declared columns in order; undeclared ones folded into one JSON column ``_extra``.

        The extras are re-read from the record's own bytes rather than from Arrow's inferred columns,
        whose type is shared by the whole batch (an int would become a float next to a float).
        """
        extras = [n for n in table.column_names if n not in self.declared]
        columns = [table.column(n) for n in self.schema.parse_schema.names]
        if extras:
            present = pc.is_valid(table.column(extras[0]))
            for name in extras[1:]:
                present = pc.or_(present, pc.is_valid(table.column(name)))
            extra: list[str | None] = [None] * table.num_rows
            for row in np.flatnonzero(present.to_numpy(zero_copy_only=False)):
                obj = orjson.loads(self.batch.value_list()[idx[row]])  # type: ignore[arg-type]
                extra[row] = orjson.dumps({k: v for k, v in obj.items() if k not in self.declared and v is not None}).decode()
            columns.append(pa.chunked_array([pa.array(extra, pa.string())]))
        else:
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, pa.string())]))
        return pa.Table.from_arrays(columns, names=[*self.schema.parse_schema.names, "_extra"])

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
        """ISO-8601 strings to UTC timestamps; a naive time is taken as UTC; nulls stay null."""
        try:
            return pc.cast(column, EVENT_TIME_TYPE).combine_chunks(), np.ones(len(idx), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        ok = np.ones(len(idx), dtype=bool)
        parsed: list[datetime | None] = []
        for row, text in enumerate(column.to_pylist()):
            if text is None:
                parsed.append(None)
                continue
            try:
                ts = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
                parsed.append(ts if ts.tzinfo else ts.replace(tzinfo=UTC))
            except ValueError:
                ok[row] = False
                parsed.append(None)
                self.reject(int(idx[row]), "bad_timestamp", f"{self.schema.time_field}={text!r} is not ISO-8601")
        return pa.array(parsed, EVENT_TIME_TYPE), ok

    def run(self) -> DecodedBatch:
        pieces = self.parse_all()
        out_schema = self.schema.output_schema
        if not pieces:
            return DecodedBatch(out_schema.empty_table(), self.sorted_rejects())
        idx = np.concatenate([np.arange(i.start, i.stop) if isinstance(i, range) else np.asarray(i, dtype=np.int64)
                              for i, _ in pieces])
        table = pa.concat_tables([self.normalise(piece_idx, t) for piece_idx, t in pieces])
        keep = self.check_required(idx, table)
        times = None
        if self.schema.time_field:
            times, ok = self.event_times(idx, table.column(self.schema.time_field))
            keep &= ok
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


def decode_batch(schema: TopicSchema, batch: RawBatch, *, max_event_bytes: int = 1 << 20) -> DecodedBatch:
    """Good rows as a table in ``schema.output_schema``; every other record in ``rejected``."""
    return _Decoder(schema, batch, max_event_bytes).run()
