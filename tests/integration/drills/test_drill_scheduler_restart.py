"""Drill: the Airflow scheduler is restarted between the drain and the training.

On the session's real ``airflow standalone`` (REST API, its own SQLite DB and store, the session broker),
as an external client drives it: events are produced, ``feature_drain`` is triggered and drains them,
then the scheduler dies (SIGKILL). ``airflow standalone`` does not supervise its components (each runs
in a thread that only streams its output; nothing starts a dead one again), so the scheduler comes
back the only way this deployment restarts it: ``scripts/airflow.sh down`` / ``up`` (``make
airflow-down airflow-up``), on the same home, DB and port. ``model_training_fraud`` is then triggered
and must train on exactly the drained events.

The standalone reads the repository's specs (the ``fraud`` model, shared with the other end-to-end
tests), so this drill's events carry their own id prefix and event times three days back, in a
window no other test produces into; training is asked for exactly that window.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pytest
from confluent_kafka import Producer
from flywheel.demo.loop import run_dag
from flywheel.demo.stream import Sent, history, send_events
from flywheel.drain.reader import read_topic
from flywheel.kafka_config import client_config, ensure_topics
from flywheel.models.store import ModelStore
from flywheel.settings import Settings
from flywheel.specs import find_spec

from tests.integration.scoring.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.drill]

N = 3000
EVENT_RATE = 2.0  # events per second of event time: N events span 25 minutes
RUN_TIMEOUT_S = 300


def _children(pid: int) -> dict[int, str]:
    """Child process id -> command line."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


def _scheduler_pid(home: Path) -> tuple[int, int | None]:
    """(standalone pid, its scheduler child's pid or None)."""
    standalone = int((home / ".local" / "airflow" / "standalone.pid").read_text())
    schedulers = [pid for pid, cmd in _children(standalone).items() if cmd.rstrip().endswith("airflow scheduler")]
    return standalone, schedulers[0] if schedulers else None


def _group(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of a process group: id -> command line."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


class StragglersLeft(AssertionError):
    """Processes of the stopped standalone outlived ``scripts/airflow.sh down``."""


def _own(table, key: str, prefix: str) -> list[str]:
    if table is None:
        return []
    ids = table.column(key)
    return ids.filter(pc.starts_with(ids, prefix)).to_pylist()


def test_scheduler_restarted_between_drain_and_training(airflow_standalone):
    standalone, client = airflow_standalone, airflow_standalone.client
    settings = Settings.from_env(standalone.env)
    spec = find_spec(settings.specs_dir, "fraud")
    store = settings.open_store()
    models = ModelStore(store)
    ensure_topics(settings, [*spec.drained_topics, f"{spec.topics.features}.dlq"])
    client.wait_for_dags(["feature_drain", f"model_training_{spec.name}"])

    prefix = f"drill-{uuid.uuid4().hex[:8]}-"
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    events = list(history(N, end=end, event_rate=EVENT_RATE, seed=51, prefix=prefix))
    sent = Sent()
    send_events(Producer(client_config(settings, "producer", linger_ms=20)), spec, events, sent, "drill")
    first_time = datetime.fromisoformat(events[0].features["event_time"].replace("Z", "+00:00"))
    last_time = datetime.fromisoformat(events[-1].features["event_time"].replace("Z", "+00:00"))
    positives = sum(sent.labels.values())

    # 1. The drain, over REST.
    drain_run = run_dag(client, "feature_drain", RUN_TIMEOUT_S,
                        {"topics": [spec.topics.features, spec.topics.labels]})
    for topic in (spec.topics.features, spec.topics.labels):
        drained = _own(read_topic(store, topic, columns=[spec.key_field]), spec.key_field, prefix)
        assert len(drained) == len(set(drained)) == N, f"{topic}: {len(drained)} rows of {N} events"

    # 2. The scheduler dies; standalone does not bring it back; the deployment restarts it.
    standalone_pid, scheduler = _scheduler_pid(standalone.home)
    assert scheduler is not None, f"no scheduler under standalone {standalone_pid}: {_children(standalone_pid)}"
    os.kill(scheduler, signal.SIGKILL)
    wait_until(lambda: _scheduler_pid(standalone.home)[1] != scheduler, 10, "the scheduler to die")
    time.sleep(2)
    assert _scheduler_pid(standalone.home)[1] is None, "standalone started a scheduler again by itself"
    began = time.monotonic()
    down = standalone.script("down")
    assert down.returncode == 0, down.stdout + down.stderr
    time.sleep(1)
    stragglers = _group(standalone_pid)
    for pid in stragglers:  # what an operator would have to do by hand
        os.kill(pid, signal.SIGKILL)
    up = standalone.script("up")
    assert up.returncode == 0, up.stdout + up.stderr
    restart_s = time.monotonic() - began
    client._token = None  # log in again, as a client of a restarted deployment would
    new_pid, new_scheduler = _scheduler_pid(standalone.home)
    assert new_scheduler is not None and new_pid != standalone_pid
    assert {k: v["status"] for k, v in client.health().items()}["scheduler"] == "healthy"

    # 3. The training, over REST, on exactly this drill's window.
    as_of = last_time + spec.label.max_delay + timedelta(seconds=1)
    window = f"{int((as_of - first_time).total_seconds()) + 1}s"
    had_champion = models.champion(spec.name)
    training_run = run_dag(client, f"model_training_{spec.name}", RUN_TIMEOUT_S,
                           {"as_of": as_of.isoformat(), "window": window})
    trained = [v for v in models.versions(spec.name) if v.metadata.get("trained_by") == training_run]
    assert len(trained) == 1, f"{len(trained)} versions trained by {training_run}"
    version = trained[0]
    counts = version.metadata["row_counts"]
    assert counts["feature_events"] == counts["labelled_events"] == N, counts
    assert counts["positives"] == positives, counts
    assert counts["train"] + counts["validation"] + counts["holdout"] == N, counts
    states = {t["task_id"]: t["state"] for t in client.task_instances(f"model_training_{spec.name}", training_run)}
    assert states["train_challenger"] == states["validate_challenger"] == "success", states
    if had_champion is None:
        assert version.status == "promoted" and states["promote_or_reject"] == "success", (version.verdict, states)
        assert models.champion(spec.name).version == version.version
    else:  # another test's champion: compared on this drill's holdout, promoted or rejected with reasons
        assert version.status in ("promoted", "rejected"), version.verdict
    print(f"\nfeature_drain {drain_run} drained {N} events (+ labels) exactly once; scheduler {scheduler} killed, "
          f"standalone restarted in {restart_s:.0f}s (scheduler {new_scheduler}); {training_run} trained "
          f"v{version.version} on exactly {counts['labelled_events']} labelled events ({positives} positive): "
          f"{version.status}")
    if stragglers:
        raise StragglersLeft(f"still running after `airflow.sh down` (killed by the drill): {stragglers}")
