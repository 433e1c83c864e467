"""``store``: one fixture, every backend, so the contract tests are written once.

``s3_endpoint`` comes from tests.fixtures.s3_server (a plugin of the root conftest). It is requested
only for the S3 parameter, so local-only runs never start the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flywheel.storage import LocalStore, ObjectStore

from tests.fixtures.s3_server import TEST_CREDENTIALS, new_bucket

MakeS3Store = Callable[..., ObjectStore]


@pytest.fixture
def make_s3_store(s3_endpoint: str) -> MakeS3Store:
    """Build an S3Store on the test endpoint: ``make_s3_store(bucket=None, prefix="")``; no bucket
    means a fresh one."""
    from flywheel.storage import S3Store

    def make(bucket: str | None = None, prefix: str = "") -> ObjectStore:
        return S3Store(
            bucket or new_bucket(s3_endpoint), prefix, endpoint_url=s3_endpoint, **TEST_CREDENTIALS
        )

    return make


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    # A prefix, so every contract test also checks that keys are reported relative to it.
    return request.getfixturevalue("make_s3_store")(prefix="root/of/store")
