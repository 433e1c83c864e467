"""Drift-check benchmark: ``run_drift_check`` end to end on 1M drained rows, against Evidently alone.

    .venv/bin/python -m bench.drift_bench [--rows 1000000] [--repeats 3] [--predictions]
                                          [--no-full] [--no-kafka] [--profile auto|always|never]
                                          [--reuse-store]

Setup (not measured, in a process of its own): a private local store (.local/bench-drift-store,
wiped first) gets, exactly as the drain writes them (records spread over 4 partitions by key as
librdkafka's consistent partitioner does, cut into one chunk per partition per 5 minutes of event
time (the spec's drain schedule), decoded by the drain's ``decode_batch`` and written one Parquet file
per event hour by the drain's ``ChunkWriter``; no Kafka involved):

* ``--history-rows`` (40k) stationary fraud events with their labels, on which a champion is trained,
  validated and promoted with the real pipeline (``train_challenger`` / ``validate_challenger`` /
  ``promote_or_reject``); its ``reference.parquet`` is the drift reference (20k rows, the pipeline's
  default sample);
* ``--rows`` (1M) drifted "current" events (``event_stream(drift_after=0)``) at 600 events/s, so
  1M events span 27.8 minutes, all inside the spec's 30-minute drift window ending at ``as_of``;
* with ``--predictions``, also the champion's predictions for every current event (as the scorer
  writes them) and their labels, so the check also runs prediction drift and live quality.

Measured, each contender in its own process (``bench.common.run_function``), so its peak RSS is its
own; imports (evidently, pandas, sklearn, lightgbm, confluent_kafka) are done before every clock and
reported apart:

* ``flywheel``  ``run_drift_check(settings, spec, as_of)`` with the fraud spec as is (window 30m,
  sample_rows 50k): reads the window from the store, samples, runs Evidently, computes live quality,
  saves HTML/JSON reports and publishes the summary to Kafka. Wall time of the call, the ``seconds``
  it reports itself, a breakdown from light timers around its own functions, and peak RSS (VmHWM).
* ``evidently (sampled)``  the very frames ``run_drift_check`` builds (same read, window filter,
  ``_sample`` with the same seeds, ``to_matrix``, empty-column rule), built before the clock; timed:
  ``Report([DataDriftPreset(columns)]).run`` + ``snapshot.dict()`` (= flywheel's ``evidently_data_drift``),
  ``get_html_str`` and ``json.dumps(snapshot.dict())``: the same artefacts flywheel produces, so like is
  compared with like (with ``--predictions`` also the prediction ``ValueDrift`` on the same scores).
  Peak RSS is given for the whole process (which had to read the 1M rows to build the frames) and
  for the timed part alone (VmHWM reset through /proc/self/clear_refs once only the frames remain).
* ``evidently (full)``  the same, on all current rows of the window instead of the sample (reference
  unchanged), to show what sampling saves. Skipped with ``--no-full``; killed after ``--full-timeout``.

overhead = (flywheel wall - evidently sampled wall) / evidently sampled wall; targets: wall < 60 s,
peak RSS < 2 GiB, overhead < 25 %. Sampled contenders run ``--repeats`` times, interleaved; the table
shows the fastest and the median, memory the worst run. On a shared machine the load changes between
processes, so the same ratio is also taken inside each flywheel run (its wall time against the time
its own Evidently calls took there: Report.run + dict, get_html_str, the second dict) and must pass too. With ``--profile auto`` (default) a missed
target triggers one extra cProfile run of the check (not in the table): bench/results/drift_profile.txt.

The summary goes to Kafka on a private broker (bench.common.kafka_broker, own folder under
.local/bench-drift-kafka; the metrics topic is created before measuring). ``--no-kafka`` points
the check at a closed port with FLYWHEEL_BROKER_TIMEOUT_S=1 instead: ``publish_summary`` then waits
up to 1 s, which stays inside the measured time.

Prints markdown tables and writes bench/results/drift.json (drift_predictions.json with --predictions).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    GIB,
    MIB,
    REPO,
    RESULTS_DIR,
    Measured,
    busy_cores,
    cpu_jiffies,
    fresh_dir,
    kafka_broker,
    markdown_table,
    profile_summary,
    reset_peak_rss,
    run_function,
    vmhwm_bytes,
    write_results,
)

SPEC_PATH = REPO / "include" / "specs" / "fraud.yaml"
STORE_DIR = REPO / ".local" / "bench-drift-store"
KAFKA_DIR = REPO / ".local" / "bench-drift-kafka"
MARKER = "_bench_drift_marker.json"  # not under topics/, models/ or reports/: no flywheel reader sees it
PARTITIONS = 4
HISTORY_START = datetime(2026, 11, 20, tzinfo=UTC)
HISTORY_RATE_PER_S = 5.0
CURRENT_RATE_PER_S = 600.0  # 1M events in 27.8 min: inside the spec's 30-minute window
DRAIN_EVERY_S = 300  # the spec's drain.schedule_minutes: one chunk per partition per 5 minutes
SEED = 7
TARGET_WALL_S = 60.0
TARGET_PEAK_BYTES = 2 * GIB
TARGET_OVERHEAD = 0.25
CLOSED_PORT_BOOTSTRAP = "127.0.0.1:1"


# -- small helpers -----------------------------------------------------------------------------------


def _spec() -> Any:
    from flywheel.specs import load_spec

    return load_spec(SPEC_PATH)


def _settings(store_dir: str, bootstrap: str | None = None) -> Any:
    """Settings from a clean environment (the caller's FLYWHEEL_* must not change what is measured)."""
    from flywheel.settings import Settings

    overrides: dict[str, Any] = {"store_url": Path(store_dir).as_uri(), "specs_dir": SPEC_PATH.parent}
    if bootstrap:
        overrides["kafka_bootstrap"] = bootstrap
    else:  # no broker: a closed port, and publish_summary's flush gives up after 1 s
        overrides |= {"kafka_bootstrap": CLOSED_PORT_BOOTSTRAP, "broker_timeout_s": 1.0}
    return Settings.from_env({"FLYWHEEL_HOME": str(REPO)}).with_overrides(**overrides)


def history_as_of(history_rows: int) -> datetime:
    """Training cut-off: one hour after the last history event (all labels are in)."""
    return HISTORY_START + timedelta(seconds=history_rows / HISTORY_RATE_PER_S) + timedelta(hours=1)


def current_start(history_rows: int) -> datetime:
    # An hour after training, at hh:17 so the 30-minute window spans two hour folders, as it mostly will.
    t = history_as_of(history_rows) + timedelta(hours=1)
    return t.replace(minute=17, second=0, microsecond=0)


def drift_as_of(history_rows: int) -> datetime:
    return current_start(history_rows) + timedelta(minutes=30)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _preimport() -> dict[str, float]:
    """Import what the check imports lazily, before any clock: seconds per module."""
    out = {}
    for name in ("pandas", "evidently", "evidently.presets", "evidently.metrics", "sklearn.metrics", "lightgbm",
                 "confluent_kafka", "flywheel.monitoring.drift"):
        started = time.perf_counter()
        __import__(name)
        out[name] = round(time.perf_counter() - started, 3)
    return out


# -- setup: the store, as the drain writes it --------------------------------------------------------


class _DrainWriter:
    """Buffers records per (topic, partition) and writes them as the drain would: decode_batch + _write_rows."""

    def __init__(self, settings: Any, spec: Any, store: Any, kinds: list[str]) -> None:
        from flywheel.drain import limits_for
        from flywheel.drain.chunk import ChunkWriter
        from flywheel.events.schema import topic_schemas

        self.limits = limits_for(spec)
        self.schemas = {s.kind: s for s in topic_schemas(spec) if s.kind in kinds}
        self.drains = {k: ChunkWriter(store, s, settings.parquet_compression) for k, s in self.schemas.items()}
        self.buffers: dict[tuple[str, int], tuple[list, list, list, list]] = {
            (k, p): ([], [], [], []) for k in self.schemas for p in range(PARTITIONS)}
        self.next_offset = {(k, p): 0 for k in self.schemas for p in range(PARTITIONS)}
        self.stats: dict[str, Any] = {"decode_s": 0.0, "write_s": 0.0, "files": dict.fromkeys(self.schemas, 0),
                                      "rows": dict.fromkeys(self.schemas, 0), "chunks": 0,
                                      "value_bytes": dict.fromkeys(self.schemas, 0)}

    def add(self, kind: str, key: bytes, value: bytes, stamp_ms: int) -> None:
        p = zlib.crc32(key) % PARTITIONS  # librdkafka's consistent partitioner
        values, offsets, stamps, keys = self.buffers[(kind, p)]
        values.append(value)
        offsets.append(self.next_offset[(kind, p)])
        stamps.append(stamp_ms)
        keys.append(key)
        self.next_offset[(kind, p)] += 1
        self.stats["value_bytes"][kind] += len(value)

    def flush_all(self) -> None:
        for kind, p in list(self.buffers):
            self.flush(kind, p)

    def flush(self, kind: str, p: int) -> None:
        from flywheel.events.decode import RawBatch, decode_batch

        values, offsets, stamps, keys = self.buffers[(kind, p)]
        if not values:
            return
        schema = self.schemas[kind]
        started = time.perf_counter()
        decoded = decode_batch(schema, RawBatch(schema.topic, p, values, offsets, stamps, keys),
                               max_event_bytes=self.limits.max_event_bytes)
        self.stats["decode_s"] += time.perf_counter() - started
        if decoded.rejected:
            raise RuntimeError(f"{schema.topic}[{p}]: {len(decoded.rejected)} events rejected: "
                               f"{decoded.reason_counts()}")
        started = time.perf_counter()
        files = self.drains[kind].write_rows(decoded, p, offsets[0], offsets[-1])
        self.stats["write_s"] += time.perf_counter() - started
        self.stats["files"][kind] += len(files)
        self.stats["rows"][kind] += decoded.table.num_rows
        self.stats["chunks"] += 1
        for buffer in self.buffers[(kind, p)]:
            buffer.clear()


def _stamp_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def build_store(store_dir: str, rows: int, history_rows: int, predictions: bool) -> dict[str, Any]:
    """History + champion, then the drifted current window (and its predictions and labels if asked)."""
    import numpy as np
    import orjson
    from flywheel.demo.generator import event_stream
    from flywheel.models.store import ModelStore
    from flywheel.training import pipeline

    spec = _spec()
    settings = _settings(store_dir)
    store = settings.open_store()
    dumps = orjson.dumps
    out: dict[str, Any] = {}
    started = time.perf_counter()

    # 1. stationary history with labels, and a champion trained on it
    writer = _DrainWriter(settings, spec, store, ["features", "labels"])
    for e in event_stream(history_rows, seed=SEED, start=HISTORY_START, rate_per_s=HISTORY_RATE_PER_S, prefix="h"):
        key, stamp = e.features["event_id"].encode(), _stamp_ms(e.features["event_time"])
        writer.add("features", key, dumps(e.features), stamp)
        writer.add("labels", key, dumps(e.label), stamp)
    writer.flush_all()
    out["history"] = writer.stats
    out["history_s"] = round(time.perf_counter() - started, 2)

    t = time.perf_counter()
    pipeline.publish_model_event = lambda *_a, **_k: None  # setup: no broker needed for the model event
    trained = pipeline.train_challenger(settings, spec, as_of=history_as_of(history_rows), run_id="bench-drift")
    if trained.get("status") != "trained":
        raise RuntimeError(f"could not train the champion: {trained}")
    version = trained["version"]
    validated = pipeline.validate_challenger(settings, spec, version)
    promoted = pipeline.promote_or_reject(settings, spec, version, run_id="bench-drift")
    models = ModelStore(store)
    if promoted["status"] != "promoted":  # e.g. the latency gate on a loaded machine: not what is measured here
        models.set_champion(spec.name, version, expected_etag=None, action="promote", run_id="bench-drift",
                            reason=f"bench setup; gates said: {promoted.get('reason')}")
    reference_rows = len(__import__("pyarrow.parquet", fromlist=["x"]).read_table(
        __import__("pyarrow").BufferReader(models.load_file(spec.name, version, "reference.parquet"))))
    out["champion"] = {"version": version, "auc": validated["auc"], "promotion": promoted["status"],
                       "gate_failures": validated["failed"], "reference_rows": reference_rows,
                       "train_s": round(time.perf_counter() - t, 2)}

    # 2. the drifted current window, drained every 5 minutes of event time
    t = time.perf_counter()
    kinds = ["features", "labels", "predictions"] if predictions else ["features"]
    writer = _DrainWriter(settings, spec, store, kinds)
    booster = None
    if predictions:
        from flywheel.training.model import load_booster

        booster = load_booster(models.load_file(spec.name, version))
        names = spec.feature_names
    start = current_start(history_rows)
    next_drain = _stamp_ms(start.isoformat()) + DRAIN_EVERY_S * 1000
    pending: list[Any] = []

    def score_and_add(events: list[Any]) -> None:
        if not events:
            return
        if booster is not None:
            X = np.array([[np.nan if ev.features[n] is None else float(ev.features[n]) for n in names]
                          for ev in events])
            scores = booster.predict(X, num_threads=1)
        for i, ev in enumerate(events):
            f = ev.features
            key, stamp = f["event_id"].encode(), _stamp_ms(f["event_time"])
            writer.add("features", key, dumps(f), stamp)
            if booster is not None:
                s = float(scores[i])
                writer.add("predictions", key, dumps({
                    "event_id": f["event_id"], "score": s, "decision": s >= spec.scoring.threshold,
                    "model_version": str(version), "event_time": f["event_time"],
                    "source_ts_ms": stamp, "scored_at_ms": stamp + 5}), stamp + 5)
                writer.add("labels", key, dumps(ev.label), stamp)

    for e in event_stream(rows, seed=SEED + 1, start=start, rate_per_s=CURRENT_RATE_PER_S, drift_after=0,
                          prefix="c"):
        if _stamp_ms(e.features["event_time"]) >= next_drain:
            score_and_add(pending)
            pending = []
            writer.flush_all()  # one drain run
            next_drain += DRAIN_EVERY_S * 1000
        pending.append(e)
        if len(pending) >= 20_000:
            score_and_add(pending)
            pending = []
    score_and_add(pending)
    writer.flush_all()
    out["current"] = writer.stats
    out["current_s"] = round(time.perf_counter() - t, 2)
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["bytes_on_disk"] = {kind: sum(f.stat().st_size for f in (Path(store_dir) / "topics" / s.topic).rglob("*.parquet"))
                            for kind, s in writer.schemas.items()}
    out["params"] = {"rows": rows, "history_rows": history_rows, "predictions": predictions, "seed": SEED,
                     "current_rate_per_s": CURRENT_RATE_PER_S, "partitions": PARTITIONS,
                     "drain_every_s": DRAIN_EVERY_S, "as_of": drift_as_of(history_rows).isoformat()}
    (Path(store_dir) / MARKER).write_text(json.dumps(out, indent=1))
    return out


def prepare_store(rows: int, history_rows: int, predictions: bool, reuse: bool, log_dir: Path) -> dict[str, Any]:
    """A store holding exactly this run's data (rebuilt unless ``reuse`` and it matches); no reports."""
    import shutil

    marker = STORE_DIR / MARKER
    if reuse and marker.exists():
        stats = json.loads(marker.read_text())
        p = stats.get("params", {})
        if (p.get("rows"), p.get("history_rows"), p.get("predictions"), p.get("as_of")) == (
                rows, history_rows, predictions, drift_as_of(history_rows).isoformat()):
            shutil.rmtree(STORE_DIR / "reports", ignore_errors=True)
            return {**stats, "reused": True}
    store = fresh_dir(STORE_DIR)
    m = run_function(build_store, {"store_dir": str(store), "rows": rows, "history_rows": history_rows,
                                   "predictions": predictions}, timeout_s=3600, log_dir=log_dir).check()
    return {**m.result["value"], "reused": False, "process_wall_s": round(m.wall_s, 2),
            "peak_rss_mib": round(m.peak_rss_bytes / MIB, 1)}


# -- contender 1: run_drift_check --------------------------------------------------------------------


class _Timers:
    """Wall time of every call of named functions, wrapped in place for the duration of a block.

    A call made inside another timed call is marked nested, so the top-level calls add up to no more
    than the wall time and the rest of the wall time can be reported as unattributed.
    """

    def __init__(self) -> None:
        self.durations: dict[str, list[tuple[float, bool]]] = {}
        self.depth = 0

    def wrap(self, owner: Any, attr: str, name: str) -> Callable[[], None]:
        own = attr in vars(owner)  # a class may inherit it: then restoring means deleting ours
        original = vars(owner)[attr] if own else getattr(owner, attr)
        target = getattr(owner, attr)  # for a class: the plain function, called with self among args
        durations = self.durations.setdefault(name, [])
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            nested = timers.depth > 0
            timers.depth += 1
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                durations.append((time.perf_counter() - started, nested))
                timers.depth -= 1

        setattr(owner, attr, timed)
        return (lambda: setattr(owner, attr, original)) if own else (lambda: delattr(owner, attr))

    @contextlib.contextmanager
    def installed(self, targets: list[tuple[Any, str, str]]) -> Iterator[_Timers]:
        undo = [self.wrap(owner, attr, name) for owner, attr, name in targets]
        try:
            yield self
        finally:
            for u in reversed(undo):
                u()

    def top_level_s(self) -> float:
        return sum(d for v in self.durations.values() for d, nested in v if not nested)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: {"seconds": round(sum(d for d, _ in v), 4), "calls": len(v),
                    "top_level_seconds": round(sum(d for d, n in v if not n), 4),
                    "each": [round(d, 4) for d, _ in v]}
                for k, v in self.durations.items() if v}


def _timed_targets() -> list[tuple[Any, str, str]]:
    from evidently.core.report import Snapshot
    from flywheel.models.store import ModelStore
    from flywheel.monitoring import drift
    from flywheel.storage.local import LocalStore

    return [
        (drift, "read_topic", "read_topic"),
        (ModelStore, "load_file", "models.load_file"),
        (drift, "_sample", "sample"),
        (drift, "to_matrix", "to_matrix"),
        (drift, "evidently_data_drift", "evidently_data_drift"),
        (drift, "evidently_value_drift", "evidently_value_drift"),
        (drift, "live_quality", "live_quality"),
        (Snapshot, "get_html_str", "evidently.get_html_str"),
        (Snapshot, "dict", "evidently.snapshot_dict"),
        (LocalStore, "put", "store.put"),
        (drift, "publish_summary", "publish_summary"),
    ]


def _callees(pstats_path: str, func: str, top: int = 12) -> list[dict[str, Any]]:
    """Direct callees of ``func`` by cumulative time (what the function itself spends its time on)."""
    import pstats

    stats = pstats.Stats(pstats_path)
    parent = next((k for k in stats.stats if k[2] == func), None)  # type: ignore[attr-defined]
    if parent is None:
        return []
    rows = []
    for key, (*_, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if parent in callers:
            _cc, nc_, _tt, ct_ = callers[parent]
            file, line, name = key
            label = f"{Path(file).parent.name}/{Path(file).name}:{line}({name})" if file != "~" else name
            rows.append({"function": label, "ncalls": nc_, "cumtime_s": round(ct_, 3)})
    return sorted(rows, key=lambda r: -r["cumtime_s"])[:top]


def run_flywheel(store_dir: str, as_of: str, bootstrap: str | None, profile_path: str | None = None,
                 top: int = 15) -> dict[str, Any]:
    """``run_drift_check`` end to end, with a timer breakdown (and cProfile if asked)."""
    imports = _preimport()
    from flywheel.monitoring.drift import run_drift_check

    spec = _spec()
    settings = _settings(store_dir, bootstrap)
    when = datetime.fromisoformat(as_of)
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
    gc.collect()
    rss_before = _rss_bytes()
    timers = _Timers()
    busy0, cpu0 = cpu_jiffies(), time.process_time()
    with timers.installed([] if profiler else _timed_targets()):  # profiled: callees stay direct
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        summary = run_drift_check(settings, spec, when)
        wall = time.perf_counter() - t0
        if profiler:
            profiler.disable()
    cpu, busy1 = time.process_time() - cpu0, cpu_jiffies()
    if summary.get("status") != "checked":
        raise RuntimeError(f"run_drift_check did not check: {summary}")
    out: dict[str, Any] = {
        "wall_s": wall, "cpu_s": cpu, "machine_busy_cores": busy_cores(busy0, busy1),
        "seconds_reported": summary["seconds"], "timers": timers.as_dict(), "rows": summary["rows"],
        # window filter, reference read, frames, summary building: what no timer covers
        "unattributed_s": wall - timers.top_level_s(),
        "drift_share": summary["drift_share"], "drifted_columns": summary["drifted_columns"],
        "empty_columns": summary["empty_columns"], "data_drift": summary["data_drift"],
        "prediction_drift": summary["prediction_drift"], "live_quality": summary["live_quality"],
        "imports_s": imports, "rss_before_call_bytes": rss_before, "kafka": bootstrap or CLOSED_PORT_BOOTSTRAP,
        "report_bytes": {n: (Path(store_dir) / summary["report_html"].split(Path(store_dir).as_uri() + "/")[-1]
                             ).parent.joinpath(n).stat().st_size
                         for n in ("drift.html", "evidently.json", "summary.json")},
    }
    if profiler:
        assert profile_path
        out["top_cumtime"] = profile_summary(profiler, profile_path, top, exclude_file=__file__)
        out["run_drift_check_callees"] = _callees(profile_path + ".pstats", "run_drift_check")
        out["publish_summary_callees"] = _callees(profile_path + ".pstats", "publish_summary")
    return out


# -- contenders 2 and 3: Evidently alone -------------------------------------------------------------


def _frames(store_dir: str, as_of: datetime, sample: bool, predictions: bool) -> dict[str, Any]:
    """The frames run_drift_check hands to Evidently, built the same way (with ``sample``: same seeds)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from flywheel.drain.reader import read_topic
    from flywheel.features import to_matrix
    from flywheel.models.store import ModelStore
    from flywheel.monitoring.drift import _sample

    spec = _spec()
    store = _settings(store_dir).open_store()
    models = ModelStore(store)
    champion = models.champion(spec.name)
    assert champion is not None
    since = as_of - spec.drift.window
    version = models.get_version(spec.name, champion.version)
    reference_table = pq.read_table(pa.BufferReader(models.load_file(spec.name, champion.version, "reference.parquet")))
    time_field = spec.event_time_field or "_timestamp"
    current_table = read_topic(store, spec.topics.features, since, as_of, columns=[*spec.feature_names, time_field])
    assert current_table is not None
    current_table = current_table.filter(pc.and_(pc.greater_equal(current_table.column(time_field), pa.scalar(since)),
                                                 pc.less(current_table.column(time_field), pa.scalar(as_of))))
    rows_in_window = current_table.num_rows
    if sample:
        current_table = _sample(current_table, spec.drift.sample_rows, seed=int(as_of.timestamp()))
    reference_table = _sample(reference_table, spec.drift.sample_rows, seed=0)
    schema = version.metadata["feature_schema"]
    empty = [e["name"] for e in schema if current_table.column(e["name"]).null_count == current_table.num_rows
             or reference_table.column(e["name"]).null_count == reference_table.num_rows]
    columns = [e["name"] for e in schema if e["name"] not in empty]
    names = [e["name"] for e in schema]
    out: dict[str, Any] = {
        "current": pd.DataFrame(to_matrix(current_table, schema), columns=names)[columns],
        "reference": pd.DataFrame(to_matrix(reference_table, schema), columns=names)[columns],
        "columns": columns, "rows_in_window": rows_in_window,
    }
    if predictions:
        import lightgbm as lgb

        preds = read_topic(store, spec.topics.predictions, since, as_of, columns=["score"])
        if preds is not None and preds.num_rows:
            holdout = pq.read_table(pa.BufferReader(models.load_file(spec.name, champion.version, "holdout.parquet")))
            booster = lgb.Booster(model_str=models.load_file(spec.name, champion.version).decode())
            ref_scores = booster.predict(np.column_stack([holdout.column(n).to_numpy() for n in names]), num_threads=1)
            now = (_sample(preds, spec.drift.sample_rows, seed=1) if sample else preds).column("score").to_numpy()
            out["score_now"] = pd.DataFrame({"score": now})
            out["score_ref"] = pd.DataFrame({"score": ref_scores})
    return out


def run_evidently(store_dir: str, as_of: str, sample: bool = True, predictions: bool = False) -> dict[str, Any]:
    """Evidently on the frames run_drift_check builds; only Evidently's own calls are timed."""
    imports = _preimport()
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    f = _frames(store_dir, datetime.fromisoformat(as_of), sample, predictions)
    frames_s = time.perf_counter() - started
    current, reference, columns = f.pop("current"), f.pop("reference"), f.pop("columns")
    score_now, score_ref = f.pop("score_now", None), f.pop("score_ref", None)
    gc.collect()
    rss_before = _rss_bytes()
    reset = reset_peak_rss()
    steps: dict[str, float] = {}
    busy0, cpu0 = cpu_jiffies(), time.process_time()
    t = t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = now - t
        t = now

    snapshot = Report([DataDriftPreset(columns=columns)]).run(current, reference)
    lap("data_drift_run")
    result = snapshot.dict()
    lap("snapshot_dict")
    if score_now is not None:
        value_snapshot = Report([ValueDrift(column="score")]).run(score_now, score_ref)
        value_snapshot.dict()
        lap("prediction_drift_run_and_dict")
    html = snapshot.get_html_str(as_iframe=False)
    lap("get_html_str")
    body = json.dumps(result, default=str)
    lap("json_dumps")
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        Path(tmp, "drift.html").write_bytes(html.encode())
        Path(tmp, "evidently.json").write_bytes(body.encode())
    lap("write_files")
    wall = time.perf_counter() - t0
    cpu, busy1 = time.process_time() - cpu0, cpu_jiffies()
    drifted = sum(1 for m in result["metrics"] if m.get("config", {}).get("type", "").endswith("ValueDrift")
                  and _is_drifted(m))
    return {
        "wall_s": wall, "steps_s": steps, "cpu_s": cpu, "machine_busy_cores": busy_cores(busy0, busy1),
        # what flywheel's evidently_data_drift() covers: Report.run + snapshot.dict()
        "evidently_data_drift_s": steps["data_drift_run"] + steps["snapshot_dict"],
        "frames_s_untimed": frames_s, "imports_s": imports, "rows_current": len(current),
        "rows_reference": len(reference), "rows_in_window": f["rows_in_window"], "columns": len(columns),
        "drifted_columns": drifted, "rss_before_timed_bytes": rss_before,
        "timed_peak_rss_bytes": vmhwm_bytes() if reset else None, "html_bytes": len(html), "json_bytes": len(body),
    }


def _is_drifted(metric: dict[str, Any]) -> bool:
    from flywheel.monitoring.drift import _drifted

    c = metric["config"]
    return _drifted(c["method"], float(metric["value"]), c["threshold"])


# -- orchestration and report ------------------------------------------------------------------------


def _measure(fn: Callable[..., Any], kwargs: dict[str, Any], log_dir: Path, timeout_s: float = 1800) -> dict[str, Any]:
    m: Measured = run_function(fn, kwargs, timeout_s=timeout_s, log_dir=log_dir)
    if not m.ok:
        return {"ok": False, "returncode": m.returncode, "process_wall_s": m.wall_s,
                "peak_rss_bytes": m.peak_rss_bytes, "peak_rss_source": m.peak_rss_source,
                "stderr_tail": m.stderr_tail[-1500:]}
    return {"ok": True, **m.result["value"], "process_wall_s": m.wall_s, "peak_rss_bytes": m.peak_rss_bytes,
            "peak_rss_source": m.peak_rss_source, "process_cpu_s": m.cpu_s}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mib(b: float | None) -> str:
    return "-" if not b else f"{b / MIB:,.0f}"


def report(fly: list[dict[str, Any]], evs: list[dict[str, Any]], full: dict[str, Any] | None,
           rows: int) -> tuple[str, dict[str, Any]]:
    fly_ok = [r for r in fly if r["ok"]]
    ev_ok = [r for r in evs if r["ok"]]
    if not fly_ok or not ev_ok:
        raise RuntimeError("a contender failed every run: " + json.dumps([r for r in fly + evs if not r["ok"]])[:3000])
    fw = [r["wall_s"] for r in fly_ok]
    ew = [r["wall_s"] for r in ev_ok]
    f_min, f_med, e_min, e_med = min(fw), statistics.median(fw), min(ew), statistics.median(ew)
    f_peak = max(r["peak_rss_bytes"] for r in fly_ok)
    e_peak = max(r["peak_rss_bytes"] for r in ev_ok)
    e_timed_peak = max((r["timed_peak_rss_bytes"] or 0) for r in ev_ok)
    e_timed_growth = max((r["timed_peak_rss_bytes"] or 0) - r["rss_before_timed_bytes"] for r in ev_ok)
    overhead_min = (f_min - e_min) / e_min
    overhead_med = (f_med - e_med) / e_med
    # Paired: each flywheel run against the Evidently run next to it (same machine load, roughly).
    paired = [(a["wall_s"] - b["wall_s"]) / b["wall_s"] for a, b in zip(fly_ok, ev_ok, strict=False)]
    # Internal: flywheel's total against Evidently's time inside the same run (immune to drift between runs).
    internal = [(r["wall_s"] - _evidently_inside(r)) / _evidently_inside(r) for r in fly_ok]
    internal_med = statistics.median(internal)
    verdicts = {
        "wall_under_60s": f_med < TARGET_WALL_S,
        "peak_under_2gib": f_peak < TARGET_PEAK_BYTES,
        # the definition: flywheel's wall against the Evidently-alone process's, medians of interleaved runs
        "overhead_under_25pct": overhead_med < TARGET_OVERHEAD,
        # the same ratio inside each flywheel run (Evidently's own time there): immune to the load on a
        # shared machine changing between processes, so it must pass too
        "overhead_under_25pct_same_run": internal_med < TARGET_OVERHEAD,
    }
    f0 = fly_ok[0]
    f_cpu, e_cpu = statistics.median(r["cpu_s"] for r in fly_ok), statistics.median(r["cpu_s"] for r in ev_ok)
    headers = ["contender", "current rows -> Evidently", "wall s (min)", "wall s (median)", "CPU s (median)", "peak RSS MiB",
               "timed-part peak MiB (+growth)", "machine busy cores", "what is timed"]
    table_rows = [
        ["flywheel `run_drift_check`", f"{f0['rows']['current_in_window']:,} -> {f0['rows']['current_sampled']:,} "
         f"(ref {f0['rows']['reference']:,})", _fmt(f_min), _fmt(f_med), _fmt(f_cpu), _mib(f_peak), "-",
         _fmt(statistics.median(r["machine_busy_cores"] for r in fly_ok)),
         "whole call: read + filter + sample + to_matrix + Evidently + live quality + HTML/JSON + publish"],
        ["Evidently alone, sampled frames", f"{ev_ok[0]['rows_current']:,} (ref {ev_ok[0]['rows_reference']:,})",
         _fmt(e_min), _fmt(e_med), _fmt(e_cpu), _mib(e_peak), f"{_mib(e_timed_peak)} (+{_mib(e_timed_growth)})",
         _fmt(statistics.median(r["machine_busy_cores"] for r in ev_ok)),
         "Report.run + dict + get_html_str + json.dumps (+ write)"],
    ]
    if full is not None:
        if full["ok"]:
            table_rows.append(["Evidently alone, FULL window (no sampling)",
                               f"{full['rows_current']:,} (ref {full['rows_reference']:,})", _fmt(full["wall_s"]),
                               "(1 run)", _fmt(full["cpu_s"]), _mib(full["peak_rss_bytes"]),
                               f"{_mib(full['timed_peak_rss_bytes'])} (+{_mib(full['timed_peak_rss_bytes'] - full['rss_before_timed_bytes'])})",
                               _fmt(full["machine_busy_cores"]), "same as above"])
        else:
            table_rows.append(["Evidently alone, FULL window (no sampling)", f"{rows:,}",
                               f"did not finish (rc {full['returncode']}, {full['process_wall_s']:.0f} s)", "-", "-",
                               _mib(full["peak_rss_bytes"]), "-", "-", "killed at the timeout" if
                               full["returncode"] == -9 else "failed"])
    lines = [f"### Drift check on {rows:,} current rows x 20 features", "", markdown_table(headers, table_rows, "llrrrrrrl"), ""]
    lines.append(markdown_table(
        ["measure", "value", "target", "verdict"],
        [["flywheel wall (median)", f"{f_med:.2f} s", f"< {TARGET_WALL_S:.0f} s", "PASS" if verdicts["wall_under_60s"] else "MISS"],
         ["flywheel peak RSS (worst)", f"{f_peak / MIB:,.0f} MiB", "< 2,048 MiB", "PASS" if verdicts["peak_under_2gib"] else "MISS"],
         ["overhead vs Evidently (medians)", f"{overhead_med:+.1%}", "< +25%", "PASS" if verdicts["overhead_under_25pct"] else "MISS"],
         ["overhead vs Evidently (fastest runs)", f"{overhead_min:+.1%}", "", ""],
         ["overhead, paired runs", ", ".join(f"{p:+.1%}" for p in paired), "", ""],
         ["overhead vs Evidently's own time inside the same run (median)", f"{internal_med:+.1%}", "< +25%",
          "PASS" if verdicts["overhead_under_25pct_same_run"] else "MISS"],
         ["... per run", ", ".join(f"{p:+.1%}" for p in internal), "", ""],
         ["CPU-time overhead (medians; publish waits cost no CPU)", f"{(f_cpu - e_cpu) / e_cpu:+.1%}", "", ""]],
        "lrrl"))
    lines += ["", "flywheel breakdown (median over runs, seconds; top-level = not inside another timed call):", ""]
    med = lambda values: statistics.median(list(values))  # noqa: E731
    names = sorted({k for r in fly_ok for k in r["timers"]}, key=lambda k: -med(
        r["timers"].get(k, {}).get("top_level_seconds", 0.0) for r in fly_ok))
    breakdown = {k: {"top_level_s": med(r["timers"].get(k, {}).get("top_level_seconds", 0.0) for r in fly_ok),
                     "all_calls_s": med(r["timers"].get(k, {}).get("seconds", 0.0) for r in fly_ok),
                     "calls": max(r["timers"].get(k, {}).get("calls", 0) for r in fly_ok)} for k in names}
    breakdown["(unattributed: window filter of the full table, reference read, frames, summary)"] = {
        "top_level_s": med(r["unattributed_s"] for r in fly_ok), "all_calls_s": None, "calls": ""}
    reported = {k: med(r["seconds_reported"][k] for r in fly_ok) for k in ("total", "evidently")}
    rows_b = [[k, _fmt(v["top_level_s"], 3), _fmt(v["all_calls_s"], 3), v["calls"]] for k, v in breakdown.items()]
    rows_b.append(["(run_drift_check's own `seconds.total` / `seconds.evidently`, before HTML/put/publish)",
                   f"{reported['total']:.3f} / {reported['evidently']:.3f}", "", ""])
    lines.append(markdown_table(["part", "top-level s", "all calls s", "calls"], rows_b))
    no_publish = [(r["wall_s"] - r["timers"].get("publish_summary", {}).get("top_level_seconds", 0.0)
                   - _evidently_inside(r)) / _evidently_inside(r) for r in fly_ok]
    lines += ["", "Informational, not the verdict: overhead inside each run without publish_summary's time: "
              + ", ".join(f"{x:+.1%}" for x in no_publish)]
    ev_steps = {k: statistics.median(r["steps_s"][k] for r in ev_ok) for k in ev_ok[0]["steps_s"]}
    lines += ["", "Evidently alone, sampled (median, seconds): " + ", ".join(f"{k} {v:.3f}" for k, v in ev_steps.items())]
    if full is not None and full["ok"]:
        lines.append("Evidently alone, full window (seconds): " + ", ".join(f"{k} {v:.3f}" for k, v in full["steps_s"].items()))
    summary = {
        "flywheel_wall_s": {"min": f_min, "median": f_med, "runs": fw},
        "evidently_sampled_wall_s": {"min": e_min, "median": e_med, "runs": ew},
        "evidently_full_wall_s": full.get("wall_s") if full and full["ok"] else None,
        "flywheel_peak_rss_mib": round(f_peak / MIB, 1), "evidently_sampled_peak_rss_mib": round(e_peak / MIB, 1),
        "evidently_sampled_timed_peak_rss_mib": round(e_timed_peak / MIB, 1),
        "evidently_sampled_timed_growth_mib": round(e_timed_growth / MIB, 1),
        "evidently_full_peak_rss_mib": round(full["peak_rss_bytes"] / MIB, 1) if full else None,
        "overhead_median": overhead_med, "overhead_min": overhead_min, "overhead_paired": paired,
        "overhead_internal": internal, "overhead_internal_median": internal_med, "overhead_internal_without_publish": no_publish,
        "flywheel_breakdown_median_s": breakdown,
        "flywheel_seconds_reported_median": reported, "evidently_sampled_steps_median_s": ev_steps,
        "cpu_s_median": {"flywheel": f_cpu, "evidently_sampled": e_cpu}, "verdicts": verdicts, "targets": {"wall_s": TARGET_WALL_S, "peak_bytes": TARGET_PEAK_BYTES,
                                          "overhead": TARGET_OVERHEAD},
    }
    return "\n".join(lines), summary


def _evidently_inside(r: dict[str, Any]) -> float:
    """Evidently's own time inside one flywheel run: what the Evidently-alone contender times.

    evidently_data_drift (Report.run + snapshot.dict) + evidently_value_drift (if any) + get_html_str
    + the snapshot.dict() run_drift_check calls again for evidently.json (the one not nested in those).
    """
    t = r["timers"]
    get = lambda k: t.get(k, {}).get("top_level_seconds", 0.0)  # noqa: E731
    return get("evidently_data_drift") + get("evidently_value_drift") + get("evidently.get_html_str") + get(
        "evidently.snapshot_dict")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="current rows in the drift window")
    parser.add_argument("--history-rows", type=int, default=40_000, help="stationary rows the champion trains on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predictions", action="store_true",
                        help="also drain predictions and labels: prediction drift and live quality run too")
    parser.add_argument("--no-full", action="store_true", help="skip Evidently on the full, unsampled window")
    parser.add_argument("--full-timeout", type=float, default=240.0)
    parser.add_argument("--no-kafka", action="store_true", help="closed port + 1 s broker timeout instead of a broker")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--reuse-store", action="store_true")
    args = parser.parse_args(argv)
    if args.rows / CURRENT_RATE_PER_S > 30 * 60:
        parser.error(f"--rows {args.rows} at {CURRENT_RATE_PER_S:g}/s spans more than the 30-minute window")

    log_dir = RESULTS_DIR / "logs" / "drift"
    as_of = drift_as_of(args.history_rows).isoformat()
    print(f"bench: setting up {args.rows:,} current rows in {STORE_DIR} ...", file=sys.stderr)
    setup = prepare_store(args.rows, args.history_rows, args.predictions, args.reuse_store, log_dir / "setup")
    print(f"bench: setup {setup.get('seconds')} s (champion {setup['champion']})", file=sys.stderr)
    data: dict[str, Any] = {"params": {**vars(args), "as_of": as_of, "store": str(STORE_DIR)}, "setup": setup}

    broker_ctx = contextlib.nullcontext(None) if args.no_kafka else kafka_broker(data_root=KAFKA_DIR)
    with broker_ctx as broker:
        bootstrap = broker.bootstrap if broker else None
        if broker:
            _create_metrics_topic(bootstrap)
        fly: list[dict[str, Any]] = []
        evs: list[dict[str, Any]] = []
        for i in range(args.repeats):  # interleaved, so both sides see the same machine load on average
            print(f"bench: round {i + 1}/{args.repeats}: evidently (sampled) ...", file=sys.stderr)
            evs.append(_measure(run_evidently, {"store_dir": str(STORE_DIR), "as_of": as_of, "sample": True,
                                                "predictions": args.predictions}, log_dir / f"evidently-{i}"))
            print(f"bench: round {i + 1}/{args.repeats}: flywheel ...", file=sys.stderr)
            fly.append(_measure(run_flywheel, {"store_dir": str(STORE_DIR), "as_of": as_of, "bootstrap": bootstrap},
                                log_dir / f"flywheel-{i}"))
            print(f"bench:   flywheel {fly[-1].get('wall_s', float('nan')):.2f} s, evidently "
                  f"{evs[-1].get('wall_s', float('nan')):.2f} s", file=sys.stderr)
        full = None
        if not args.no_full:
            print("bench: evidently on the full window ...", file=sys.stderr)
            full = _measure(run_evidently, {"store_dir": str(STORE_DIR), "as_of": as_of, "sample": False,
                                            "predictions": False}, log_dir / "evidently-full",
                            timeout_s=args.full_timeout)
        text, summary = report(fly, evs, full, args.rows)
        missed = not all(summary["verdicts"].values())
        if args.profile == "always" or (args.profile == "auto" and missed):
            print("bench: profiling run_drift_check ...", file=sys.stderr)
            prof = _measure(run_flywheel, {"store_dir": str(STORE_DIR), "as_of": as_of, "bootstrap": bootstrap,
                                           "profile_path": str(RESULTS_DIR / ("drift_predictions_profile" if args.predictions
                                                                             else "drift_profile"))}, log_dir / "profile")
            data["profile"] = prof
            if prof["ok"]:
                text += "\n\ncProfile of run_drift_check (one extra run, not in the table), top 15 by cumtime:\n\n"
                text += markdown_table(["function", "ncalls", "tottime s", "cumtime s"],
                                       [[p["function"], p["ncalls"], p["tottime_s"], p["cumtime_s"]]
                                        for p in prof["top_cumtime"]])
                text += "\n\nrun_drift_check's direct callees (same profile; pyarrow's compute wrapper is the window " \
                        "filter `Table.filter`):\n\n"
                text += markdown_table(["callee", "ncalls", "cumtime s"],
                                       [[p["function"], p["ncalls"], p["cumtime_s"]]
                                        for p in prof["run_drift_check_callees"] + [
                                            {**c, "function": "publish_summary -> " + c["function"]}
                                            for c in prof["publish_summary_callees"][:2]]])
    data |= {"flywheel_runs": fly, "evidently_sampled_runs": evs, "evidently_full_run": full, "summary": summary,
             "table": text}
    path = write_results("drift_predictions" if args.predictions else "drift", data)
    print(text)
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


def _create_metrics_topic(bootstrap: str) -> None:
    """The metrics topic exists in production; create it (by a first message) before measuring."""
    from confluent_kafka import Producer

    settings = _settings(str(STORE_DIR), bootstrap)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(settings.metrics_topic, key=b"bench", value=b'{"kind": "bench-warmup"}')
    if producer.flush(30):
        raise RuntimeError(f"could not create {settings.metrics_topic} on {bootstrap}")


if __name__ == "__main__":
    sys.exit(main())
