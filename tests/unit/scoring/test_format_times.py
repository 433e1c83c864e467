"""Event times in predictions: numpy's fast path writes exactly what Arrow's strftime wrote before."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from flywheel.scoring.core import format_times as _format_times

TIMES = [dt.datetime(2026, 11, 25, 0, 0, 0, 10000, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)]


def arrow(column: pa.Array | pa.ChunkedArray) -> list[str | None]:
    return pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ").to_pylist()


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC"])
def test_same_strings_as_arrow(unit, tz):
    array = pa.array(TIMES, pa.timestamp(unit, tz=tz))
    for column in (array, pa.chunked_array([array[:1], array[1:]])):
        assert _format_times(column) == arrow(column)


def test_nulls_and_other_time_zones_go_through_arrow():
    with_null = pa.chunked_array([pa.array([TIMES[0], None], pa.timestamp("us", tz="UTC"))])
    assert _format_times(with_null) == arrow(with_null) == ["2026-11-25T00:00:00.010000Z", None]
    paris = pa.array(TIMES, pa.timestamp("us", tz="Europe/Paris"))
    assert _format_times(paris) == arrow(paris)
