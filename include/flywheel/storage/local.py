"""A directory that behaves like an S3 bucket, so the embedded default needs no server.

Guarantees match S3's:
- Atomic writes: bytes go to a hidden temp file in the target directory and are fsynced, then
  renamed over the key (``os.replace``), or hard-linked to it for create-if-absent (``os.link``
  fails if the name exists). A reader holds the old inode or the new one, never a half-written file.
- Conditional writes that work across processes: every write to a key happens while an exclusive
  ``flock`` is held on a per-key lock file, so the etag check and the rename are one atomic step.
  Reads need no lock.

Internal files (temp files, the lock directory) start with ``.flywheel``, which keys may not use, so
they never show up in a listing and cannot be overwritten through the API. Lock files are kept after
use: deleting a flock'ed file is unsafe, and they are empty.

Unlike S3, a directory tree cannot hold both ``a`` and ``a/b``; such a put raises StoreError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from flywheel.errors import ObjectNotFound, PreconditionFailed, StoreError, StoreUnavailable
from flywheel.storage.base import RESERVED_SEGMENT_PREFIX, ObjectInfo, ObjectStore, validate_key

_TMP_PREFIX = f"{RESERVED_SEGMENT_PREFIX}-tmp-"
_LOCK_DIR = f"{RESERVED_SEGMENT_PREFIX}-locks"
# A concurrent delete prunes empty directories; a put that loses that race simply tries again.
_MKDIR_ATTEMPTS = 10


def _etag(st: os.stat_result) -> str:
    # Inode numbers are reused as soon as the old file is gone, and the size often stays the same
    # (a counter going from "10" to "11"), so the mtime has to tell writes apart. _put makes it
    # strictly increase with every write of a key, so an etag cannot come back (no ABA in a CAS).
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, st.st_size, _etag(st), datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC))


def _stat_file(path: Path) -> os.stat_result | None:
    """A regular file's stat, or None: a directory is where keys live, not an object itself."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    """An ObjectStore rooted at a local directory, created on first write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    @contextlib.contextmanager
    def _os_errors(self, key: str) -> Iterator[None]:
        """Turn the OSErrors a user can cause (permissions, full disk, key clashes) into StoreErrors."""
        try:
            yield
        except PermissionError as exc:
            raise StoreUnavailable(f"local store {self.url}: permission denied for {key!r}: {exc}") from exc
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise StoreError(
                f"local store {self.url}: cannot store {key!r}: a path component is an object or the key "
                f"is a directory of other keys (a local store cannot hold both 'a' and 'a/b')"
            ) from exc
        except OSError as exc:
            raise StoreError(f"local store {self.url}: {key!r}: {exc}") from exc

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Exclusive across threads and processes: flock locks belong to each open() separately."""
        lock_dir = self.root / _LOCK_DIR
        lock_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(key.encode("utf-8")).hexdigest()
        fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _write_temp(self, directory: Path, data: bytes) -> Path:
        for _ in range(_MKDIR_ATTEMPTS):
            tmp = directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                continue  # a concurrent delete pruned a directory we had just made
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            return tmp
        raise StoreError(f"local store {self.url}: directory {directory} keeps disappearing")

    def _put(self, key: str, data: bytes, *, if_none_match: bool, if_match: str | None) -> str:
        path = self._path(key)
        with self._os_errors(key):
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "key is a directory", str(path))
            tmp = self._write_temp(path.parent, data)
            try:
                with self._key_lock(key):
                    current = _stat_file(path)
                    if if_none_match and current is not None:
                        raise PreconditionFailed(f"{self.uri(key)} already exists")
                    if if_match is not None and (current is None or _etag(current) != if_match):
                        state = "is absent" if current is None else "has changed"
                        raise PreconditionFailed(f"{self.uri(key)} {state} (expected etag {if_match})")
                    # Strictly increasing mtime per key keeps etags unique even when the clock is coarse,
                    # steps back, or the filesystem hands the previous inode number out again.
                    stamp = max(time.time_ns(), current.st_mtime_ns + 1 if current else 0)
                    os.utime(tmp, ns=(stamp, stamp))
                    new = os.stat(tmp)  # the same inode the key will name
                    if if_none_match:
                        try:
                            os.link(tmp, path)  # atomic create-if-absent, even against lock-less writers
                        except FileExistsError as exc:
                            raise PreconditionFailed(f"{self.uri(key)} already exists") from exc
                    else:
                        os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        return _etag(new)

    def _get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._os_errors(key):
            try:
                with open(self._path(key), "rb") as f:
                    # fstat of the open file: the etag belongs to exactly the bytes we read, even if
                    # the key is replaced meanwhile.
                    st = os.fstat(f.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        raise IsADirectoryError(key)
                    return f.read(), _etag(st)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
                raise ObjectNotFound(f"{self.uri(key)} does not exist") from exc

    def _head(self, key: str) -> ObjectInfo | None:
        with self._os_errors(key):
            st = _stat_file(self._path(key))
        return None if st is None else _info(key, st)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Only descend into the directory that the complete segments of the prefix name.
        folder, _, _ = prefix.rpartition("/")
        start = self._path(folder) if folder else self.root
        found: list[tuple[str, os.DirEntry[str]]] = []
        with self._os_errors(prefix):
            self._scan(start, f"{folder}/" if folder else "", prefix, found)
        # Sort the whole list: walking sorted directories would put "a/b" before "a-c".
        found.sort(key=lambda item: item[0])
        for key, entry in found:
            try:
                yield _info(key, entry.stat())
            except FileNotFoundError:
                continue  # deleted since the scan

    def _scan(self, directory: Path, rel: str, prefix: str, out: list[tuple[str, os.DirEntry[str]]]) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(RESERVED_SEGMENT_PREFIX):
                continue
            key = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    self._scan(Path(entry.path), key + "/", prefix, out)
            elif entry.is_file() and key.startswith(prefix):
                try:
                    validate_key(key)  # a stray file no get() could read is not an object
                except StoreError:
                    continue
                out.append((key, entry))

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if not os.path.lexists(path):
            return  # nothing to delete; skipping the lock also avoids creating the root for nothing
        with self._os_errors(key):
            with self._key_lock(key):  # so a CAS never interleaves with a delete
                try:
                    path.unlink()
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    return
            # Prune directories the delete emptied, like S3 where "folders" vanish with their keys,
            # so the names can later be used as keys themselves.
            parent = path.parent
            while parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def _uri(self, key: str) -> str:
        return self._path(key).as_uri()
