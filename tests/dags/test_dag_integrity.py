"""Every DAG file imports cleanly, fast, without I/O beyond the specs, and follows the house rules."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY_MODULES = {"pandas", "lightgbm", "evidently", "pyarrow", "boto3", "confluent_kafka", "numpy", "sklearn"}
#: The Kafka provider's trigger (an AssetWatcher is declared at parse time) imports confluent_kafka, a
#: C extension that loads in milliseconds; the rest stay out of parsing entirely.
HEAVY_AT_PARSE = HEAVY_MODULES - {"confluent_kafka"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors


def test_every_dag_file_defines_a_dag_named_after_it(dagbag):
    file_stems = {p.stem for p in DAG_FILES}
    dag_files = {Path(d.fileloc).stem for d in dagbag.dags.values()}
    assert file_stems <= dag_files


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_module_level(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in HEAVY_MODULES, f"{path.name} imports {name} at parse time"
            assert not name.startswith("airflow.decorators"), "Airflow 2 idiom: use airflow.sdk"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parsing_loads_no_heavy_library_and_is_fast(path):
    """Parse the file in a fresh interpreter and look at what got imported, and how long it took."""
    probe = (
        "import sys, time, runpy; t = time.perf_counter(); import airflow.sdk; base = time.perf_counter() - t; "
        f"t = time.perf_counter(); runpy.run_path({str(path)!r}); own = time.perf_counter() - t; "
        f"heavy = sorted(m for m in {sorted(HEAVY_AT_PARSE)!r} if m in sys.modules); print(own, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    own, heavy = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]", f"{path.name} pulled in {heavy} at parse time"
    assert float(own) < 2.0, f"{path.name} took {float(own):.2f}s to parse beyond importing Airflow"


def test_house_rules(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert "flywheel" in dag.tags, dag_id
        assert dag.catchup is False, dag_id
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert dag.start_date is not None and dag.start_date.tzinfo is not None, dag_id
        for t in dag.tasks:
            assert t.on_failure_callback, f"{dag_id}.{t.task_id} would fail silently (no alert callback)"


def test_tasks_retry_by_default(monkeypatch):
    """Deployments get retries (the suite turns them off through FLYWHEEL_TASK_RETRIES to fail fast)."""
    import importlib

    import flywheel.airflow_support as support

    monkeypatch.delenv("FLYWHEEL_TASK_RETRIES")
    assert importlib.reload(support).DEFAULT_ARGS["retries"] == 2
    monkeypatch.setenv("FLYWHEEL_TASK_RETRIES", "0")
    importlib.reload(support)


def test_parse_time_is_bounded():
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    DagBag(dag_folder=str(REPO / "dags"))
    assert time.perf_counter() - started < 10
