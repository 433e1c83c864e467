"""The drain under failure: process deaths at every step of a chunk's commit, lost or reset consumer
groups, concurrent drains and bounded backlogs. Whatever happens, the store ends up holding every
offset exactly once, in files whose names never overlap, with no claim left behind.

Crashes are real process deaths: ``flywheel drain`` runs in a subprocess whose ledger or runner step
is patched to ``os._exit(137)`` on its Nth call, so nothing (no ``finally``, no consumer close, no
flush) runs after the crash point.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_plan, drain_topic, layout, limits_for
from flywheel.drain.ledger import Manifest
from flywheel.drain.reader import read_topic
from flywheel.drain.runner import TopicDrain
from flywheel.kafka_config import client_config
from flywheel.settings import Settings
from flywheel.specs import load_specs
from flywheel.storage import ObjectStore

from tests.fixtures.kafka_broker import REPO, unique

pytestmark = pytest.mark.integration

#: Two event times a minute: a 100-row chunk of one partition spans several event hours, so every
#: chunk is written as several files and a crash can fall between them.
RATE_PER_S = 1 / 30
N = 600
N_RACE = 400
FLUSH = 100
#: The crashing drain dies at its 5th chunk (of about 9).
CRASH_AT = 5

_DATA_NAME = re.compile(r"\+(\d+)\+(\d{20})-(\d{20})\.parquet$")


def _events(n: int, prefix: str = "e") -> list[dict]:
    return [e.features for e in event_stream(n, prefix=prefix, rate_per_s=RATE_PER_S)]


# -- what the store must look like --------------------------------------------------------------------


def _watermarks(settings: Settings, topic: str) -> dict[int, int]:
    """Kafka's high watermark of every partition (the topics are fresh: low is 0)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(client_config(settings, "consumer", **{"group.id": unique("fw-watermarks")}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in sorted(partitions)
        }
    finally:
        consumer.close()


def _ledger(store: ObjectStore, topic: str) -> tuple[list[str], dict[int, list[Manifest]], dict[int, int]]:
    """(intent keys, manifests by partition in offset order, checkpoint by partition)."""
    intents: list[str] = []
    manifests: dict[int, list[Manifest]] = {}
    checkpoints: dict[int, int] = {}
    for info in store.list(f"{layout.LEDGER_ROOT}/{topic}/"):
        partition = int(info.key.split("/")[-2])
        if info.key.endswith(".intent"):
            intents.append(info.key)
        elif info.key.endswith("checkpoint.json"):
            checkpoints[partition] = int(json.loads(store.get(info.key))["next_offset"])
        elif info.key.endswith(".json"):
            manifests.setdefault(partition, []).append(Manifest.from_bytes(store.get(info.key)))
    return intents, manifests, checkpoints


def _crashed_intent(store: ObjectStore, topic: str, intents: list[str]) -> str:
    """The claim whose chunk has files in the store: the one the crash interrupted."""
    written = {(p, s) for _, p, s, _ in _parquet_objects(store, layout.DATA_ROOT, topic)}
    hits = [i for i in intents if (int(i.split("/")[-2]), int(i.rsplit("/", 1)[1].split(".")[0])) in written]
    assert len(hits) == 1, (intents, sorted(written))
    return hits[0]


def _parquet_objects(store: ObjectStore, root: str, topic: str) -> list[tuple[str, int, int, int]]:
    """(key, partition, start, end) of every Parquet object under ``root/topic/``."""
    out = []
    for info in store.list(f"{root}/{topic}/"):
        match = _DATA_NAME.search(info.key)
        assert match, f"unexpected object {info.key!r} in the data area"
        out.append((info.key, int(match.group(1)), int(match.group(2)), int(match.group(3))))
    return out


def _assert_no_overlapping_objects(store: ObjectStore, root: str, topic: str) -> list[tuple[str, int, int, int]]:
    objects = _parquet_objects(store, root, topic)
    ranges: dict[int, set[tuple[int, int]]] = {}
    for key, partition, start, end in objects:
        assert start <= end, key
        ranges.setdefault(partition, set()).add((start, end))  # one chunk may span several event hours
        offsets = pq.read_table(pa.BufferReader(store.get(key)), columns=["_offset"]).column("_offset").to_pylist()
        assert offsets and min(offsets) >= start and max(offsets) <= end, f"{key} holds offsets outside its name"
    for partition, spans in ranges.items():
        ordered = sorted(spans)
        for (s1, e1), (s2, e2) in zip(ordered, ordered[1:], strict=False):
            assert e1 < s2, f"{root}/{topic} partition {partition}: objects {s1}-{e1} and {s2}-{e2} overlap"
    return objects


def assert_exactly_once(env: Any, topic: str, expected_ids: list[str]) -> None:
    """Every offset of every partition once; no overlapping, orphan or uncommitted objects."""
    store = env.store
    high = _watermarks(env.settings, topic)
    assert sum(high.values()) == len(expected_ids)

    table = read_topic(store, topic)
    assert table is not None
    ids = table.column("event_id").to_pylist()
    assert len(ids) == len(expected_ids), f"{len(ids)} rows for {len(expected_ids)} events"
    assert sorted(ids) == sorted(expected_ids)
    by_partition: dict[int, list[int]] = {}
    for p, o in zip(table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True):
        by_partition.setdefault(p, []).append(o)
    for p, h in high.items():
        assert sorted(by_partition.get(p, [])) == list(range(h)), f"partition {p}: gaps or duplicates"

    objects = _assert_no_overlapping_objects(store, layout.DATA_ROOT, topic)
    intents, manifests, checkpoints = _ledger(store, topic)
    assert intents == [], f"claims left behind: {intents}"
    referenced: set[str] = set()
    for p, h in high.items():
        chain = manifests.get(p, [])
        expected_start = 0
        for m in chain:  # contiguous, from the first offset to the end of the partition
            assert (m.start, m.partition, m.topic) == (expected_start, p, topic)
            assert m.next_offset == m.end + 1
            expected_start = m.next_offset
            for f in m.files:
                assert f["key"] not in referenced
                referenced.add(f["key"])
        assert expected_start == h, f"partition {p}: manifests stop at {expected_start}, the partition at {h}"
        # A shortcut only: it may lag behind (then the next run rolls forward), never run ahead.
        assert checkpoints.get(p, 0) in {m.start for m in chain} | {h}
    orphans = sorted({key for key, *_ in objects} - referenced)
    assert orphans == [], f"data objects no manifest accounts for: {orphans}"


# -- a drain that dies -----------------------------------------------------------------------------

#: Runs ``flywheel drain`` with one step patched to kill the process on its Nth call (argv: point, n,
#: then the CLI's own arguments). ``mid_files`` dies after the first file of the Nth chunk is written.
_CRASHING_DRAIN = r"""
import os, sys, threading
from flywheel.drain import chunk, ledger, runner

point, nth = sys.argv[1], int(sys.argv[2])
calls = {"n": 0, "armed": {}, "files": 0}  # armed: per worker thread, as each writes its own chunk

def die_on_nth(owner, name):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            os._exit(137)
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)

if point == "before_manifest":
    die_on_nth(ledger.PartitionLedger, "commit")
elif point == "before_checkpoint":
    die_on_nth(ledger.PartitionLedger, "advance_checkpoint")
elif point == "before_group_commit":
    die_on_nth(runner.TopicDrain, "_commit_group_offset")
elif point == "mid_files":
    write_rows, parquet_bytes = chunk.ChunkWriter.write_rows, chunk.drained_file_bytes
    def counting_write_rows(self, *args, **kwargs):
        calls["n"] += 1
        calls["armed"][threading.get_ident()] = calls["n"] == nth
        return write_rows(self, *args, **kwargs)
    def dying_parquet_bytes(table, *args):
        if calls["armed"].get(threading.get_ident()):
            calls["files"] += 1
            if calls["files"] == 2:
                os._exit(137)
        return parquet_bytes(table, *args)
    chunk.ChunkWriter.write_rows = counting_write_rows
    chunk.drained_file_bytes = dying_parquet_bytes
else:
    raise SystemExit(f"unknown crash point {point}")

from flywheel.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _process_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update({
        "FLYWHEEL_HOME": str(settings.home),
        "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLYWHEEL_STORE_URL": settings.store_url,
        "FLYWHEEL_SPECS_DIR": str(settings.specs_dir),
        "FLYWHEEL_GROUP_PREFIX": settings.group_prefix,
        "FLYWHEEL_BROKER_TIMEOUT_S": str(settings.broker_timeout_s),
    })
    optional = {"S3_ENDPOINT_URL": settings.s3_endpoint_url, "S3_REGION": settings.s3_region,
                "S3_ACCESS_KEY_ID": settings.s3_access_key, "S3_SECRET_ACCESS_KEY": settings.s3_secret_key}
    env.update({f"FLYWHEEL_{k}": v for k, v in optional.items() if v})
    return env


def crash_drain(env: Any, topic: str, point: str, nth: int, *, owner: str, flush_rows: int, workers: int = 1) -> None:
    """Run ``flywheel drain`` in a subprocess that dies at ``point`` on its ``nth`` occurrence.

    One worker by default: the tests then know exactly which chunks were in flight when it died (one
    being written, at most one more claimed). With more workers more chunks are in flight at once, so
    those tests only check the outcome (see test_crash_with_parallel_workers).
    """
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_DRAIN, point, str(nth), "drain", topic, "--owner", owner,
         "--flush-rows", str(flush_rows), "--workers", str(workers)],
        env=_process_env(env.settings), cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 137, f"the drain did not die at {point} #{nth}: rc={proc.returncode}\n{proc.stderr}"


# -- crashes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "rerun"), [
    ("local", "same_owner"), ("local", "other_owner_after_lease"), ("s3", "same_owner"),
])
def test_crash_after_files_before_manifest_replays_the_same_objects(make_env, backend, rerun):
    env = make_env(backend)
    topic = env.spec.topics.features
    events = _events(N)
    env.produce_json(topic, events)

    crash_drain(env, topic, "before_manifest", CRASH_AT, owner="crasher", flush_rows=FLUSH)

    intents, manifests, _ = _ledger(env.store, topic)
    # The crashed chunk (files written, no manifest) and perhaps the next one, claimed while it was written.
    assert 1 <= len(intents) <= 2, intents
    crashed = _crashed_intent(env.store, topic, intents)
    partition = int(crashed.split("/")[-2])
    start = int(crashed.rsplit("/", 1)[1].split(".")[0])
    assert sum(len(v) for v in manifests.values()) == CRASH_AT - 1
    written = sorted(key for key, p, s, _ in _parquet_objects(env.store, layout.DATA_ROOT, topic)
                     if (p, s) == (partition, start))
    assert written, "the crash point was meant to fall after the chunk's files were written"

    if rerun == "same_owner":
        # Another chunk size than the dead run's: the replay must still adopt the pinned range.
        summary = drain_topic(env.settings, topic, owner="crasher", flush_rows=70)
        assert summary["busy"] == {}
    else:
        # Another drainer respects the dead one's claim while its lease runs...
        summary = drain_topic(env.settings, topic, owner="rescuer", flush_rows=130, lease_s=60)
        assert summary["busy"].get(str(partition)) == "crasher"
        assert env.store.exists(crashed)
        # ...and takes the chunk over, pinned range and all, once the lease has expired.
        time.sleep(0.6)
        summary = drain_topic(env.settings, topic, owner="rescuer", flush_rows=130, lease_s=0.5)
        assert summary["busy"] == {}
    assert summary["partitions"][str(partition)] == _watermarks(env.settings, topic)[partition]

    replayed = next(m for m in _ledger(env.store, topic)[1][partition] if m.start == start)
    assert sorted(f["key"] for f in replayed.files) == written, "the replay did not rewrite the same objects"
    assert_exactly_once(env, topic, [e["event_id"] for e in events])
    again = drain_topic(env.settings, topic, owner="rescuer")
    assert (again["rows"], again["files"], again["busy"]) == (0, 0, {})


def test_crash_between_the_files_of_one_chunk(make_env):
    env = make_env()
    topic = env.spec.topics.features
    events = _events(N)
    env.produce_json(topic, events)

    crash_drain(env, topic, "mid_files", CRASH_AT, owner="crasher", flush_rows=FLUSH)
    intents, _, _ = _ledger(env.store, topic)
    assert 1 <= len(intents) <= 2, intents
    crashed = _crashed_intent(env.store, topic, intents)
    partition = int(crashed.split("/")[-2])
    start = int(crashed.rsplit("/", 1)[1].split(".")[0])
    partial = [k for k, p, s, _ in _parquet_objects(env.store, layout.DATA_ROOT, topic) if (p, s) == (partition, start)]
    assert len(partial) == 1, partial

    drain_topic(env.settings, topic, owner="crasher", flush_rows=FLUSH)
    replayed = next(m for m in _ledger(env.store, topic)[1][partition] if m.start == start)
    assert len(replayed.files) > 1 and partial[0] in {f["key"] for f in replayed.files}
    assert_exactly_once(env, topic, [e["event_id"] for e in events])


@pytest.mark.parametrize("point", ["before_checkpoint", "before_group_commit"])
def test_crash_after_the_manifest(make_env, point):
    """After the commit point: the chunk counts, the rerun rolls the checkpoint forward and goes on."""
    env = make_env()
    topic = env.spec.topics.features
    events = _events(N)
    env.produce_json(topic, events)

    crash_drain(env, topic, point, CRASH_AT, owner="crasher", flush_rows=FLUSH)
    intents, manifests, checkpoints = _ledger(env.store, topic)
    assert sum(len(v) for v in manifests.values()) == CRASH_AT
    if point == "before_checkpoint":
        # the last manifest exists, but the checkpoint of its partition still points at its start
        stale = [p for p, chain in manifests.items() if checkpoints.get(p, 0) < chain[-1].next_offset]
        assert len(stale) == 1
        # its claim was removed before the checkpoint was to move; claims run one chunk ahead, so others may exist
        stale_start = manifests[stale[0]][-1].start
        assert len(intents) <= 2 and not any(i.endswith(f"/{stale[0]:05d}/{stale_start:020d}.intent") for i in intents)
    else:
        assert len(intents) <= 1  # at most the chunk claimed after the last committed one

    # The dead run may also have claimed its next chunk (claims run one chunk ahead of the writes):
    # another drainer takes that over once the lease has expired.
    time.sleep(0.6)
    summary = drain_topic(env.settings, topic, owner="other", flush_rows=FLUSH, lease_s=0.5)
    assert summary["rows"] == N - sum(m.rows for chain in manifests.values() for m in chain)
    assert summary["busy"] == {}
    # A claim left on a committed chunk is harmless here (test_no_claim_survives_... is about it): drop it.
    leftover, committed, _ = _ledger(env.store, topic)
    for key in leftover:
        partition, start = int(key.split("/")[-2]), int(key.rsplit("/", 1)[1].split(".")[0])
        assert start in {m.start for m in committed[partition]}, f"{key} claims an uncommitted chunk"
        env.store.delete(key)
    assert_exactly_once(env, topic, [e["event_id"] for e in events])


@pytest.mark.parametrize("point", ["mid_files", "before_manifest", "before_checkpoint"])
def test_crash_with_parallel_workers(make_env, point):
    """Two workers, so two chunks (of different partitions) are being written when the process dies,
    and the other worker may have got further, or not as far: the rerun still ends exactly once."""
    env = make_env()
    topic = env.spec.topics.features
    events = _events(N)
    env.produce_json(topic, events)

    crash_drain(env, topic, point, CRASH_AT, owner="crasher", flush_rows=FLUSH, workers=2)
    intents, manifests, _ = _ledger(env.store, topic)
    committed = sum(len(v) for v in manifests.values())
    assert CRASH_AT - 2 <= committed <= CRASH_AT + 2, committed
    # At most one chunk per worker in flight, plus the one claimed when the crash came.
    assert len(intents) <= 3, intents

    time.sleep(0.6)
    summary = drain_topic(env.settings, topic, owner="other", flush_rows=FLUSH, lease_s=0.5, workers=2)
    assert summary["busy"] == {}
    leftover, chains, _ = _ledger(env.store, topic)
    for key in leftover:  # a claim the dead run left on a chunk it had committed: harmless, dropped here
        partition, start = int(key.split("/")[-2]), int(key.rsplit("/", 1)[1].split(".")[0])
        assert start in {m.start for m in chains[partition]}, f"{key} claims an uncommitted chunk"
        env.store.delete(key)
    assert_exactly_once(env, topic, [e["event_id"] for e in events])


class _Crash(BaseException):
    """Stands for the process dying (not an Exception, so nothing in the drain handles it)."""


def test_no_claim_survives_a_crash_between_manifest_and_checkpoint(make_env, monkeypatch):
    from flywheel.drain.ledger import PartitionLedger

    env = make_env()
    topic = env.spec.topics.features
    events = _events(200)  # one chunk per partition: the crash hits a partition's last chunk
    env.produce_json(topic, events)
    original = PartitionLedger.advance_checkpoint
    calls = []

    def dying(self, next_offset):
        calls.append(next_offset)
        if len(calls) == 3:
            raise _Crash
        return original(self, next_offset)

    monkeypatch.setattr(PartitionLedger, "advance_checkpoint", dying)
    with pytest.raises(_Crash):
        drain_topic(env.settings, topic, owner="crasher", flush_rows=FLUSH)
    monkeypatch.setattr(PartitionLedger, "advance_checkpoint", original)
    drain_topic(env.settings, topic, owner="crasher", flush_rows=FLUSH)
    intents, _, checkpoints = _ledger(env.store, topic)
    assert intents == [], "a committed chunk's claim was never removed"
    assert checkpoints == _watermarks(env.settings, topic), "the checkpoint was not rolled forward"


# -- the consumer group is not the source of truth ----------------------------------------------------


def _group_offsets(settings: Settings, topic: str) -> dict[int, int]:
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(settings, "admin"))
    group = f"{settings.group_prefix}-drain"
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=15)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic and tp.offset >= 0}


def test_deleted_or_rewound_consumer_group_causes_no_duplicates(make_env):
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    env = make_env()
    topic = env.spec.topics.features
    group = f"{env.settings.group_prefix}-drain"
    admin = AdminClient(client_config(env.settings, "admin"))
    events = _events(N)
    env.produce_json(topic, events)

    first = drain_topic(env.settings, topic, flush_rows=FLUSH, max_records=300)
    assert 0 < first["rows"] < N
    assert _group_offsets(env.settings, topic) == {int(p): o for p, o in first["partitions"].items() if o}

    admin.delete_consumer_groups([group], request_timeout=15)[group].result(timeout=15)
    assert _group_offsets(env.settings, topic) == {}
    second = drain_topic(env.settings, topic, flush_rows=FLUSH)
    assert first["rows"] + second["rows"] == N
    assert_exactly_once(env, topic, [e["event_id"] for e in events])
    high = _watermarks(env.settings, topic)
    moved = {int(p) for p, o in second["partitions"].items() if o > int(first["partitions"][p])}
    assert moved and {p: o for p, o in _group_offsets(env.settings, topic).items() if p in moved} == {
        p: high[p] for p in moved}  # lag monitoring caught up where the drain moved

    # Rewind the group to the beginning: the ledger, not the group, says where to resume.
    rewind = [TopicPartition(topic, p, 0) for p in high]
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, rewind)])[group].result(timeout=15)
    assert set(_group_offsets(env.settings, topic).values()) == {0}
    third = drain_topic(env.settings, topic, flush_rows=FLUSH)
    assert (third["rows"], third["files"]) == (0, 0)

    more = _events(300, prefix="late")
    env.produce_json(topic, more)
    fourth = drain_topic(env.settings, topic, flush_rows=FLUSH)
    assert fourth["rows"] == 300
    assert_exactly_once(env, topic, [e["event_id"] for e in events + more])


def test_lag_monitoring_recovers_after_the_group_is_deleted(make_env):
    from confluent_kafka.admin import AdminClient

    env = make_env()
    topic = env.spec.topics.features
    group = f"{env.settings.group_prefix}-drain"
    env.produce_json(topic, _events(200))
    drain_topic(env.settings, topic, flush_rows=FLUSH)
    high = _watermarks(env.settings, topic)
    assert _group_offsets(env.settings, topic) == high
    admin = AdminClient(client_config(env.settings, "admin"))
    admin.delete_consumer_groups([group], request_timeout=15)[group].result(timeout=15)

    again = drain_topic(env.settings, topic, flush_rows=FLUSH)
    assert again["rows"] == 0
    assert _group_offsets(env.settings, topic) == high, "lag is reported for a fully drained topic"


# -- concurrent drains -----------------------------------------------------------------------------


def _in_threads(*calls: Any) -> list[tuple[Any, BaseException | None]]:
    barrier = threading.Barrier(len(calls))
    results: list[tuple[Any, BaseException | None]] = [(None, None)] * len(calls)

    def run(i: int, call: Any) -> None:
        barrier.wait()
        try:
            results[i] = (call(), None)
        except BaseException as exc:  # reported by the test
            results[i] = (None, exc)

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_drains_racing_on_one_topic(make_env, backend):
    env = make_env(backend)
    topic = env.spec.topics.features
    events = _events(N_RACE)
    env.produce_json(topic, events)

    results = _in_threads(
        lambda: drain_topic(env.settings, topic, owner="racer-a", flush_rows=25),
        lambda: drain_topic(env.settings, topic, owner="racer-b", flush_rows=25),
    )
    for _, exc in results:
        assert exc is None, repr(exc)
    summaries = [r for r, _ in results]
    assert sum(s["rows"] for s in summaries) == N_RACE  # a chunk is counted by the one drain that committed it
    for s in summaries:
        assert set(s["busy"].values()) <= {"racer-a", "racer-b"}
    assert_exactly_once(env, topic, [e["event_id"] for e in events])
    leftover = drain_topic(env.settings, topic, owner="racer-c", flush_rows=25)
    assert (leftover["rows"], leftover["busy"]) == (0, {})


class _GatedStore:
    """The store, except that the first claim waits until the test lets it through."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.waiting, self.release = threading.Event(), threading.Event()

    def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        if key.endswith(".intent") and not self.release.is_set():
            self.waiting.set()
            assert self.release.wait(60)
        return self.inner.put(key, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_slow_drain_with_another_chunk_size_never_overlaps_a_committed_chunk(make_env):
    """Drain B reads where every partition stands, then stalls (GC pause, slow store) before its first
    claim; meanwhile drain A drains the whole topic with another chunk size. B must notice."""
    env = make_env()
    topic = env.spec.topics.features
    events = _events(800)
    env.produce_json(topic, events)

    schema, spec = drain_plan(load_specs(env.settings.specs_dir))[topic]
    gated = _GatedStore(env.settings.open_store())
    slow = TopicDrain(env.settings, schema, gated, limits_for(spec, flush_rows=130), owner="slow")  # type: ignore[arg-type]
    outcome: dict[str, Any] = {}

    def run_slow() -> None:
        try:
            outcome["result"] = slow.run()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run_slow, daemon=True)
    thread.start()
    assert gated.waiting.wait(60), "the slow drain never reached its first claim"
    fast = drain_topic(env.settings, topic, owner="fast", flush_rows=FLUSH)
    assert fast["rows"] == 800
    gated.release.set()
    thread.join(60)

    _assert_no_overlapping_objects(env.store, layout.DATA_ROOT, topic)
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["result"].rows == 0
    assert_exactly_once(env, topic, [e["event_id"] for e in events])


# -- bounded runs ----------------------------------------------------------------------------------


def _runs_until_idle(env: Any, topic: str, limit: int, **overrides: Any) -> Iterator[dict]:
    for _ in range(limit):
        summary = drain_topic(env.settings, topic, **overrides)
        yield summary
        if summary["rows"] == 0:
            return
    raise AssertionError(f"the drain did not catch up within {limit} runs")


def test_backlog_is_drained_in_bounded_runs(make_env):
    env = make_env()
    topic = env.spec.topics.features
    n, budget = 1000, 300
    events = _events(n)
    env.produce_json(topic, events)

    summaries = list(_runs_until_idle(env, topic, 10, max_records=budget, flush_rows=FLUSH))
    rows = [s["rows"] for s in summaries]
    assert rows[-1] == 0 and sum(rows) == n
    assert all(0 < r <= budget + FLUSH for r in rows[:-1]), rows  # one chunk of slack at most
    assert len(rows) - 1 >= n // (budget + FLUSH)
    assert_exactly_once(env, topic, [e["event_id"] for e in events])

    started = time.monotonic()
    idle = drain_topic(env.settings, topic, max_records=budget, flush_rows=FLUSH)
    assert (idle["rows"], idle["files"]) == (0, 0)
    empty = drain_topic(env.settings, env.spec.topics.labels)  # a topic nothing was ever produced to
    assert (empty["rows"], empty["rejected"], empty["chunks"]) == (0, 0, 0)
    assert time.monotonic() - started < 5
