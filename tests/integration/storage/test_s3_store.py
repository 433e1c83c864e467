"""The ObjectStore contract, run against S3Store on a real S3 HTTP server (moto) and against LocalStore,
followed by what only S3 can get wrong: the network, the bucket and the translation of S3 errors.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from flywheel.errors import ObjectNotFound, PreconditionFailed, StoreError, StoreUnavailable
from flywheel.storage import ObjectStore, open_store

from tests.fixtures.s3_server import TEST_CREDENTIALS, new_bucket, s3_client

pytestmark = pytest.mark.integration

BAD_KEYS = ["", "/abs", "../up", "a/../../up", "a/./b", "a//b", "a/", "a\\b", "a\x00b", ".flywheel-locks/x"]


# --------------------------------------------------------------------------------------------------
# The contract: every test below runs once per backend.


def test_round_trip_and_metadata(store: ObjectStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    etag = store.put("dir/obj.bin", b"\x00\x01payload")
    assert store.get("dir/obj.bin") == b"\x00\x01payload"
    assert store.get_with_etag("dir/obj.bin") == (b"\x00\x01payload", etag)
    info = store.head("dir/obj.bin")
    assert info is not None
    assert (info.key, info.size, info.etag) == ("dir/obj.bin", 9, etag)
    assert info.modified.tzinfo is not None and info.modified.utcoffset() == timedelta(0)
    assert before <= info.modified <= datetime.now(UTC) + timedelta(seconds=5)
    assert store.exists("dir/obj.bin")


def test_empty_object_and_unicode_key(store: ObjectStore) -> None:
    key = "données/été 2024/a b+c#d?.txt"
    store.put(key, b"")
    assert store.get(key) == b""
    assert [i.key for i in store.list()] == [key]


def test_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope")
    with pytest.raises(ObjectNotFound):
        store.get_with_etag("no/pe")
    assert store.head("nope") is None
    assert not store.exists("nope")
    store.delete("nope")  # no error


def test_overwrite_changes_content_and_etag(store: ObjectStore) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two")
    assert first != second
    assert store.get_with_etag("k") == (b"two", second)


def test_create_if_absent(store: ObjectStore) -> None:
    store.put("lease", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("lease", b"second", if_none_match=True)
    assert store.get("lease") == b"first"
    store.delete("lease")
    store.put("lease", b"third", if_none_match=True)
    assert store.get("lease") == b"third"


def test_compare_and_swap(store: ObjectStore) -> None:
    e1 = store.put("ptr", b"v1")
    e2 = store.put("ptr", b"v2", if_match=e1)
    with pytest.raises(PreconditionFailed):
        store.put("ptr", b"v3", if_match=e1)  # stale
    with pytest.raises(PreconditionFailed):
        store.put("ptr", b"v3", if_match='"not-an-etag"')
    assert store.get_with_etag("ptr") == (b"v2", e2)


def test_compare_and_swap_on_absent_key_fails(store: ObjectStore) -> None:
    etag = store.put("gone", b"x")
    store.delete("gone")
    with pytest.raises(PreconditionFailed):
        store.put("gone", b"y", if_match=etag)
    assert not store.exists("gone")


def test_both_conditions_is_a_usage_error(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.put("k", b"x", if_none_match=True, if_match="e")


def test_list_is_recursive_sorted_and_filtered_by_string_prefix(store: ObjectStore) -> None:
    assert list(store.list()) == []
    keys = ["b", "a/x", "a-c", "a/b/c", "ab", "z/y/x", "a/b.txt"]
    etags = {k: store.put(k, k.encode()) for k in keys}
    listed = list(store.list())
    assert [i.key for i in listed] == sorted(keys)  # "a-c" < "a/b.txt": plain string order
    assert {i.key: (i.size, i.etag) for i in listed} == {k: (len(k), etags[k]) for k in keys}
    assert [i.key for i in store.list("a/")] == ["a/b.txt", "a/b/c", "a/x"]
    assert [i.key for i in store.list("a")] == ["a-c", "a/b.txt", "a/b/c", "a/x", "ab"]
    assert [i.key for i in store.list("a/b")] == ["a/b.txt", "a/b/c"]
    assert [i.key for i in store.list("z/y/x")] == ["z/y/x"]
    assert list(store.list("nothing/")) == []


def test_delete(store: ObjectStore) -> None:
    store.put("d/1", b"1")
    store.put("d/2", b"2")
    store.delete("d/1")
    store.delete("d/1")
    assert [i.key for i in store.list()] == ["d/2"]
    with pytest.raises(ObjectNotFound):
        store.get("d/1")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_refused_everywhere(store: ObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.get_with_etag(key),
        lambda: store.head(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.uri(key),
    ):
        with pytest.raises(StoreError, match="invalid object key"):
            call()
    with pytest.raises(StoreError, match="invalid object prefix"):
        list(store.list("../"))
    assert list(store.list()) == []


def test_uri_names_the_object(store: ObjectStore) -> None:
    uri = store.uri("a/b.parquet")
    assert uri.startswith(store.url + "/") and uri.endswith("/a/b.parquet")


@pytest.mark.timeout(120)
def test_concurrent_create_if_absent_has_exactly_one_winner(store: ObjectStore) -> None:
    n = 8
    barrier = threading.Barrier(n)

    def contend(i: int) -> int | None:
        barrier.wait()
        try:
            store.put("leader", f"worker-{i}".encode(), if_none_match=True)
            return i
        except PreconditionFailed:
            return None

    with ThreadPoolExecutor(n) as pool:
        winners = [i for i in pool.map(contend, range(n)) if i is not None]
    assert len(winners) == 1
    assert store.get("leader") == f"worker-{winners[0]}".encode()


@pytest.mark.timeout(120)
def test_concurrent_cas_increments_lose_no_update(store: ObjectStore) -> None:
    store.put("counter", b"0")
    threads, increments = 4, 10
    barrier = threading.Barrier(threads)

    def increment(_: int) -> tuple[int, int]:
        barrier.wait()
        done = conflicts = 0
        while done < increments:
            data, etag = store.get_with_etag("counter")
            try:
                store.put("counter", str(int(data) + 1).encode(), if_match=etag)
                done += 1
            except PreconditionFailed:
                conflicts += 1
        return done, conflicts

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(increment, range(threads)))
    assert int(store.get("counter")) == sum(done for done, _ in results) == threads * increments


# --------------------------------------------------------------------------------------------------
# S3 only.


def test_the_server_itself_enforces_conditional_writes(s3_endpoint: str) -> None:
    """Guards the premise of S3Store: the conditions are evaluated by the server, not by us."""
    client, bucket = s3_client(s3_endpoint), new_bucket(s3_endpoint)
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")["ETag"]
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(ClientError) as caught:
            client.put_object(Bucket=bucket, Key="k", Body=b"2", **condition)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    client.put_object(Bucket=bucket, Key="k", Body=b"3", IfMatch=etag)
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"3"


def test_keys_are_relative_to_the_prefix(s3_endpoint: str, make_s3_store) -> None:
    bucket = new_bucket(s3_endpoint)
    inner, outer = make_s3_store(bucket, "team/a"), make_s3_store(bucket)
    inner.put("x/y", b"1")
    outer.put("team/ab", b"not under team/a/")
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key="team/a/folder/", Body=b"")  # console "folder"
    assert [i.key for i in inner.list()] == ["x/y"]
    assert [i.key for i in outer.list()] == ["team/a/x/y", "team/ab"]
    assert outer.get("team/a/x/y") == b"1"
    assert inner.uri("x/y") == f"s3://{bucket}/team/a/x/y"
    assert inner.url == f"s3://{bucket}/team/a"


def test_open_store_s3_url(s3_endpoint: str) -> None:
    bucket = new_bucket(s3_endpoint)
    store = open_store(f"s3://{bucket}/some/prefix/", endpoint_url=s3_endpoint, **TEST_CREDENTIALS)
    assert store.url == f"s3://{bucket}/some/prefix"
    store.put("k", b"v")
    assert s3_client(s3_endpoint).get_object(Bucket=bucket, Key="some/prefix/k")["Body"].read() == b"v"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unreachable_endpoint_fails_fast_with_store_unavailable() -> None:
    from flywheel.storage import S3Store

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3Store("some-bucket", endpoint_url=endpoint, **TEST_CREDENTIALS)
    for call in (lambda: store.get("k"), lambda: store.put("k", b"v"), lambda: list(store.list())):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert time.monotonic() - started < 10
        assert endpoint in str(caught.value) and "some-bucket" in str(caught.value)


def test_missing_bucket_is_store_unavailable_naming_the_bucket(make_s3_store) -> None:
    store = make_s3_store("flywheel-no-such-bucket")
    for call in (
        lambda: store.put("k", b"v"),
        lambda: store.put("k", b"v", if_none_match=True),
        lambda: store.get("k"),
        lambda: store.head("k"),  # a bare 404, told apart from a missing key by a bucket check
        lambda: store.exists("k"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
    ):
        with pytest.raises(StoreUnavailable, match="flywheel-no-such-bucket"):
            call()


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("PreconditionFailed", 412, PreconditionFailed),
        ("ConditionalRequestConflict", 409, PreconditionFailed),
        ("AccessDenied", 403, StoreUnavailable),
        ("InvalidAccessKeyId", 403, StoreUnavailable),
        ("NoSuchBucket", 404, StoreUnavailable),
        ("SlowDown", 503, StoreUnavailable),
        ("InvalidRequest", 400, StoreError),
    ],
)
def test_s3_errors_are_translated(code: str, status: int, error: type[Exception]) -> None:
    """Codes moto never sends (409 ConditionalRequestConflict, throttling) still map correctly."""
    from flywheel.storage import S3Store

    store = S3Store("bkt", endpoint_url="http://127.0.0.1:1", **TEST_CREDENTIALS)
    with Stubber(store._client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(error) as caught:
            store.put("k", b"v", if_match='"e"')
    assert type(caught.value) is error
    assert isinstance(caught.value.__cause__, ClientError)  # not a stub or retry artefact


def test_cas_on_absent_key_maps_404_to_precondition_but_get_to_not_found() -> None:
    from flywheel.storage import S3Store

    store = S3Store("bkt", endpoint_url="http://127.0.0.1:1", **TEST_CREDENTIALS)
    with Stubber(store._client) as stub:
        stub.add_client_error("put_object", service_error_code="NoSuchKey", http_status_code=404)
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        with pytest.raises(PreconditionFailed):
            store.put("k", b"v", if_match='"e"')
        with pytest.raises(ObjectNotFound):
            store.get("k")
