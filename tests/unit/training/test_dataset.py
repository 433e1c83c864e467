from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from flywheel.training.keys import first_per_code, shared_codes, time_then_key_order


def test_shared_codes_agree_across_tables_and_nulls_join_nothing():
    features = pa.chunked_array([["a", "b"], ["c", None]])
    labels = pa.chunked_array([["c"], ["a", "zz", None]])
    f, lab = shared_codes(features, labels)
    assert f[0] == lab[1] and f[2] == lab[0]
    assert f[3] == -1 and lab[3] == -1
    assert len({f[0], f[1], f[2], lab[2]}) == 4



@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.binary()])
def test_bucketed_codes_are_equal_exactly_for_equal_keys(kind):
    """Above the bucketing threshold: same partition of rows into equal keys as one dictionary gives,
    across tables, with empty strings, nulls, repeats and chunks cut mid-way."""
    rng = np.random.default_rng(5)
    pool = ["", "e", "e1", "1e", "uuid-" * 3, *[f"e{i}" for i in rng.integers(0, 60_000, 4_000)],
            *[str(rng.bytes(int(n)).hex()) for n in rng.integers(1, 20, 4_000)]]
    picks = rng.integers(0, len(pool), 150_000)
    values = [None if i % 97 == 0 else pool[i] for i in picks]
    as_type = (lambda v: [x.encode() if x is not None else None for x in v]) if kind == pa.binary() else (lambda v: v)
    whole = pa.array(as_type(values), type=kind)
    features = pa.chunked_array([whole.slice(0, 70_001), whole.slice(70_001, 10_000)])
    labels = pa.chunked_array([whole.slice(80_001)])
    f, lab = shared_codes(features, labels)
    codes = np.concatenate([f, lab])
    assert ((codes == -1) == np.array([v is None for v in values])).all()
    expected = pc.dictionary_encode(whole).indices.to_numpy(zero_copy_only=False)
    valid = codes >= 0
    # Same grouping: a code maps to one expected index and back.
    pairs = np.unique(np.stack([codes[valid], expected[valid].astype(np.int64)]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]

def test_unique_codes_keep_every_row():
    assert first_per_code(np.array([3, 1, 2]), np.array([9, 9, 9])).tolist() == [0, 1, 2]


def test_duplicates_keep_the_smallest_order_and_the_first_of_ties():
    codes = np.array([0, 1, 0, 0, 2])
    order = np.array([-1, -5, -3, -3, 0])  # e.g. the latest label first: -timestamp
    kept = first_per_code(codes, order)
    assert kept.tolist() == [1, 2, 4]


def test_sort_by_time_breaks_ties_by_key_bytes():
    times = np.array([5, 1, 5, 3, 5, 1])
    keys = pa.array(["b", "z", "a", "m", "c", "y"])
    order = time_then_key_order(times, keys)
    assert [keys[i].as_py() for i in order] == ["y", "z", "m", "a", "b", "c"]


def test_sort_by_time_without_ties_is_a_plain_argsort():
    times = np.array([30, 10, 20])
    assert time_then_key_order(times, pa.array(["a", "b", "c"])).tolist() == [1, 2, 0]


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_metrics_equal_scikit_learn(seed):
    from flywheel.training.dataset import Split
    from flywheel.training.model import evaluate
    from sklearn.metrics import log_loss, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(seed)
    y = (rng.random(5000) < 0.1).astype(float)
    scores = np.round(np.clip(y * 0.3 + rng.random(5000) * 0.7, 0, 1), 2)  # rounded: many ties
    scores[:3] = [0.0, 1.0, 0.5]
    got = evaluate(scores, Split(np.empty((5000, 0)), y, pa.array([""] * 5000)), 0.5)
    assert got["auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert got["logloss"] == pytest.approx(log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1]), rel=1e-12)
    assert got["precision"] == pytest.approx(precision_score(y, scores >= 0.5, zero_division=0))
    assert got["recall"] == pytest.approx(recall_score(y, scores >= 0.5, zero_division=0))


def test_auc_is_nan_with_one_class():
    from flywheel.training.model import roc_auc

    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([False, False])))


def test_sort_by_time_reads_keys_through_positions():
    keys = pa.array(["q", "b", "a", "c"])
    positions = np.array([3, 1, 2])  # times belong to keys "c", "b", "a"
    order = time_then_key_order(np.array([7, 7, 2]), keys, positions)
    assert [keys[positions[i]].as_py() for i in order] == ["a", "b", "c"]
