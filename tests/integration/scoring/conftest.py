"""Shared helpers for the scorer's integration tests.

Preparing a champion (6000 demo events and labels produced, drained, trained, validated, promoted)
takes a quarter of a minute, so the delivery tests build it once per session (``champion_template``)
and give every test a copy (``scoring_env``): the template's model store copied to a fresh directory,
and a spec of the same model name pointing at fresh topics, with its own consumer-group prefix,
model-events topic and metrics topic. Tests therefore never share a topic, a group or a champion.

Stateful helpers are fixtures (``start_scorer`` kills what a test left running, ``prediction_log``
closes its consumers); plain functions and classes are imported by the tests from
``tests.integration.scoring.conftest``. ``ScorerProcess`` runs ``python -m flywheel score`` for the
tests that terminate or kill a real process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.kafka_config import client_config, ensure_topics
from flywheel.models.events import publish_model_event
from flywheel.models.store import ModelStore
from flywheel.settings import Settings
from flywheel.specs import load_spec
from flywheel.training import pipeline

from tests.fixtures.stores import EnvFactory, FlywheelEnv, write_spec

if TYPE_CHECKING:  # defined in tests/integration/conftest.py, which imports this module
    from tests.integration.conftest import ChampionTemplate

START = datetime(2026, 11, 20, tzinfo=UTC)
TRAINING_AS_OF = START + timedelta(hours=2)
#: Live events are a day after the training data, so their ids and times never clash with it.
LIVE_START = START + timedelta(days=1)


def wait_until(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str],
               interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


# -- preparing a champion --------------------------------------------------------------------------


def produce_training_data(env: FlywheelEnv) -> None:
    events = list(event_stream(6000, start=START, rate_per_s=2, seed=5))
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events])
    drain_topic(env.settings, env.spec.topics.features)
    drain_topic(env.settings, env.spec.topics.labels)


def promote_new_version(env: FlywheelEnv) -> int:
    """Train a challenger on the drained data, validate it and promote it; its version number."""
    trained = pipeline.train_challenger(env.settings, env.spec, as_of=TRAINING_AS_OF)
    pipeline.validate_challenger(env.settings, env.spec, trained["version"])
    outcome = pipeline.promote_or_reject(env.settings, env.spec, trained["version"])
    assert outcome["status"] == "promoted", outcome
    return trained["version"]


@pytest.fixture
def champion_env(make_env: EnvFactory) -> Callable[..., FlywheelEnv]:
    """``champion_env(**spec_changes)``: a fresh environment whose features topic holds the 6000
    training events and whose champion is v1."""

    def build(**changes: object) -> FlywheelEnv:
        env = make_env(**changes)
        produce_training_data(env)
        assert promote_new_version(env) == 1
        return env

    return build


ScoringEnvFactory = Callable[..., FlywheelEnv]


@pytest.fixture
def scoring_env(champion_template: ChampionTemplate, tmp_path: Path) -> ScoringEnvFactory:
    """``scoring_env(**spec_changes)``: a copy of the template (champion v1, candidate v2) on fresh,
    empty topics. The model events and metrics topics are this environment's own."""

    def build(**changes: object) -> FlywheelEnv:
        tag = uuid.uuid4().hex[:8]
        name = champion_template.name
        base = f"{name}-{tag}"
        home = tmp_path / f"env-{tag}"
        store_dir = home / "store"
        shutil.copytree(champion_template.store_dir, store_dir)
        specs_dir = home / "specs"
        topics = {kind: f"{base}.{kind}" for kind in ("features", "labels", "predictions")}
        write_spec(specs_dir, name, topics=topics, **changes)
        settings = champion_template.settings.with_overrides(
            home=home, store_url=store_dir.as_uri(), specs_dir=specs_dir, group_prefix=f"fw-{base}",
            model_events_topic=f"{base}.model-events", metrics_topic=f"{base}.metrics")
        spec = load_spec(specs_dir / f"{name}.yaml")
        ensure_topics(settings, [*spec.drained_topics, f"{spec.topics.features}.dlq"], partitions=4)
        ensure_topics(settings, [settings.model_events_topic], partitions=1, compacted=[settings.model_events_topic])
        ensure_topics(settings, [settings.metrics_topic], partitions=1)
        wait_for_topics(settings, [*spec.drained_topics, settings.model_events_topic])
        return FlywheelEnv(settings, spec, settings.open_store())

    return build


def wait_for_topics(settings: Settings, topics: Iterable[str], timeout: float = 15) -> None:
    """Until a client's metadata shows each topic with its partitions: a topic created a moment ago can
    still be unknown to the next client that asks (see test_watcher_sees_events_of_a_topic_created_later)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "inspect-metadata"})
    try:
        for topic in topics:
            wait_until(lambda t=topic: consumer.list_topics(t, timeout=5).topics[t].partitions, timeout,
                       f"topic {topic} to show in the metadata")
    finally:
        consumer.close()


def cli_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a ``python -m flywheel`` subprocess needs to see exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update({
        "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FLYWHEEL_STORE_URL": settings.store_url,
        "FLYWHEEL_SPECS_DIR": str(settings.specs_dir),
        "FLYWHEEL_GROUP_PREFIX": settings.group_prefix,
        "FLYWHEEL_HOME": str(settings.home),
        "FLYWHEEL_MODEL_EVENTS_TOPIC": settings.model_events_topic,
        "FLYWHEEL_METRICS_TOPIC": settings.metrics_topic,
        "FLYWHEEL_BROKER_TIMEOUT_S": str(settings.broker_timeout_s),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


# -- extra versions ----------------------------------------------------------------------------------


def copy_version(env: FlywheelEnv, source: int, *, model_text: bytes | None = None, **metadata_changes: Any) -> int:
    """A new version holding ``source``'s model file (or ``model_text``) and metadata (with changes): a
    quick good version, or with another feature schema a bad one. (Training needs the drained data of
    the spec's topics.)"""
    models = ModelStore(env.store)
    meta = models.get_version(env.spec.name, source).metadata
    meta = {k: v for k, v in meta.items() if k not in ("model", "version", "files", "sha256", "location")}
    version = models.claim_version(env.spec.name, owner="test")
    models.write_version(env.spec.name, version, model_text or models.load_file(env.spec.name, source),
                         {**meta, **metadata_changes},
                         extra_files={"reference.parquet": models.load_file(env.spec.name, source, "reference.parquet")})
    return version


def model_variant(text: bytes) -> bytes:
    """The same model with the last digit of its first leaf value changed: another file (another sha256,
    so nothing cached for it), still a valid model of the same byte length (the header's tree_sizes)."""
    start = text.index(b"leaf_value=") + len(b"leaf_value=")
    end = start + re.search(rb"[ \n]", text[start:]).start()  # type: ignore[union-attr]
    last = text[end - 1:end]
    assert last.isdigit(), text[start:end]
    changed = b"7" if last != b"7" else b"3"
    return text[:end - 1] + changed + text[end:]


def force_champion(env: FlywheelEnv, version: int) -> None:
    """Point the champion at ``version`` without any gate, and announce it, as a bad actor or bug could
    (or as ``promote_or_reject`` does after its gates)."""
    models = ModelStore(env.store)
    _, etag = models.champion_with_etag(env.spec.name)
    previous = models.set_champion(env.spec.name, version, expected_etag=etag, action="promote").previous
    publish_model_event(env.settings, pipeline.model_event(models, env.spec.name, version, "promote", previous, {}))


def model_event_ms(env: FlywheelEnv, version: int) -> int:
    """The broker timestamp of the model event announcing ``version``."""
    return [m for m in read_topic(env.settings.kafka_bootstrap, env.settings.model_events_topic)
            if orjson.loads(m.value())["version"] == version][-1].timestamp()[1]


# -- reading topics --------------------------------------------------------------------------------


class TopicReader:
    """Reads a whole topic from the start, incrementally: ``catch_up()`` returns what is new since the
    last call, up to the end each partition had when it was called. A read_committed reader gets past an
    open transaction only when it is committed or aborted."""

    def __init__(self, bootstrap: str, topic: str, *, committed: bool = True) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"inspect-{uuid.uuid4().hex[:8]}",
                                  "enable.partition.eof": False, "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                  "isolation.level": "read_committed" if committed else "read_uncommitted"})
        partitions = sorted(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        assert partitions, f"topic {topic} does not exist"
        self.partitions = [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.messages: list[Any] = []

    def _behind(self, ends: dict[int, int]) -> dict[int, int]:
        # The position moves past transaction markers too, so it reaches the end offset exactly.
        positions = {tp.partition: tp.offset for tp in self.consumer.position(self.partitions)}
        return {p: end for p, end in ends.items() if end > 0 and positions[p] < end}

    def catch_up(self, timeout: float = 20.0, *, complete: bool = True) -> list[Any]:
        """New messages up to the partitions' current ends; if that takes more than ``timeout``: fail, or
        with ``complete=False`` return what there is."""
        ends = {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in self.partitions}
        new: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            new.extend(m for m in self.consumer.consume(5000, 0.05) if not m.error())
            behind = self._behind(ends)
            if not behind:
                break
            if time.monotonic() > deadline:
                if complete:
                    raise TimeoutError(f"{self.topic}: partitions {behind} not read to their end in {timeout:g}s")
                break
        self.messages.extend(new)
        return new

    def close(self) -> None:
        self.consumer.close()


def read_topic(bootstrap: str, topic: str, *, committed: bool = True) -> list[Any]:
    reader = TopicReader(bootstrap, topic, committed=committed)
    try:
        return reader.catch_up()
    finally:
        reader.close()


@pytest.fixture
def read_all() -> Callable[[str, str], list[Any]]:
    """``read_all(bootstrap, topic)``: every message of the topic, as a read_committed consumer sees it."""
    return read_topic


class PredictionLog:
    """The predictions topic as read so far, indexed by event id."""

    def __init__(self, env: FlywheelEnv, *, committed: bool = True) -> None:
        self.reader = TopicReader(env.settings.kafka_bootstrap, env.spec.topics.predictions, committed=committed)
        self.key_field = env.spec.key_field
        self.values: list[dict[str, Any]] = []
        self.by_id: dict[str, list[dict[str, Any]]] = {}

    def refresh(self, *, complete: bool = True) -> PredictionLog:
        """Read what is new; ``complete=False`` for polling, where an open transaction may hold it up."""
        for m in self.reader.catch_up(timeout=20 if complete else 2, complete=complete):
            value = orjson.loads(m.value())
            self.values.append(value)
            self.by_id.setdefault(value[self.key_field], []).append(value)
        return self

    def wait_for(self, ids: Iterable[str], timeout: float) -> PredictionLog:
        wanted = set(ids)
        wait_until(lambda: wanted <= self.refresh(complete=False).by_id.keys(), timeout,
                   lambda: f"predictions of {len(wanted - self.by_id.keys())} of {len(wanted)} events")
        return self

    def missing(self, ids: Iterable[str]) -> set[str]:
        return set(ids) - self.by_id.keys()

    def duplicated(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.by_id.items() if len(v) > 1}

    def close(self) -> None:
        self.reader.close()


@pytest.fixture
def prediction_log() -> Iterator[Callable[..., PredictionLog]]:
    logs: list[PredictionLog] = []

    def make(env: FlywheelEnv, *, committed: bool = True) -> PredictionLog:
        log = PredictionLog(env, committed=committed)
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()


def committed_offsets(settings: Settings, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1001: none), read without joining the group."""
    # read_uncommitted: a read_committed consumer asks for stable offsets only (KIP-447) and waits, until its
    # timeout, while a killed exactly-once member's transaction still holds pending ones.
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id,
                         "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        for attempt in range(3):  # the coordinator may be busy a moment after a member was killed
            try:
                committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
                return {tp.partition: tp.offset for tp in committed}
            except KafkaException:
                if attempt == 2:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


class FirstArrival:
    """Sees a record of a topic arrive, committed or not, within a millisecond or two: a
    read_uncommitted consumer long-polls the broker, which answers as soon as a record is appended."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "inspect-arrival",
                                  "isolation.level": "read_uncommitted", "fetch.wait.max.ms": 100,
                                  "enable.auto.commit": False, "enable.partition.eof": False})
        partitions = sorted(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])

    def wait(self, timeout: float, match: Callable[[bytes], bool] = lambda value: True,
             alive: Callable[[], bool] = lambda: True) -> None:
        """Until a record whose value matches arrives (or ``alive()`` turns false: fail)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            for message in self.consumer.consume(1000, 0.05):
                if not message.error() and match(message.value()):
                    return
        pytest.fail(f"no matching record arrived within {timeout:g}s")

    def close(self) -> None:
        self.consumer.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "inspect-watermarks"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


# -- producing live events -------------------------------------------------------------------------


def live_events(n: int, prefix: str = "live", seed: int = 11) -> list[dict[str, Any]]:
    return [e.features for e in event_stream(n, start=LIVE_START, seed=seed, prefix=prefix)]


class SteadyProducer(threading.Thread):
    """Produces events at a steady rate in the background, each keyed by its event id."""

    def __init__(self, env: FlywheelEnv, events: list[dict[str, Any]], rate_per_s: float, *,
                 hold_at: int | None = None, tick_s: float = 0.02) -> None:
        """``hold_at``: pause after that many events until ``release()``, so a test can be sure that
        events still flow after something it waits for (a second member joining) has happened."""
        super().__init__(name="steady-producer", daemon=True)
        self.topic = env.spec.topics.features
        self.key_field = env.spec.key_field
        self.events, self.rate_per_s, self.tick_s = events, rate_per_s, tick_s
        self.producer = Producer(client_config(env.settings, "producer", linger_ms=5))
        self.sent = 0
        self.errors: list[str] = []
        self.finished_at: float | None = None
        self._halt = threading.Event()
        self._released = threading.Event()
        self.hold_at = hold_at if hold_at is not None else len(events)
        if self.hold_at >= len(events):
            self._released.set()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())

    def run(self) -> None:
        started = time.monotonic()
        while self.sent < len(self.events) and not self._halt.is_set():
            if self.sent >= self.hold_at and not self._released.is_set():
                self.producer.poll(0)
                self._released.wait(self.tick_s)
                started = time.monotonic() - self.sent / self.rate_per_s  # go on at the same rate
                continue
            due = int((time.monotonic() - started) * self.rate_per_s) + 1
            due = min(len(self.events), due if self._released.is_set() else min(due, self.hold_at))
            for event in self.events[self.sent:due]:
                self.producer.produce(self.topic, key=str(event[self.key_field]).encode(), value=orjson.dumps(event),
                                      on_delivery=self._on_delivery)
            self.sent = max(self.sent, due)
            self.producer.poll(0)
            time.sleep(self.tick_s)
        self.producer.flush(30)
        self.finished_at = time.time()

    def halt(self) -> None:
        self._halt.set()

    def release(self) -> None:
        self._released.set()

    @property
    def holding(self) -> bool:
        return self.sent >= self.hold_at and not self._released.is_set()

    def finish(self, timeout: float = 60) -> None:
        """Wait until every event is produced and acknowledged."""
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish in time"
        assert not self.errors, f"events not delivered: {self.errors[:3]}"

    @property
    def ids(self) -> list[str]:
        return [str(e[self.key_field]) for e in self.events[: self.sent]]


# -- scorer processes ------------------------------------------------------------------------------


class ScorerProcess:
    """``python -m flywheel score`` in a subprocess, with its stdout and log in files."""

    def __init__(self, env: FlywheelEnv, log_dir: Path, *, exactly_once: bool, member_id: str = "0",
                 args: Iterable[str] = (), extra_env: dict[str, str] | None = None, label: str = "") -> None:
        self.label = label or f"scorer-{member_id}-{uuid.uuid4().hex[:6]}"
        self.stdout_path = log_dir / f"{self.label}.out"
        self.stderr_path = log_dir / f"{self.label}.log"
        command = [sys.executable, "-m", "flywheel", "score", "--spec", str(env.spec.source), "--member-id", member_id,
                   "--metrics-interval", "1", *args]
        if exactly_once:
            command.append("--exactly-once")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=cli_environment(env.settings, **(extra_env or {})))
        self.started = time.monotonic()

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def assignments(self) -> list[str]:
        return [line.split("assigned ", 1)[1] for line in self.log().splitlines() if " assigned [" in line]

    def wait_assigned(self, timeout: float = 60) -> None:
        """Wait until the process owns at least one partition of the features topic."""

        def owns_partitions() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.label} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            latest = self.assignments()
            return bool(latest) and latest[-1] != "[]"

        wait_until(owns_partitions, timeout, f"{self.label} to be assigned partitions")

    def terminate(self, timeout: float = 10) -> float:
        """SIGTERM; wait for the exit; the seconds it took. Fails if it does not exit in time."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.label} did not exit within {timeout}s of SIGTERM:\n{self.log()[-3000:]}")
        return time.monotonic() - sent

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def summary(self) -> dict[str, Any]:
        """The JSON line the command prints when it stops."""
        lines = [line for line in self.stdout_path.read_text().splitlines() if line.startswith("{")]
        assert lines, f"{self.label} printed no summary; its log ends:\n{self.log()[-3000:]}"
        return json.loads(lines[-1])


@pytest.fixture
def start_scorer(tmp_path: Path) -> Iterator[Callable[..., ScorerProcess]]:
    """``start_scorer(env, exactly_once=..., member_id=..., args=..., extra_env=...)``; whatever is still
    running at the end of the test is killed (by its own process id)."""
    started: list[ScorerProcess] = []
    log_dir = tmp_path / "scorer-logs"
    log_dir.mkdir(exist_ok=True)

    def start(env: FlywheelEnv, **kwargs: Any) -> ScorerProcess:
        process = ScorerProcess(env, log_dir, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)


def run_in_thread(target: Callable[..., Any], **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=target, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def spec_variant(env: FlywheelEnv, **overrides: object) -> Any:
    """The env's spec with some fields replaced (e.g. another predictions topic), as a new spec file."""
    data = yaml.safe_load(Path(env.spec.source).read_text())
    for dotted, value in overrides.items():
        target = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    directory = env.settings.home / "spec-variants"  # not the specs dir: one spec per model name there
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"variant-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)
