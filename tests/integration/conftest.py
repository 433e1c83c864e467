"""Fixtures shared by the integration tests of several stages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from flywheel.kafka_config import ensure_topics
from flywheel.settings import Settings
from flywheel.specs import load_spec
from flywheel.training import pipeline

from tests.fixtures.kafka_broker import Broker
from tests.fixtures.stores import FlywheelEnv, write_spec
from tests.integration.scoring.conftest import TRAINING_AS_OF, produce_training_data, promote_new_version


@dataclass(frozen=True)
class ChampionTemplate:
    """A model store holding champion v1 and an unpromoted candidate v2 (same data, same model)."""

    name: str
    store_dir: Path
    settings: Settings


@pytest.fixture(scope="session")
def champion_template(kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> ChampionTemplate:
    root = tmp_path_factory.mktemp("scoring-template")
    name = f"t{uuid.uuid4().hex[:10]}"
    specs_dir = root / "specs"
    write_spec(specs_dir, name)
    store_dir = root / "store"
    settings = Settings.from_env({"FLYWHEEL_HOME": str(root)}).with_overrides(
        kafka_bootstrap=kafka_broker.bootstrap, store_url=store_dir.as_uri(), specs_dir=specs_dir,
        group_prefix=f"fw-{name}", model_events_topic=f"{name}.model-events", broker_timeout_s=15.0)
    spec = load_spec(specs_dir / f"{name}.yaml")
    ensure_topics(settings, spec.drained_topics, partitions=4)
    env = FlywheelEnv(settings, spec, settings.open_store())
    produce_training_data(env)
    assert promote_new_version(env) == 1
    assert pipeline.train_challenger(settings, spec, as_of=TRAINING_AS_OF)["version"] == 2
    return ChampionTemplate(name, store_dir, settings)
