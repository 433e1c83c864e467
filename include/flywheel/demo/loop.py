"""The whole loop, driven from outside as a platform team would: produce, drain, train, score, drift, retrain, swap.

Airflow does the work (every DAG run is triggered through its REST API, and the retraining is started
by Airflow itself when the drift monitor updates the retrain asset); the demo only produces the
stream, starts a scorer, watches the predictions topic and checks the result against the ground truth.

Event time runs ``clock_offset`` behind the wall clock (the spec's label delay plus a margin). That
compresses label latency: the training DAG only uses events whose label had time to arrive, and this
way every event of the demo is old enough minutes after it was sent instead of hours later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flywheel.airflow_client import AirflowClient
from flywheel.demo.observe import PredictionCollector, high_watermarks, live_auc
from flywheel.demo.stream import LiveStream, Sent, history, send_events
from flywheel.errors import FlywheelError
from flywheel.settings import Settings
from flywheel.specs import ModelSpec
from flywheel.storage import ObjectStore


class DemoFailed(FlywheelError):
    """A stage of the loop did not do what it should; the message says which and where to look."""


@dataclass(frozen=True)
class DemoPlan:
    history: int = 10_000        # pre-drift events backfilled before v1 is trained
    live: int = 3_000            # pre-drift events scored live by v1
    drifted: int = 15_000        # drifted events sent before the drain that feeds the monitor and retraining
    after_swap: int = 3_000      # drifted events scored by v2
    rate: float = 500.0          # events/s of the live stream
    history_event_rate: float = 10.0  # events per second of event time in the backfill
    bad_every: int = 1_000       # one malformed event every N
    seed: int = 7
    stage_timeout_s: float = 600.0


@dataclass
class DemoReport:
    stages: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)
    live_auc: dict[str, float | None] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    swap_seconds: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """One line per stage as it finishes, with the time since the loop started."""

    def __init__(self, report: DemoReport, out: Callable[[str], None] = print) -> None:
        self.report, self.out, self.started = report, out, time.monotonic()

    def __call__(self, stage: str, text: str, **details: Any) -> None:
        elapsed = time.monotonic() - self.started
        self.report.stages.append({"stage": stage, "at_s": round(elapsed, 1), "text": text, **details})
        self.out(f"[{elapsed:6.1f}s] {stage:<8} {text}")


class ScorerProcess:
    """``flywheel score`` as its own process, the way it runs in production (one group member)."""

    def __init__(self, spec: ModelSpec, env: dict[str, str], log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.pid_path = log_path.with_suffix(".pid")
        stop_recorded_scorer(self.pid_path)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flywheel", "score", "--spec", spec.name, "--metrics-interval", "5"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_path.write_text(str(self.process.pid))

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise DemoFailed(f"the scorer exited with code {self.process.returncode}; see {self.log_path}")

    def stop(self) -> int | None:
        """SIGTERM: the scorer finishes its batch, commits and leaves the group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self.pid_path.unlink(missing_ok=True)
        return self.process.returncode


def stop_recorded_scorer(pid_path: Path) -> None:
    """Stop a scorer a previous, interrupted demo left behind (only if it still is one)."""
    try:
        pid = int(pid_path.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"flywheel" in cmdline and b"score" in cmdline:
        os.kill(pid, signal.SIGTERM)
        for _ in range(60):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.5)
    pid_path.unlink(missing_ok=True)


def run_dag(client: AirflowClient, dag_id: str, timeout_s: float, conf: dict[str, Any] | None = None) -> str:
    run_id = client.trigger(dag_id, conf)
    state = client.wait_run(dag_id, run_id, timeout_s=timeout_s)
    if state != "success":
        failed = [t["task_id"] for t in client.task_instances(dag_id, run_id) if t.get("state") == "failed"]
        raise DemoFailed(f"{dag_id} run {run_id} ended {state} (failed tasks: {failed}); see its logs in the UI")
    return run_id


def wait_triggered_run(client: AirflowClient, dag_id: str, after: datetime, timeout_s: float) -> dict[str, Any]:
    """The first run of ``dag_id`` queued after ``after`` that Airflow started by itself (an asset event)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for run in client.runs(dag_id):
            queued = datetime.fromisoformat(run["queued_at"].replace("Z", "+00:00")) if run.get("queued_at") else None
            if run.get("run_type") == "asset_triggered" and queued and queued >= after:
                return run
        time.sleep(2)
    raise DemoFailed(f"Airflow did not start {dag_id} from the retrain asset within {timeout_s:.0f}s")


def latest_drift_summary(store: ObjectStore, model: str) -> dict[str, Any]:
    from flywheel.monitoring.reports import latest_summary

    latest = latest_summary(store, model)
    if latest is None:
        raise DemoFailed(f"the drift monitor saved no report for {model}")
    return latest[1]


def run_loop(settings: Settings, spec: ModelSpec, plan: DemoPlan, client: AirflowClient, *,
             env: dict[str, str] | None = None, reset: bool = True,
             out: Callable[[str], None] = print) -> DemoReport:
    from confluent_kafka import Producer

    from flywheel.demo.reset import reset_model
    from flywheel.kafka_config import client_config, ensure_topics
    from flywheel.models.store import ModelStore

    report = DemoReport()
    say = Progress(report, out)
    timeout = plan.stage_timeout_s
    name, store = spec.name, settings.open_store()
    models = ModelStore(store)
    training_dag = f"model_training_{name}"
    run_tag = f"d{int(time.time())}-"
    if spec.label is None or not spec.topics.labels or not spec.topics.predictions:
        raise DemoFailed(f"spec {name!r} needs a label, a labels topic and a predictions topic for the demo loop")
    clock_offset = spec.label.max_delay + timedelta(minutes=15)
    log_dir = settings.home / ".local" / "demo"

    stop_recorded_scorer(log_dir / "scorer.pid")
    if reset:
        done = reset_model(settings, spec)
        say("reset", f"clean slate for {name}: {done['topics']} topics recreated, {done['objects']} objects removed")
    else:
        ensure_topics(settings, [*spec.drained_topics, f"{spec.topics.features}.dlq"])
    feature_start = high_watermarks(settings, spec.topics.features)
    collector = PredictionCollector(settings, spec.topics.predictions, spec.key_field,
                                    high_watermarks(settings, spec.topics.predictions))
    collector.start()
    producer = Producer(client_config(settings, "producer", linger_ms=20))
    sent = Sent()
    scorer: ScorerProcess | None = None
    stream: LiveStream | None = None
    try:
        # 1. History, drained and trained on: v1.
        end = datetime.now(UTC) - clock_offset
        n = send_events(producer, spec, history(plan.history, end=end, event_rate=plan.history_event_rate,
                                                seed=plan.seed, prefix=f"{run_tag}history-"),
                        sent, "history", bad_every=plan.bad_every)
        say("produce", f"{n:,} card payments of history + their labels (+{sent.malformed} malformed)")
        run_dag(client, "feature_drain", timeout)
        say("drain", f"feature_drain: {spec.topics.features}, {spec.topics.labels} -> Parquet in {settings.store_url}")
        run_dag(client, training_dag, timeout)
        champion = models.champion(name)
        if champion is None:
            raise DemoFailed(f"{training_dag} promoted nothing; `flywheel models show {name}` says why")
        v1 = champion.version
        say("train", f"v{v1} promoted, holdout AUC {models.get_version(name, v1).metrics.get('auc', float('nan')):.4f}")

        # 2. A scorer embeds v1 and scores the live stream.
        scorer = ScorerProcess(spec, env or dict(os.environ), log_dir / "scorer.log")
        stream = LiveStream(producer, spec, sent, rate=plan.rate, seed=plan.seed + 1, prefix=run_tag,
                            clock_offset=clock_offset, bad_every=plan.bad_every)
        stream.start()
        stream.wait_for("live", plan.live, timeout, scorer.check_alive)
        _wait_scored(collector, sent.ids("live"), timeout, scorer)
        report.live_auc["before_drift"], scored = live_auc(collector, sent.labels, sent.ids("live"))
        say("score", f"scorer serving v{v1} at {plan.rate:.0f} ev/s: live AUC {_fmt(report.live_auc['before_drift'])} "
                     f"on {scored:,} events")

        # 3. Drift: fraudsters change tactics and customers change habits.
        stream.switch("drift", drift=True)
        stream.wait_for("drift", plan.drifted, timeout, scorer.check_alive)
        drift_started = stream.drift_started_at or time.time()
        _wait_scored(collector, sent.ids("drift"), timeout, scorer)
        report.live_auc["after_drift_v1"], scored = live_auc(collector, sent.labels, sent.ids("drift"), version=v1)
        say("drift", f"drift injected: v{v1}'s live AUC fell to {_fmt(report.live_auc['after_drift_v1'])} "
                     f"on {scored:,} drifted events")

        # 4. The monitor sees it and asks for a retrain; Airflow starts the training from the asset.
        run_dag(client, "feature_drain", timeout)
        checked_from = datetime.now(UTC)
        as_of = checked_from - clock_offset
        window = f"{int(time.time() - drift_started) + 1}s"
        monitor_run = run_dag(client, f"drift_monitor_{name}", timeout, {"as_of": as_of.isoformat(), "window": window})
        detected = time.time()
        verdict = latest_drift_summary(store, name)
        retrain = {t["task_id"]: t.get("state") for t in client.task_instances(f"drift_monitor_{name}", monitor_run)}
        report.drift = {"drift_share": verdict.get("drift_share"), "drifted_columns": verdict.get("drifted_columns"),
                        "data_drift": verdict.get("data_drift"), "quality_drop": verdict.get("quality_drop"),
                        "detection_delay_s": round(detected - drift_started, 1), "report": verdict.get("report_html"),
                        "retrain_requested": retrain.get("request_retrain") == "success"}
        if not (report.drift["data_drift"] or report.drift["quality_drop"]):
            raise DemoFailed(f"the drift monitor saw no drift (verdict {report.drift}); see its run {monitor_run}")
        # A scheduled or alarm-started check may have asked for the retrain first (one per cool-down):
        # then this run's request is suppressed and the retraining already under way is the one to follow.
        requested = "retrain requested" if report.drift["retrain_requested"] else "retrain already requested"
        say("monitor", f"drift detected {report.drift['detection_delay_s']:.0f}s after injection: "
                       f"{len(verdict.get('drifted_columns') or [])} features drifted "
                       f"({verdict.get('drift_share', 0):.0%}); {requested}")
        since = datetime.fromtimestamp(drift_started, UTC)
        training = wait_triggered_run(client, training_dag, since, timeout)
        state = client.wait_run(training_dag, training["dag_run_id"], timeout_s=timeout)
        champion = models.champion(name)
        if state != "success" or champion is None or champion.version == v1:
            raise DemoFailed(f"retraining run {training['dag_run_id']} ended {state} and did not promote a new "
                             f"version; `flywheel models show {name}` says why")
        v2 = champion.version
        say("retrain", f"Airflow retrained on the retrain asset: v{v2} promoted, holdout AUC "
                       f"{models.get_version(name, v2).metrics.get('auc', float('nan')):.4f}")

        # 5. The scorer hot-swaps to v2 while the stream keeps flowing.
        first_v2_ms = collector.wait_version(v2, 120)
        report.swap_seconds = round(first_v2_ms / 1000 - champion.promoted_at, 2)
        stream.switch("after-swap")
        stream.wait_for("after-swap", plan.after_swap, timeout, scorer.check_alive)
        stream.stop()
        _wait_scored(collector, list(sent.phase_of), timeout, scorer)
        report.live_auc["after_swap_v2"], scored = live_auc(collector, sent.labels, sent.ids("after-swap"), version=v2)
        say("swap", f"scorer swapped to v{v2} {report.swap_seconds:.2f}s after its promotion, no event missed: "
                    f"live AUC {_fmt(report.live_auc['after_swap_v2'])} on {scored:,} drifted events")

        # 6. Everything drained once; count against the ground truth.
        report.counts = _final_counts(client, settings, spec, sent, collector, feature_start, timeout)
        say("count", f"{report.counts['drained']:,} of {report.counts['produced']:,} events drained "
                     f"({report.counts['drain_duplicates']} duplicates), {report.counts['scored']:,} scored "
                     f"({report.counts['score_missing']} missing), {report.counts['rejected']} rejected")
        champion = models.champion(name)
        report.versions = [{"version": v.version, "status": v.status, "auc": v.metrics.get("auc"),
                            "champion": champion is not None and champion.version == v.version}
                           for v in models.versions(name)]
    finally:
        if stream is not None and stream.is_alive():
            stream.stop()
        if scorer is not None:
            scorer.stop()
        collector.stop()
    report.seconds = round(time.monotonic() - say.started, 1)
    return report


def _wait_scored(collector: PredictionCollector, ids: list[str], timeout_s: float, scorer: ScorerProcess) -> None:
    deadline = time.monotonic() + timeout_s
    missing = ids
    while missing:
        scorer.check_alive()
        missing = collector.wait_scored(missing, 5)
        if missing and time.monotonic() > deadline:
            raise DemoFailed(f"{len(missing)} events got no prediction within {timeout_s:.0f}s "
                             f"(e.g. {missing[:3]}); see {scorer.log_path}")


def _final_counts(client: AirflowClient, settings: Settings, spec: ModelSpec, sent: Sent,
                  collector: PredictionCollector, feature_start: dict[int, int], timeout_s: float) -> dict[str, int]:
    import pyarrow.compute as pc

    from flywheel.drain.reader import read_topic

    store = settings.open_store()
    ours = set(sent.phase_of)
    drained_ids: list[str] = []
    for _ in range(3):  # a drain run is bounded; a backlog may take more than one
        run_dag(client, "feature_drain", timeout_s)
        table = read_topic(store, spec.topics.features, columns=[spec.key_field])
        drained_ids = [i for i in (table.column(spec.key_field).to_pylist() if table is not None else []) if i in ours]
        if set(drained_ids) >= ours:
            break
    rejected_rows = 0
    rejected = read_topic(store, spec.topics.features, columns=["_partition", "_offset"], rejected=True)
    if rejected is not None:
        for partition, start in feature_start.items():
            mask = pc.and_(pc.equal(rejected.column("_partition"), partition),
                           pc.greater_equal(rejected.column("_offset"), start))
            rejected_rows += int(pc.sum(mask.cast("int64")).as_py() or 0)
    predictions = {i: p for i, p in collector.predictions.items() if i in ours}
    return {
        "produced": len(ours), "malformed_sent": sent.malformed,
        "drained": len(set(drained_ids)), "drain_duplicates": len(drained_ids) - len(set(drained_ids)),
        "drain_missing": len(ours - set(drained_ids)),
        "scored": len(predictions), "score_missing": len(ours) - len(predictions),
        "score_duplicates": sum(p.copies - 1 for p in predictions.values()),
        "rejected": rejected_rows,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_summary(report: DemoReport) -> str:
    c, auc, drift = report.counts, report.live_auc, report.drift
    before = auc.get("before_drift")
    after = auc.get("after_swap_v2")
    recovery = f" ({after / before:.1%} of before the drift)" if before and after else ""
    lines = [
        "",
        "=== flywheel demo: the loop turned ===",
        f"events      produced {c.get('produced', 0):,} (+{c.get('malformed_sent', 0)} malformed) | drained "
        f"{c.get('drained', 0):,} (missing {c.get('drain_missing', 0)}, duplicated {c.get('drain_duplicates', 0)}) | "
        f"scored {c.get('scored', 0):,} (missing {c.get('score_missing', 0)}, duplicated "
        f"{c.get('score_duplicates', 0)}) | rejected {c.get('rejected', 0)}",
        "models      " + ", ".join(f"v{v['version']} {v['status']}{', champion' if v.get('champion') else ''} "
                                   f"(holdout AUC {_fmt(v['auc'])})" for v in report.versions),
        f"live AUC    before drift {_fmt(before)} | after drift on v1 {_fmt(auc.get('after_drift_v1'))} | "
        f"after swap to v2 {_fmt(after)}{recovery}",
        f"drift       {len(drift.get('drifted_columns') or [])} features drifted, detected "
        f"{drift.get('detection_delay_s', float('nan')):.0f}s after injection; report {drift.get('report')}",
        f"swap        v2 served {report.swap_seconds}s after its promotion, while the stream kept flowing",
        f"loop time   {report.seconds:.0f}s",
    ]
    return "\n".join(lines)
