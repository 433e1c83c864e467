"""ObjectStore on S3 or any S3-compatible server (MinIO, Ceph, moto), through boto3.

The conditions are evaluated by the server (PutObject ``If-None-Match: *`` / ``If-Match: <etag>``,
S3 conditional writes), never emulated here: a client-side check-then-put would race with every
other writer.

Errors are translated once, in ``_errors``, into the flywheel taxonomy so callers never see botocore:
a lost condition is PreconditionFailed, a missing key ObjectNotFound, and everything that means
"this store is not usable as configured" (no connection, no bucket, no permission, no credentials)
StoreUnavailable naming the endpoint and bucket, because that is what the person has to fix.

One caveat inherited from S3: if a create-if-absent put succeeds but its response is lost, botocore's
retry gets 412, so the caller sees PreconditionFailed for a write that in fact won.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from flywheel.errors import ObjectNotFound, PreconditionFailed, StoreError, StoreUnavailable
from flywheel.storage.base import ObjectInfo, ObjectStore, validate_key

_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}  # 412, 409
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_UNAVAILABLE_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
}

# Fail in seconds, not the minutes of botocore's defaults, when the endpoint is down: a DAG task or
# the CLI should report an unreachable store, not hang.
_CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=30,
    retries={"mode": "standard", "max_attempts": 3},
)


class S3Store(ObjectStore):
    """An ObjectStore under ``s3://bucket/prefix``; credentials default to boto3's usual chain."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise StoreError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self._prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
            region_name=region,
        )
        # S3-compatible servers are addressed by host:port, where bucket-in-hostname cannot resolve.
        config = (
            _CLIENT_CONFIG.merge(Config(s3={"addressing_style": "path"})) if endpoint_url else _CLIENT_CONFIG
        )
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.endpoint = self._client.meta.endpoint_url
        self._bucket_seen = False

    @contextlib.contextmanager
    def _errors(self, key: str, *, absent_is_precondition: bool = False) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"{code or status}: {error.get('Message') or exc}"
            if code in _PRECONDITION_CODES or status == 412:
                raise PreconditionFailed(f"{self._uri(key)}: condition not met ({detail})") from exc
            if code in _NOT_FOUND_CODES:
                # S3 answers If-Match on a missing key with 404; for the caller the condition failed.
                if absent_is_precondition:
                    raise PreconditionFailed(f"{self._uri(key)} is absent ({detail})") from exc
                raise ObjectNotFound(f"{self._uri(key)} does not exist") from exc
            if code in _UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
                raise self._unavailable(detail) from exc
            raise StoreError(f"{self._uri(key)}: S3 error {detail}") from exc
        except ParamValidationError as exc:
            raise StoreError(f"{self._uri(key)}: invalid S3 request: {exc}") from exc
        except BotoCoreError as exc:  # connection refused, timeouts, TLS, no credentials, no region
            raise self._unavailable(str(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # A body cut off mid-read surfaces as urllib3's own error, not botocore's: the same outage.
            raise self._unavailable(f"{type(exc).__name__}: {exc}") from exc

    def _unavailable(self, detail: str) -> StoreUnavailable:
        return StoreUnavailable(f"S3 store unavailable: bucket {self.bucket!r} at {self.endpoint}: {detail}")

    def _check_bucket_once(self) -> None:
        """HEAD answers a missing bucket and a missing key alike (bare 404, no body); tell them apart
        once per store so a mistyped bucket is reported instead of looking empty."""
        if self._bucket_seen:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if str(error.get("Code")) in {"404", "NoSuchBucket", "NotFound"}:
                raise self._unavailable(f"{error.get('Code')}: the bucket does not exist") from exc
            # 403 here only means no s3:ListBucket permission: the bucket exists, and the 404 was the key.
        except BotoCoreError as exc:
            raise self._unavailable(str(exc)) from exc
        self._bucket_seen = True

    def _put(self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None) -> str:
        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        with self._errors(key, absent_is_precondition=if_match is not None):
            response = self._client.put_object(
                Bucket=self.bucket, Key=self._prefix + key, Body=data, **conditions
            )
        self._bucket_seen = True
        return response["ETag"]

    def _get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._prefix + key)
            data = response["Body"].read()
        self._bucket_seen = True
        return data, response["ETag"]

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors(key):
                response = self._client.head_object(Bucket=self.bucket, Key=self._prefix + key)
        except ObjectNotFound:
            self._check_bucket_once()
            return None
        self._bucket_seen = True
        return ObjectInfo(
            key, response["ContentLength"], response["ETag"], response["LastModified"].astimezone(UTC)
        )

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        start = len(self._prefix)
        with self._errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix + prefix):
                self._bucket_seen = True
                for obj in page.get("Contents", ()):
                    key = obj["Key"][start:]
                    try:
                        validate_key(key)  # skip "folder/" markers and other keys no get() could read
                    except StoreError:
                        continue
                    yield ObjectInfo(key, obj["Size"], obj["ETag"], obj["LastModified"].astimezone(UTC))

    def _delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._prefix + key)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._prefix}{key}"
