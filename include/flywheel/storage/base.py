"""The object-store contract shared by every backend, and the key rules that make it safe.

Validation lives here, in the public methods, so that no backend can forget it: keys end up as file
paths (LocalStore) and as paths served by the UI, so a key like ``../../etc/passwd`` must be refused
before any backend sees it. The same rules apply to every backend so a key that works on a laptop
works unchanged on S3.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from flywheel.errors import StoreError

#: Path segments starting with this are reserved for a backend's own bookkeeping (LocalStore's temp
#: and lock files), so user keys can never collide with, overwrite or expose them.
RESERVED_SEGMENT_PREFIX = ".flywheel"

#: S3's limit; enforcing it everywhere keeps LocalStore from accepting keys S3 would refuse.
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD tells about one object, without reading its bytes."""

    key: str  # relative to the store root, '/'-separated, no leading slash
    size: int
    etag: str  # opaque version token for if_match; see ObjectStore.put
    modified: datetime  # tz-aware UTC


def _refuse(what: str, value: str, reason: str) -> StoreError:
    shown = repr(value) if len(value) <= 200 else repr(value[:200]) + "..."
    return StoreError(f"invalid object {what} {shown}: {reason}")


def _check_characters(what: str, value: str) -> None:
    if value.startswith("/"):
        raise _refuse(what, value, "must be relative to the store root (no leading '/')")
    if "\\" in value:
        raise _refuse(what, value, "backslashes are not allowed; use '/' to separate parts")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise _refuse(what, value, "control characters (including NUL) are not allowed")
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        raise _refuse(what, value, f"longer than {MAX_KEY_BYTES} bytes")


def _check_segment(what: str, value: str, segment: str) -> None:
    if segment == "":
        raise _refuse(what, value, "empty path segment (leading, trailing or doubled '/')")
    if segment in (".", ".."):
        raise _refuse(what, value, "'.' and '..' segments are not allowed")
    if segment.startswith(RESERVED_SEGMENT_PREFIX):
        raise _refuse(what, value, f"names starting with {RESERVED_SEGMENT_PREFIX!r} are reserved")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe, portable object key; raise StoreError otherwise."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid object key {key!r}: must be a non-empty string")
    _check_characters("key", key)
    for segment in key.split("/"):
        _check_segment("key", key, segment)
    return key


def validate_prefix(prefix: str) -> str:
    """Like validate_key, but the last segment may be partial or empty: listing is by string prefix."""
    if not isinstance(prefix, str):
        raise StoreError(f"invalid object prefix {prefix!r}: must be a string")
    if prefix:
        _check_characters("prefix", prefix)
        for segment in prefix.split("/")[:-1]:
            _check_segment("prefix", prefix, segment)
    return prefix


class ObjectStore(ABC):
    """A flat key -> bytes store with atomic writes and conditional writes.

    Conditional writes are what let several schedulers, workers and the scorer share state with no
    lock service: create-if-absent elects one winner, compare-and-swap makes read-modify-write safe.

    ETags: an etag changes whenever an object's content changes, and equal etags mean equal content,
    so a CAS never overwrites a change it has not seen. LocalStore also changes the etag when identical
    bytes are rewritten; S3 does not (its ETag is a content hash). Compare etags to detect changed
    *content*, never to detect that "a write happened".
    """

    url: str  # the root, e.g. file:///abs/dir or s3://bucket/prefix

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write ``data`` atomically (readers see the old or the new object, never a part) and return
        the new etag.

        ``if_none_match=True`` creates only if the key is absent; ``if_match=etag`` replaces only if the
        current etag equals ``etag``. Either raises PreconditionFailed when the condition does not hold.
        """
        validate_key(key)
        if if_none_match and if_match is not None:
            raise ValueError("put: pass if_none_match or if_match, not both")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"put: data must be bytes, not {type(data).__name__}")
        return self._put(key, bytes(data), if_none_match=if_none_match, if_match=if_match)

    def get(self, key: str) -> bytes:
        """Return the object's bytes; ObjectNotFound if absent."""
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Return the bytes and the etag *of those bytes*, the starting point of a CAS loop."""
        return self._get_with_etag(validate_key(key))

    def head(self, key: str) -> ObjectInfo | None:
        """Return the object's metadata, or None if absent."""
        return self._head(validate_key(key))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (a string prefix, not only a folder),
        recursively, sorted by key."""
        return self._list(validate_prefix(prefix))

    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is not an error, so cleanup can be retried."""
        self._delete(validate_key(key))

    def uri(self, key: str) -> str:
        """The object's full URI, for people and for pyarrow/pandas readers."""
        return self._uri(validate_key(key))

    # Backends implement these; keys and prefixes arrive already validated.

    @abstractmethod
    def _put(self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None) -> str: ...

    @abstractmethod
    def _get_with_etag(self, key: str) -> tuple[bytes, str]: ...

    @abstractmethod
    def _head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _uri(self, key: str) -> str: ...
