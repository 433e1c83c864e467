"""The scorer's pure core, without Kafka or a store: raw records and a model in, predictions and
rejections out; a record that makes scoring raise costs that record only."""

from __future__ import annotations

import numpy as np
import orjson
from flywheel.demo.generator import event_stream
from flywheel.events.decode import RawBatch, decode_batch
from flywheel.events.schema import topic_schemas
from flywheel.features import feature_schema
from flywheel.scoring.core import score_batch
from flywheel.scoring.model import ServingModel
from flywheel.specs import load_spec

from tests.fixtures.kafka_broker import REPO

SPEC = load_spec(REPO / "include" / "specs" / "fraud.yaml")
SCHEMA = next(s for s in topic_schemas(SPEC) if s.kind == "features")


def model(predict=lambda X: np.full(len(X), 0.7)) -> ServingModel:
    return ServingModel(model=SPEC.name, version=3, sha256="", schema=feature_schema(SPEC), predict=predict,
                        compiled=False, load_seconds=0.0)


def batch(values: list[bytes | None]) -> RawBatch:
    n = len(values)
    return RawBatch(SCHEMA.topic, 2, values, list(range(10, 10 + n)), [1_764_064_800_000] * n,
                    [f"k{i}".encode() for i in range(n)])


def events(n: int) -> list[bytes]:
    return [orjson.dumps(e.features) for e in event_stream(n, prefix="c")]


def test_good_records_become_predictions_and_bad_ones_the_decoders_rejections():
    values = events(5)
    values[1], values[3] = b"{oops", orjson.dumps({**orjson.loads(values[3]), "amount": "1"})
    out = score_batch(SPEC, SCHEMA, batch(values), model())
    predictions = [orjson.loads(v) for v in out.values]
    assert [p["event_id"] for p in predictions] == ["c0", "c2", "c4"]
    assert {p["model_version"] for p in predictions} == {"3"} and {p["score"] for p in predictions} == {0.7}
    assert out.keys == [b"k0", b"k2", b"k4"]
    decoded = decode_batch(SCHEMA, batch(values), max_event_bytes=SPEC.drain.max_event_bytes)
    assert [(r.offset, r.reason) for r in out.rejected] == [(r.offset, r.reason) for r in decoded.rejected] == [
        (11, "not_json"), (13, "wrong_type")]


def test_a_record_that_makes_scoring_raise_is_isolated_as_an_internal_error():
    values = events(40)
    poison = orjson.loads(values[17])["amount"]

    def predict(X: np.ndarray) -> np.ndarray:
        if (X[:, 0] == poison).any():  # amount is the first feature
            raise RuntimeError("the model choked")
        return np.full(len(X), 0.2)

    out = score_batch(SPEC, SCHEMA, batch(values), model(predict))
    assert [(r.offset, r.reason) for r in out.rejected] == [(27, "internal_error")]
    assert "RuntimeError: the model choked" in out.rejected[0].detail
    assert out.rejected[0].value == values[17]
    assert len(out.values) == 39 and out.internal_errors == 1


def test_a_model_failing_on_everything_fails_every_record_alone():
    out = score_batch(SPEC, SCHEMA, batch(events(6)), model(lambda X: np.zeros(len(X) + 1)))
    assert out.values == [] and out.internal_errors == 6  # dead-lettered: retrying them would stall the partition
