"""The one settings object: every knob flywheel reads from its environment, typed, in one place.

Services (the scorer, the CLI, benchmarks) build it from ``FLYWHEEL_*`` environment variables. Inside
Airflow, :func:`flywheel.airflow.connections.settings_from_airflow` starts from the same object and
overlays credentials from Airflow connections, so secrets never need to live in the environment of
the scheduler.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.errors import ConfigError

if TYPE_CHECKING:
    from flywheel.storage import ObjectStore

ENV_PREFIX = "FLYWHEEL_"
#: ``FLYWHEEL_KAFKA__SASL_MECHANISM=PLAIN`` becomes the librdkafka property ``sasl.mechanism``.
KAFKA_PASSTHROUGH_PREFIX = "FLYWHEEL_KAFKA__"


def project_home(env: Mapping[str, str] = os.environ) -> Path:
    """Where the embedded default keeps its state: FLYWHEEL_HOME, else AIRFLOW_HOME, else the repo.

    The repository root is AIRFLOW_HOME for the embedded default, so a checkout works without any
    variable set; an installed package falls back to the working directory.
    """
    for var in ("FLYWHEEL_HOME", "AIRFLOW_HOME"):
        if env.get(var):
            return Path(env[var]).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "include" / "specs").is_dir():
        return repo
    return Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Immutable, so a running service cannot drift from what it logged at start."""

    home: Path
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: Extra librdkafka properties (security, timeouts); applied to every client.
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    store_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    specs_dir: Path = Path()
    model_events_topic: str = "flywheel.model-events"
    metrics_topic: str = "flywheel.metrics"
    alerts_topic: str = "flywheel.alerts"
    #: Consumer-group prefix; the drain and the scorers derive their group ids from it.
    group_prefix: str = "flywheel"
    broker_timeout_s: float = 10.0
    #: Parquet codec of everything stored (see flywheel.storage.parquet for the trade-off).
    parquet_compression: str = "lz4"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        home = project_home(env)

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else default

        kafka_config: dict[str, str] = {}
        raw_json = get("KAFKA_CONFIG_JSON")
        if raw_json:
            try:
                parsed = json.loads(raw_json)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"FLYWHEEL_KAFKA_CONFIG_JSON is not valid JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ConfigError("FLYWHEEL_KAFKA_CONFIG_JSON must be a JSON object of librdkafka settings")
            kafka_config.update({str(k): str(v) for k, v in parsed.items()})
        for name, value in env.items():
            if name.startswith(KAFKA_PASSTHROUGH_PREFIX):
                kafka_config[name[len(KAFKA_PASSTHROUGH_PREFIX):].lower().replace("_", ".")] = value

        timeout_raw = get("BROKER_TIMEOUT_S", "10")
        try:
            timeout = float(timeout_raw)  # type: ignore[arg-type]
        except ValueError:
            raise ConfigError(f"FLYWHEEL_BROKER_TIMEOUT_S must be a number of seconds, got {timeout_raw!r}") from None

        from flywheel.storage.parquet import COMPRESSIONS

        compression = (get("PARQUET_COMPRESSION", cls.parquet_compression) or "").lower()
        if compression not in COMPRESSIONS:
            raise ConfigError(f"FLYWHEEL_PARQUET_COMPRESSION must be one of {', '.join(COMPRESSIONS)}, "
                              f"got {compression!r}")

        store_url = get("STORE_URL") or (home / ".local" / "store").as_uri()
        return cls(
            home=home,
            kafka_bootstrap=get("KAFKA_BOOTSTRAP", "127.0.0.1:9092") or "",
            kafka_config=kafka_config,
            store_url=store_url,
            s3_endpoint_url=get("S3_ENDPOINT_URL"),
            s3_region=get("S3_REGION"),
            s3_access_key=get("S3_ACCESS_KEY_ID"),
            s3_secret_key=get("S3_SECRET_ACCESS_KEY"),
            specs_dir=Path(get("SPECS_DIR") or str(home / "include" / "specs")),
            model_events_topic=get("MODEL_EVENTS_TOPIC", cls.model_events_topic) or "",
            metrics_topic=get("METRICS_TOPIC", cls.metrics_topic) or "",
            alerts_topic=get("ALERTS_TOPIC", cls.alerts_topic) or "",
            group_prefix=get("GROUP_PREFIX", cls.group_prefix) or "",
            broker_timeout_s=timeout,
            parquet_compression=compression,
        )

    def open_store(self) -> ObjectStore:
        """The object store these settings point at (local directory or S3)."""
        from flywheel.storage import open_store

        return open_store(
            self.store_url,
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> dict[str, str]:
        """What to log at start: everything but secrets."""
        secret_words = ("password", "secret", "token", "key")
        kafka = {
            k: ("***" if any(w in k for w in secret_words) else v) for k, v in self.kafka_config.items()
        }
        return {
            "kafka_bootstrap": self.kafka_bootstrap,
            "kafka_config": json.dumps(kafka, sort_keys=True),
            "store_url": self.store_url,
            "s3_endpoint_url": self.s3_endpoint_url or "",
            "specs_dir": str(self.specs_dir),
        }
