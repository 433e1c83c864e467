"""How many chunks a drain decodes and writes at once."""

from __future__ import annotations

import pytest
from flywheel.drain.runner import DrainLimits
from flywheel.errors import ConfigError


def test_workers_default_to_the_cores_at_most_two_and_never_more_than_partitions(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert DrainLimits().worker_count(partitions=4) == 2
    assert DrainLimits().worker_count(partitions=1) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert DrainLimits().worker_count(partitions=4) == 1
    assert DrainLimits(workers=3).worker_count(partitions=4) == 3
    assert DrainLimits(workers=3).worker_count(partitions=2) == 2
    assert DrainLimits().worker_count(partitions=0) == 1


def test_negative_workers_are_refused():
    with pytest.raises(ConfigError, match="workers"):
        DrainLimits(workers=-1)
