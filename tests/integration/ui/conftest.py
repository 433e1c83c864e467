"""The Models view's app in-process, behind Airflow's real token validation (auth manager + metadata DB)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flywheel.settings import Settings

from tests.fixtures.s3_server import TEST_CREDENTIALS, new_bucket


@dataclass
class Tokens:
    """JWTs as Airflow's auth manager issues them, plus broken ones."""

    valid: str
    forged: str  # a valid token with its signature changed
    expired: str


@pytest.fixture(scope="session")
def ui_tokens(airflow_db) -> Iterator[Tokens]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "models-view-tests-" + "s" * 48)
        from airflow.api_fastapi.app import create_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        manager = create_auth_manager()
        user = SimpleAuthManagerUser(username="admin", role="admin")
        valid = manager.generate_jwt(user)
        head, payload, signature = valid.split(".")
        forged = f"{head}.{payload}.{signature[:-6]}{'AAAAAA' if signature[-6:] != 'AAAAAA' else 'BBBBBB'}"
        expired = manager.generate_jwt(user, expiration_time_in_seconds=-3600)
        yield Tokens(valid, forged, expired)


def local_settings(root: Path, **changes: object) -> Settings:
    settings = Settings.from_env({"FLYWHEEL_HOME": str(root), "FLYWHEEL_STORE_URL": (root / "store").as_uri(),
                                  "FLYWHEEL_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
    return settings.with_overrides(**changes) if changes else settings


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for an empty store on each backend."""
    if request.param == "local":
        return local_settings(tmp_path)
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = new_bucket(endpoint, "flywheel-ui")
    return local_settings(tmp_path, store_url=f"s3://{bucket}/lake", s3_endpoint_url=endpoint, s3_region=TEST_CREDENTIALS["region"],
                          s3_access_key=TEST_CREDENTIALS["access_key"], s3_secret_key=TEST_CREDENTIALS["secret_key"])


@pytest.fixture
def make_client(ui_tokens: Tokens) -> Callable[..., object]:
    """``make_client(settings, token="valid"|"forged"|"expired"|None, **create_app_kwargs)``: a TestClient."""
    from fastapi.testclient import TestClient
    from flywheel.ui.app import create_app

    def build(settings: Settings, token: str | None = "valid", **kwargs: object) -> TestClient:
        client = TestClient(create_app(lambda: settings, **kwargs), raise_server_exceptions=False)
        if token is not None:
            client.headers["Authorization"] = f"Bearer {getattr(ui_tokens, token)}"
        return client

    return build
