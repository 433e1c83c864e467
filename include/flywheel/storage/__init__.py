"""Object storage: one contract (``ObjectStore``), a local-directory backend and an S3 backend.

Everything that persists artefacts (datasets, models, registry pointers, leases) goes through
``open_store(url)``, so the embedded default (a directory) and a production S3 bucket are a
configuration change, not a code change.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from flywheel.errors import StoreError
from flywheel.storage.base import ObjectInfo, ObjectStore, validate_key, validate_prefix
from flywheel.storage.local import LocalStore

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "open_store",
    "validate_key",
    "validate_prefix",
]


def open_store(url: str, **s3_options: Any) -> ObjectStore:
    """Open the store at ``url``: ``file:///abs/path`` or a plain path -> LocalStore,
    ``s3://bucket[/prefix]`` -> S3Store(bucket, prefix, **s3_options).

    ``s3_options`` (endpoint_url, region, access_key, secret_key, session_token) are ignored for local
    stores, so one configuration can carry them whichever store the URL names.
    """
    if not isinstance(url, str) or not url.strip():
        raise StoreError("store URL is empty; use file:///abs/path, a directory path or s3://bucket/prefix")
    url = url.strip()
    if "://" not in url:
        return LocalStore(url)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"store URL {url!r}: file URLs must be local (file:///abs/path)")
        if not parts.path.startswith("/"):
            raise StoreError(f"store URL {url!r}: file URLs need an absolute path (file:///abs/path)")
        return LocalStore(unquote(parts.path))
    if scheme == "s3":
        # Split by hand: S3 keys may contain '?' and '#', which urlsplit would cut off.
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise StoreError(f"store URL {url!r}: no bucket (expected s3://bucket/optional/prefix)")
        from flywheel.storage.s3 import S3Store

        return S3Store(bucket, prefix, **s3_options)
    raise StoreError(f"store URL {url!r}: unsupported scheme {scheme!r} (use file://, s3:// or a path)")


def __getattr__(name: str) -> Any:
    # boto3 takes ~0.3 s to import; only S3 users should pay for it.
    if name == "S3Store":
        from flywheel.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
