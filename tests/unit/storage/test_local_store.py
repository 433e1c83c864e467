"""LocalStore must give the guarantees S3 gives, on one disk and across processes.

The cross-backend contract lives in tests/integration/storage; these tests cover what only a local
directory can get wrong: temp files, locks, inode reuse, directories and path traversal.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest
from flywheel.errors import ObjectNotFound, PreconditionFailed, StoreError
from flywheel.storage import LocalStore, open_store, validate_key, validate_prefix
from flywheel.storage.base import MAX_KEY_BYTES


def disk_entries(root: Path) -> list[str]:
    """Every file under root except the lock directory, relative, so tests can spot stray temp files."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".flywheel-locks" not in p.parts
    )


def test_round_trip_creates_the_root_lazily(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "lake")
    assert not (tmp_path / "lake").exists()
    assert list(store.list()) == [] and store.head("x") is None
    store.delete("x")
    assert not (tmp_path / "lake").exists()  # reads and no-op deletes leave no trace
    etag = store.put("a/b/c.bin", b"data")
    assert (tmp_path / "lake" / "a" / "b" / "c.bin").read_bytes() == b"data"
    assert store.get_with_etag("a/b/c.bin") == (b"data", etag)
    assert store.url == (tmp_path / "lake").as_uri()


def test_no_temp_or_lock_files_are_visible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"1")
    store.put("k", b"2")
    store.put("n/k", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("n/k", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"3", if_match="stale")
    assert disk_entries(tmp_path) == ["k", "n/k"]
    # A crash can leave a temp file behind; it must still never look like an object.
    (tmp_path / "n" / ".flywheel-tmp-deadbeef").write_bytes(b"partial")
    assert [i.key for i in store.list()] == ["k", "n/k"]


def test_failed_write_leaves_the_old_object_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="No space left"):
        store.put("k", b"new")
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert disk_entries(tmp_path) == ["k"]


def test_readers_see_the_old_or_the_new_object_never_a_part(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    versions = [b"a" * (4 << 20), b"b" * (4 << 20)]
    store.put("big", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            store.put("big", versions[i % 2])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(150):
            data = store.get("big")
            if data not in versions:
                seen.append(data[:16] + b"..." + data[-16:])
            assert [i.key for i in store.list()] == ["big"]
    finally:
        stop.set()
        writer.join()
    assert seen == []
    assert disk_entries(tmp_path) == ["big"]


def test_etag_changes_on_identical_rewrite_and_never_repeats(tmp_path: Path) -> None:
    # Inode numbers are reused at once and "10" -> "11" keeps the size, so only a per-write mtime
    # keeps etags unique; a repeated etag would let a stale CAS through (ABA).
    store = LocalStore(tmp_path)
    etags = [store.put("counter", b"10" if i % 2 else b"11") for i in range(300)]
    assert len(set(etags)) == len(etags)
    same = store.put("counter", b"10")
    assert store.put("counter", b"10") != same


def test_cas_after_identical_rewrite_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    seen = store.put("ptr", b"v")
    store.put("ptr", b"v")
    with pytest.raises(PreconditionFailed):
        store.put("ptr", b"w", if_match=seen)


def test_create_if_absent_and_cas(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    e1 = store.put("k", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed, match="already exists"):
        store.put("k", b"2", if_none_match=True)
    e2 = store.put("k", b"2", if_match=e1)
    with pytest.raises(PreconditionFailed, match="has changed"):
        store.put("k", b"3", if_match=e1)
    with pytest.raises(PreconditionFailed, match="is absent"):
        store.put("other", b"3", if_match=e2)
    assert store.get_with_etag("k") == (b"2", e2)
    assert store.head("k").etag == e2


def test_list_order_prefix_and_no_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ["b", "a/x", "a-c", "a/b/c", "ab", ".hidden"]:
        store.put(key, b"1")
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "bad\\name").write_bytes(b"stray file no key can name")
    assert [i.key for i in store.list()] == [".hidden", "a-c", "a/b/c", "a/x", "ab", "b"]
    assert [i.key for i in store.list("a/")] == ["a/b/c", "a/x"]
    assert [i.key for i in store.list("a")] == ["a-c", "a/b/c", "a/x", "ab"]
    assert [i.key for i in store.list("a/b/")] == ["a/b/c"]
    assert [i.key for i in store.list("b/")] == []  # "b" is an object, not a folder
    assert [i.key for i in store.list("missing/deep/")] == []


def test_a_key_cannot_be_both_an_object_and_a_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"1")
    with pytest.raises(StoreError, match="cannot store") as caught:
        store.put("a/b", b"2")
    assert not isinstance(caught.value, PreconditionFailed)
    store.put("d/e", b"1")
    for conditions in ({}, {"if_none_match": True}):
        with pytest.raises(StoreError, match="cannot store"):
            store.put("d", b"2", **conditions)
    with pytest.raises(ObjectNotFound):
        store.get("d")
    assert store.head("d") is None and not store.exists("d")
    store.delete("d")  # a folder is not an object: nothing to delete
    assert store.get("d/e") == b"1"


def test_delete_prunes_emptied_folders(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("a/b/c", b"1")
    store.put("a/keep", b"1")
    store.delete("a/b/c")
    assert not (tmp_path / "root" / "a" / "b").exists()
    assert (tmp_path / "root" / "a" / "keep").exists()
    store.delete("a/keep")
    assert (tmp_path / "root").is_dir() and not (tmp_path / "root" / "a").exists()
    store.put("a", b"now an object")
    assert store.get("a") == b"now an object"


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../escape",
    "a/..",
    "..",
    ".",
    "a/./b",
    "a//b",
    "a/",
    "a\\..\\b",
    "a\x00b",
    "a\nb",
    ".flywheel-locks/x",
    "a/.flywheel-tmp-123",
    "x" * (MAX_KEY_BYTES + 1),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_never_touch_the_disk(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    store = LocalStore(root)
    with pytest.raises(StoreError, match="invalid object key"):
        validate_key(key)
    for call in (store.get, store.head, store.exists, store.delete, store.uri, lambda k: store.put(k, b"x")):
        with pytest.raises(StoreError, match="invalid object key"):
            call(key)
    assert list(tmp_path.iterdir()) == []  # not even the root: validation runs before any I/O


# The longest key: 1024 bytes, in segments under the 255-byte cap filesystems put on one name.
LONGEST_KEY = "/".join(["x" * 204] * 5)


@pytest.mark.parametrize("key", [".hidden", "a..b", "..a", "a/b..", "é/ü 1+2=3.txt", LONGEST_KEY])
def test_unusual_but_valid_keys(tmp_path: Path, key: str) -> None:
    assert len(LONGEST_KEY.encode()) == MAX_KEY_BYTES
    store = LocalStore(tmp_path)
    store.put(key, b"v")
    assert store.get(key) == b"v"
    assert [i.key for i in store.list()] == [key]


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "a/..b", "a/.."])
def test_valid_prefixes(prefix: str) -> None:
    # The last segment is a string prefix: "a/.." matches "a/..b"; it never names a directory.
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/a", "../", "a/../b", "a//b", "a\\b", "a\x00"])
def test_invalid_prefixes(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(StoreError, match="invalid object prefix"):
        list(LocalStore(tmp_path).list(prefix))


def test_uri_is_readable_by_pyarrow(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = LocalStore(tmp_path / "lake dir")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": [1, 2, 3]}), sink)
    store.put("runs/a b%.parquet", sink.getvalue().to_pybytes())
    uri = store.uri("runs/a b%.parquet")
    assert uri == (tmp_path / "lake dir" / "runs" / "a b%.parquet").as_uri()
    assert pq.read_table(uri).column("x").to_pylist() == [1, 2, 3]


def test_open_store(tmp_path: Path, monkeypatch) -> None:
    assert open_store(tmp_path.as_uri()).url == tmp_path.as_uri()
    assert open_store(f"file://localhost{tmp_path}").url == tmp_path.as_uri()
    assert open_store((tmp_path / "a b").as_uri()).url == (tmp_path / "a b").as_uri()
    monkeypatch.chdir(tmp_path)
    store = open_store("relative/dir", endpoint_url="http://ignored-for-local-stores")
    assert isinstance(store, LocalStore) and store.url == (tmp_path / "relative" / "dir").as_uri()
    s3 = open_store("s3://bucket/pre/fix", endpoint_url="http://127.0.0.1:1", region="us-east-1")
    assert type(s3).__name__ == "S3Store" and s3.url == "s3://bucket/pre/fix"
    assert open_store("s3://bucket").uri("k") == "s3://bucket/k"
    for bad in ["", "  ", "ftp://host/x", "file://otherhost/x", "s3://", "s3:///prefix"]:
        with pytest.raises(StoreError):
            open_store(bad)


# --------------------------------------------------------------------------------------------------
# Separate processes (spawned: they share nothing but the directory), as Airflow's workers would.


def _contend_create(root: str, barrier, results, worker: int) -> None:
    store = LocalStore(root)
    barrier.wait()
    try:
        store.put("leader", f"worker-{worker}".encode(), if_none_match=True)
        results.put(worker)
    except PreconditionFailed:
        results.put(None)


def _increment(root: str, barrier, results, worker: int, increments: int) -> None:
    store = LocalStore(root)
    barrier.wait()
    done = conflicts = 0
    while done < increments:
        data, etag = store.get_with_etag("counter")
        try:
            store.put("counter", str(int(data) + 1).encode(), if_match=etag)
            done += 1
        except PreconditionFailed:
            conflicts += 1
    results.put((done, conflicts))


def _run_processes(target, root: Path, n: int, *extra) -> list:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(str(root), barrier, results, i, *extra)) for i in range(n)]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_processes_racing_create_if_absent_have_exactly_one_winner(tmp_path: Path) -> None:
    for round_ in range(3):
        root = tmp_path / f"r{round_}"
        winners = [w for w in _run_processes(_contend_create, root, 6) if w is not None]
        assert len(winners) == 1
        assert LocalStore(root).get("leader") == f"worker-{winners[0]}".encode()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_processes_doing_cas_increments_lose_no_update(tmp_path: Path) -> None:
    LocalStore(tmp_path).put("counter", b"0")
    results = _run_processes(_increment, tmp_path, 4, 50)
    assert int(LocalStore(tmp_path).get("counter")) == sum(done for done, _ in results) == 200
    assert disk_entries(tmp_path) == ["counter"]
