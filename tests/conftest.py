"""Session-wide fixtures: one real broker and one real S3 endpoint shared by every integration test.

Airflow is pointed at a throwaway home before anything imports it, so tests never touch the SQLite
database of a running `make demo`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_AIRFLOW_TEST_HOME = Path(tempfile.mkdtemp(prefix="flywheel-airflow-test-"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_TEST_HOME}/airflow.db")
os.environ.setdefault("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(_AIRFLOW_TEST_HOME / "logs"))
os.environ.setdefault("AIRFLOW_HOME", str(REPO))
os.environ.setdefault("FLYWHEEL_SPECS_DIR", str(REPO / "include" / "specs"))
# dag.test() honours retries; a failing task in a test should fail at once, not after minutes of backoff.
os.environ.setdefault("FLYWHEEL_TASK_RETRIES", "0")

pytest_plugins = [
    "tests.fixtures.kafka_broker",
    "tests.fixtures.s3_server",
    "tests.fixtures.stores",
    "tests.fixtures.airflow_env",
    "tests.fixtures.airflow_standalone",
    "tests.fixtures.alert_sinks",
    "tests.fixtures.browser",
]
