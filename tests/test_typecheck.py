"""mypy over include/flywheel, configured by ``[tool.mypy]`` in pyproject.toml (strictness, third-party
modules without types, the incremental cache in .cache/mypy that makes a repeated run take about a second)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_include_type_checks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
         "--cache-dir", str(REPO / ".cache" / "mypy")],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    if result.returncode != 0:
        pytest.fail(f"mypy (exit {result.returncode}):\n{result.stdout}{result.stderr}", pytrace=False)
