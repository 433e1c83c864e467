"""Bad configuration gives one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures.stores import write_spec

pytestmark = pytest.mark.integration
FLYWHEEL = [sys.executable, "-m", "flywheel"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")} | env
    return subprocess.run(FLYWHEEL + args, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def base_env(kafka_broker, tmp_path) -> dict[str, str]:
    specs = tmp_path / "specs"
    name = f"cli{uuid.uuid4().hex[:8]}"
    write_spec(specs, name)
    return {
        "NAME": name,
        "FLYWHEEL_HOME": str(tmp_path),
        "FLYWHEEL_SPECS_DIR": str(specs),
        "FLYWHEEL_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "FLYWHEEL_STORE_URL": (tmp_path / "store").as_uri(),
        "FLYWHEEL_BROKER_TIMEOUT_S": "3",
    }


def assert_clear_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


def test_check_passes_and_creates_topics(base_env):
    result = run(["check", "--create-topics"], base_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{base_env['NAME']}.features" in result.stdout
    assert run(["check"], base_env).returncode == 0


def test_invalid_spec_field(base_env, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((Path(base_env["FLYWHEEL_SPECS_DIR"]) / f"{base_env['NAME']}.yaml").read_text().replace("type: int", "type: integer", 1))
    assert_clear_failure(run(["specs", str(bad)], base_env), f"{bad}: features[2].type: Input should be")


def test_missing_spec_field(base_env, tmp_path: Path):
    spec = Path(base_env["FLYWHEEL_SPECS_DIR"]) / f"{base_env['NAME']}.yaml"
    spec.write_text("\n".join(line for line in spec.read_text().splitlines() if not line.startswith("key_field")))
    assert_clear_failure(run(["check"], base_env), "key_field: required field is missing")


def test_unreachable_broker(base_env):
    result = run(["check"], base_env | {"FLYWHEEL_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert_clear_failure(result, "Kafka at 127.0.0.1:1 did not answer")


def test_unreachable_s3_endpoint(base_env):
    env = base_env | {"FLYWHEEL_STORE_URL": "s3://nowhere/lake", "FLYWHEEL_S3_ENDPOINT_URL": "http://127.0.0.1:1",
                      "FLYWHEEL_S3_ACCESS_KEY_ID": "x", "FLYWHEEL_S3_SECRET_ACCESS_KEY": "y"}
    assert_clear_failure(run(["check"], env), "FAIL store", "127.0.0.1:1")


def test_unknown_topic_for_the_drain(base_env):
    assert_clear_failure(run(["drain", "no.such.topic"], base_env), "not named by any spec")
    # named by the spec but absent on the broker
    assert_clear_failure(run(["drain", f"{base_env['NAME']}.features"], base_env), "does not exist")


def test_wrong_type_in_environment(base_env):
    assert_clear_failure(run(["check"], base_env | {"FLYWHEEL_BROKER_TIMEOUT_S": "soon"}), "must be a number")
