"""Failure drills: the machinery they share.

* ``drill_broker``: a broker of the drills' own (module scope), started through scripts/kafka.sh on
  free ports with its own data dir, so it can be stopped, crashed and restarted without touching the
  session broker other tests share. A restart keeps the port and the data dir, so topics, records and
  committed offsets survive it.
* ``champion_template``: one trained model (v1 promoted) for the whole drill session, built the way
  the loop builds it (history and labels produced, drained, trained, validated, promoted); each drill
  gets a copy of its store (``drill_env``) on topics of its own.
* ``TcpProxy``: a TCP proxy that can be cut (connections refused, open ones reset) and restored on the
  same port, to take an object store away "for a while" without restarting the store itself.
* ``start_loop_scorer``: ``python -m flywheel score`` as the loop runs it (flywheel.demo.loop.ScorerProcess),
  stopped or killed at teardown by its own process id.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flywheel.demo.generator import event_stream
from flywheel.demo.loop import ScorerProcess
from flywheel.drain import drain_topic
from flywheel.kafka_config import ensure_topics
from flywheel.settings import Settings
from flywheel.specs import load_spec

from tests.fixtures.kafka_broker import REPO, Broker, free_port
from tests.fixtures.stores import FlywheelEnv, write_spec
from tests.integration.scoring.conftest import (
    START,
    cli_environment,
    promote_new_version,
    wait_for_topics,
    wait_until,
)

#: History the template champion is trained on: event times START.. at 2/s, all before TRAINING_AS_OF.
HISTORY = 3000
#: A SIGKILL'd scorer's group membership outlives it by session.timeout.ms; the broker's minimum keeps
#: the restarts short (the default, 45 s, would be most of a drill).
SHORT_SESSION = {"FLYWHEEL_KAFKA__SESSION_TIMEOUT_MS": "6000", "FLYWHEEL_KAFKA__HEARTBEAT_INTERVAL_MS": "1000"}


# -- a broker the drills may restart --------------------------------------------------------------


@dataclass(frozen=True)
class DrillBroker:
    broker: Broker

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def pid(self) -> int | None:
        assert self.broker.data_dir is not None
        try:
            return int((self.broker.data_dir / "broker.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Graceful: SIGTERM and wait (controlled shutdown), as ``make kafka-down`` does."""
        self.broker.run_script("down")

    def crash(self) -> None:
        """SIGKILL: the broker dies at once, with no controlled shutdown."""
        pid = self.pid()
        assert pid is not None, "the drill broker is not running"
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, "the killed broker to go")

    def start(self) -> None:
        """Start (again) on the same ports with the same data dir (offsets survive).

        ``kafka.sh up`` checks its pid file right after backgrounding ``nohup java``; on a busy machine
        that check can run before the child has become java, and the script then reports "broker exited
        during start", deletes its pid file and exits 1 while the broker goes on starting. A broker of
        this data dir that is running is adopted (pid file written back) instead of left orphaned.
        """
        try:
            self.broker.run_script("up")
        except subprocess.CalledProcessError:
            pids = self._running_brokers()
            if not pids:
                raise
            assert self.broker.data_dir is not None
            (self.broker.data_dir / "broker.pid").write_text(f"{pids[0]}\n")
            wait_until(lambda: subprocess.run([str(REPO / "scripts" / "kafka.sh"), "status"], env=self.broker.env,
                                              capture_output=True).returncode == 0 and self._answers(), 90,
                       "the adopted broker to answer")

    def _running_brokers(self) -> list[int]:
        """Processes running a broker with this data dir's properties."""
        marker = f"kafka.Kafka {self.broker.data_dir}/server.properties".encode()
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if marker in cmdline.read_bytes().replace(b"\0", b" ") and not _zombie(int(cmdline.parent.name)):
                    pids.append(int(cmdline.parent.name))
            except (OSError, ValueError):
                continue
        return pids

    def _answers(self) -> bool:
        assert self.broker.data_dir is not None
        log = self.broker.data_dir / "broker.log"
        try:
            with socket.create_connection(("127.0.0.1", self.broker.port), timeout=1):
                pass
        except OSError:
            return False
        return log.exists() and "Kafka Server started" in log.read_text(errors="replace")

    def restart(self, *, crash: bool = False) -> float:
        """Down (or crashed) and up again; the seconds it was away."""
        began = time.monotonic()
        self.crash() if crash else self.stop()
        self.start()
        return time.monotonic() - began


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def drill_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillBroker]:
    port, cport = free_port(), free_port()
    data_dir = tmp_path_factory.mktemp("drill-kafka")
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(cport),
           "KAFKA_DATA_DIR": str(data_dir), "KAFKA_HEAP_OPTS": "-Xms192m -Xmx512m"}
    broker = DrillBroker(Broker(f"127.0.0.1:{port}", port, data_dir, env))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        for pid in broker._running_brokers():  # never leave a broker of ours behind
            os.kill(pid, signal.SIGKILL)


# -- a champion to start from ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChampionTemplate:
    """A model store whose champion is v1, trained on HISTORY drained events of ``topics``."""

    name: str
    store_dir: Path
    topics: dict[str, str]
    settings: Settings
    history_ids: list[str]


def produce_history(env: FlywheelEnv, n: int, prefix: str = "h") -> list[str]:
    """``n`` events and their labels from START (2/s of event time), then both topics drained."""
    events = list(event_stream(n, start=START, rate_per_s=2, seed=5, prefix=prefix))
    env.produce_json(env.spec.topics.features, [e.features for e in events])
    env.produce_json(env.spec.topics.labels, [e.label for e in events])
    drain_topic(env.settings, env.spec.topics.features)
    drain_topic(env.settings, env.spec.topics.labels)
    return [e.features["event_id"] for e in events]


@pytest.fixture(scope="session")
def champion_template(kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> ChampionTemplate:
    root = tmp_path_factory.mktemp("drill-template")
    name = f"d{uuid.uuid4().hex[:10]}"
    specs_dir = root / "specs"
    write_spec(specs_dir, name)
    store_dir = root / "store"
    settings = Settings.from_env({"FLYWHEEL_HOME": str(root)}).with_overrides(
        kafka_bootstrap=kafka_broker.bootstrap, store_url=store_dir.as_uri(), specs_dir=specs_dir,
        group_prefix=f"fw-{name}", model_events_topic=f"{name}.model-events", metrics_topic=f"{name}.metrics",
        broker_timeout_s=15.0)
    spec = load_spec(specs_dir / f"{name}.yaml")
    ensure_topics(settings, [*spec.drained_topics, f"{spec.topics.features}.dlq"], partitions=4)
    env = FlywheelEnv(settings, spec, settings.open_store())
    ids = produce_history(env, HISTORY)
    assert promote_new_version(env) == 1
    topics = {"features": spec.topics.features, "labels": spec.topics.labels, "predictions": spec.topics.predictions}
    return ChampionTemplate(name, store_dir, topics, settings, ids)


DrillEnvFactory = Callable[..., FlywheelEnv]


@pytest.fixture
def drill_env(champion_template: ChampionTemplate, tmp_path: Path) -> DrillEnvFactory:
    """``drill_env(bootstrap=None, template_topics=False, spec_changes=None, **settings_overrides)``: a copy of the template's
    store (champion v1) with a spec of the same model name, on fresh topics (or, with
    ``template_topics``, on the template's, whose history the store has drained) of the given broker
    (default: the session broker). Consumer groups, model-events and metrics topics are its own."""

    def build(bootstrap: str | None = None, *, template_topics: bool = False, spec_changes: dict[str, Any] | None = None,
              **overrides: Any) -> FlywheelEnv:
        tag = uuid.uuid4().hex[:8]
        name = champion_template.name
        base = f"{name}-{tag}"
        home = tmp_path / f"env-{tag}"
        store_dir = home / "store"
        shutil.copytree(champion_template.store_dir, store_dir)
        specs_dir = home / "specs"
        topics = champion_template.topics if template_topics else \
            {kind: f"{base}.{kind}" for kind in ("features", "labels", "predictions")}
        write_spec(specs_dir, name, topics=topics, **(spec_changes or {}))
        settings = champion_template.settings.with_overrides(
            home=home, kafka_bootstrap=bootstrap or champion_template.settings.kafka_bootstrap,
            store_url=store_dir.as_uri(), specs_dir=specs_dir, group_prefix=f"fw-{base}",
            model_events_topic=f"{base}.model-events", metrics_topic=f"{base}.metrics", **overrides)
        spec = load_spec(specs_dir / f"{name}.yaml")
        ensure_topics(settings, [*spec.drained_topics, f"{spec.topics.features}.dlq"], partitions=4)
        ensure_topics(settings, [settings.model_events_topic], partitions=1, compacted=[settings.model_events_topic])
        ensure_topics(settings, [settings.metrics_topic], partitions=1)
        wait_for_topics(settings, [*spec.drained_topics, settings.model_events_topic])
        return FlywheelEnv(settings, spec, settings.open_store())

    return build


@pytest.fixture
def fresh_env(tmp_path: Path) -> DrillEnvFactory:
    """``fresh_env(bootstrap, **settings_overrides)``: a new model spec on new topics of that broker, an
    empty local store (or the store the overrides name), no model."""

    def build(bootstrap: str, **overrides: Any) -> FlywheelEnv:
        name = f"d{uuid.uuid4().hex[:10]}"
        home = tmp_path / f"env-{name}"
        specs_dir = home / "specs"
        write_spec(specs_dir, name)
        settings = Settings.from_env({"FLYWHEEL_HOME": str(home)}).with_overrides(**{
            "kafka_bootstrap": bootstrap, "store_url": (home / "store").as_uri(), "specs_dir": specs_dir,
            "group_prefix": f"fw-{name}", "broker_timeout_s": 15.0, **overrides})
        spec = load_spec(specs_dir / f"{name}.yaml")
        ensure_topics(settings, spec.drained_topics, partitions=4)
        wait_for_topics(settings, spec.drained_topics)
        return FlywheelEnv(settings, spec, settings.open_store())

    return build


# -- scorer processes as the loop runs them --------------------------------------------------------


class LoopScorer:
    """flywheel.demo.loop.ScorerProcess (``python -m flywheel score --spec <name>``) plus what a drill
    needs to watch it: its log, which version it serves, and a SIGKILL."""

    def __init__(self, env: FlywheelEnv, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.scorer = ScorerProcess(env.spec, cli_environment(env.settings, **(extra_env or {})), log_path)
        self.process = self.scorer.process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_serving(self, version: int, timeout: float = 60) -> None:
        def serving() -> bool:
            if not self.alive():
                pytest.fail(f"the scorer exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            return f"now scoring with v{version}," in self.log()

        wait_until(serving, timeout, f"the scorer to serve v{version}")

    def wait_assigned(self, timeout: float = 60) -> None:
        def assigned() -> bool:
            if not self.alive():
                pytest.fail(f"the scorer exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            lines = [line for line in self.log().splitlines() if " assigned [" in line]
            return bool(lines) and not lines[-1].endswith("[]")

        wait_until(assigned, timeout, "the scorer to be assigned partitions")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        return self.scorer.stop()


@pytest.fixture
def start_loop_scorer(tmp_path: Path) -> Iterator[Callable[..., LoopScorer]]:
    started: list[LoopScorer] = []

    def start(env: FlywheelEnv, label: str = "scorer", extra_env: dict[str, str] | None = None) -> LoopScorer:
        scorer = LoopScorer(env, tmp_path / "scorers" / f"{label}-{len(started)}.log", extra_env)
        started.append(scorer)
        return scorer

    yield start
    for scorer in started:
        if scorer.alive():
            scorer.kill()
        scorer.stop()  # closes its log and removes its pid file


def clock_offset(env: FlywheelEnv) -> timedelta:
    """Live event times run this far behind the wall clock, as in the demo: old enough to train on."""
    assert env.spec.label is not None
    return env.spec.label.max_delay + timedelta(minutes=5)


# -- an object store that goes away ---------------------------------------------------------------


class TcpProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target_port>, byte for byte, until ``cut()``: then connections to
    the port are refused and those open are reset, until ``restore()`` listens on the same port again.

    ``cut_when(pattern, nth)`` arms a one-shot trigger: the proxy cuts itself the moment the ``nth``
    client request matching ``pattern`` (a regex on the bytes sent) arrives, before forwarding it. For
    an HTTP store that takes the store away at an exact step of a protocol (say, the 3rd manifest
    write), on the real network path, without touching the code under test.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stop = threading.Event()
        self._trigger: tuple[re.Pattern[bytes], int] | None = None
        self._matches = 0
        self.cut_by_trigger = threading.Event()
        self.triggered_by = b""

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener, self._stop = listener, threading.Event()
        self._accepting = threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True,
                                           name="tcp-proxy")
        self._accepting.start()
        return self

    @property
    def up(self) -> bool:
        return self._listener is not None

    def cut_when(self, pattern: bytes, nth: int = 1) -> None:
        with self._lock:
            self._trigger, self._matches = (re.compile(pattern), nth), 0
            self.cut_by_trigger.clear()

    def cut(self) -> None:
        with self._lock:
            self._trigger = None
            stop, accepting, listener = self._stop, self._accepting, self._listener
            self._listener = None
            doomed, self._sockets = self._sockets, set()
        stop.set()
        if accepting is not None and accepting is not threading.current_thread():
            accepting.join(5)
        if listener is not None:
            listener.close()
        for s in doomed:
            _close(s)

    def restore(self) -> None:
        assert self._listener is None, "the proxy is not cut"
        self.start()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if stop.is_set():
                    _close(client)
                    _close(upstream)
                    return
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _fires(self, data: bytes) -> bool:
        with self._lock:
            if self._trigger is None:
                return False
            pattern, nth = self._trigger
            self._matches += len(pattern.findall(data))
            if self._matches < nth:
                return False
            self._trigger = None
            self.triggered_by = data.split(b"\r\n", 1)[0]
            return True

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._fires(data):
                    self.cut()
                    self.cut_by_trigger.set()
                    return
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _close(source)
            _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset, not a FIN
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


@pytest.fixture(scope="module")
def drill_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server of the drills' own (the session's script), its endpoint URL. moto keeps objects in
    memory, so it is never restarted: drills take it away through a TcpProxy."""
    from tests.fixtures import s3_server

    log_path = tmp_path_factory.mktemp("drill-s3") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, s3_server.__file__], stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{s3_server._read_port(proc, log_path)}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
