"""The Quix Streams peer of the drain benchmark: one topic into Parquet files with its file sink.

Runs in its own virtual environment (.cache/peers/quix-venv, from requirements-quix.txt), because
quixstreams pins an older confluent-kafka than flywheel. bench/drain_bench.py starts it as a measured
subprocess; it stops by itself once ``--count`` messages went through the sink (or no message came
for ``--idle-timeout`` seconds), commits the sink's last checkpoint, and writes its result JSON to
the path in $BENCH_RESULT.

In quixstreams 3.28 the file sink for local files is ``LocalFileSink`` (older releases spelled it
``FileSink(destination=LocalDestination())``): each checkpoint (every ``commit_interval`` seconds)
writes one Parquet file per topic-partition, ``<dir>/<topic>/<partition>/<first offset>.parquet``.
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
    parser.add_argument("--group", required=True)
    parser.add_argument("--out-dir", required=True, help="folder for the Parquet files (letters, digits, ._/ only)")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--count", type=int, required=True, help="stop after this many messages")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="stop when no message came for this long")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="quixstreams' default is 5 s")
    parser.add_argument("--compression", default="lz4", help="Parquet codec (quixstreams' default is snappy)")
    args = parser.parse_args()

    import quixstreams
    from quixstreams import Application
    from quixstreams.sinks.community.file.formats import ParquetFormat
    from quixstreams.sinks.community.file.local import LocalFileSink

    rss_before = _status_bytes("VmRSS")
    started = time.perf_counter()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        commit_interval=args.commit_interval,
        loglevel="WARNING",
        auto_create_topics=False,
        use_changelog_topics=False,
    )
    topic = app.topic(args.topic, value_deserializer="json")
    sdf = app.dataframe(topic)
    sdf.sink(LocalFileSink(directory=args.out_dir, format=ParquetFormat(compression=args.compression)))
    # count= stops after that many outputs of the dataframe (each message reaching the sink is one);
    # on stop, run() forces a final checkpoint, which flushes the sink and commits the offsets.
    app.run(count=args.count, timeout=args.idle_timeout, collect=False)
    seconds = time.perf_counter() - started

    files = sorted(Path(args.out_dir).rglob("*.parquet"))
    result = {
        "quixstreams": quixstreams.__version__,
        "confluent_kafka": _confluent_version(),
        "librdkafka": __import__("confluent_kafka").libversion()[0],
        "seconds": seconds,
        "files": len(files),
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
