"""The Quix Streams peer of the scorer benchmark: one LightGBM model applied record by record.

This is the scoring app as users commonly write it with Quix Streams: a JSON-deserialised input
topic, ``sdf.apply(score)`` where ``score`` builds the feature list in the spec's order, calls
``booster.predict`` on a one-row array and returns a prediction dict, and ``sdf.to_topic`` with a
JSON serialiser. Application defaults otherwise (at-least-once, a checkpoint every 5 s). The one
deliberate deviation from the most naive version is ``num_threads=1`` in ``predict``: LightGBM's
default spreads a single row over every core through OpenMP, which is slower still; flywheel's
scorer uses one thread too, so both sides predict alike.

Runs in the Quix virtual environment (.cache/peers/quix-venv; quixstreams pins an older
confluent-kafka than flywheel), which the benchmark extends with lightgbm and numpy at the main
venv's versions. bench/scorer_bench.py starts it as a measured subprocess; it stops by itself after
``--count`` outputs (or ``--idle-timeout`` seconds without input) and writes its result JSON to the
path in $BENCH_RESULT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--model-file", required=True, help="the champion's LightGBM text model")
    parser.add_argument("--features", required=True, help="feature names in the spec's order, comma-separated")
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--key-field", default="event_id")
    parser.add_argument("--time-field", default="event_time")
    parser.add_argument("--count", type=int, required=True, help="stop after this many predictions")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="stop when no message came for this long")
    args = parser.parse_args()

    import lightgbm as lgb
    import numpy as np
    import quixstreams
    from quixstreams import Application

    rss_before = _status_bytes("VmRSS")
    load_started = time.perf_counter()
    booster = lgb.Booster(model_file=args.model_file)
    load_s = time.perf_counter() - load_started
    features = args.features.split(",")
    threshold, version = args.threshold, args.model_version
    key_field, time_field = args.key_field, args.time_field

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
        auto_create_topics=False,
        use_changelog_topics=False,
    )
    input_topic = app.topic(args.topic, value_deserializer="json")
    output_topic = app.topic(args.output_topic, value_serializer="json")
    sdf = app.dataframe(input_topic)

    marks: dict[str, float] = {}
    seen = [0]

    def score(event: dict) -> dict:
        if not seen[0]:
            marks["first_at"], marks["first_cpu"] = time.perf_counter(), time.process_time()
        seen[0] += 1
        x = np.array([[event.get(name) for name in features]], dtype=np.float64)
        p = float(booster.predict(x, num_threads=1)[0])
        if seen[0] == args.count:
            marks["last_at"], marks["last_cpu"] = time.perf_counter(), time.process_time()
        return {key_field: event[key_field], "score": p, "decision": p >= threshold, "model_version": version,
                time_field: event.get(time_field)}

    sdf = sdf.apply(score)
    sdf.to_topic(output_topic)
    started = time.perf_counter()
    # count= stops after that many outputs; on stop, run() forces a final checkpoint, which flushes
    # the producer and commits the offsets.
    app.run(count=args.count, timeout=args.idle_timeout, collect=False)
    ended, ended_cpu = time.perf_counter(), time.process_time()
    first = marks.get("first_at", ended)
    result = {
        "quixstreams": quixstreams.__version__,
        "lightgbm": lgb.__version__,
        "numpy": np.__version__,
        "confluent_kafka": _confluent_version(),
        "librdkafka": __import__("confluent_kafka").libversion()[0],
        "records": seen[0],
        "model_load_s": load_s,
        "num_trees": booster.num_trees(),
        # first record in hand -> run() returned (last output acknowledged, offsets committed, closed)
        "seconds": ended - first,
        "seconds_to_last_record": marks.get("last_at", ended) - first,
        "cpu_s": ended_cpu - marks.get("first_cpu", ended_cpu),
        "startup_s": first - started,
        "rss_before_bytes": rss_before,
        # This process's own peak RSS (ru_maxrss would include the parent's, carried over fork+exec).
        "vmhwm_bytes": _status_bytes("VmHWM"),
    }
    path = os.environ.get("BENCH_RESULT")
    if path:
        Path(path).write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


def _confluent_version() -> str:
    import confluent_kafka

    version = confluent_kafka.version()  # a (str, int) tuple in some releases, a str in others
    return version[0] if isinstance(version, tuple) else str(version)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    sys.exit(main())
