"""``flywheel drain``: the drain without Airflow, for operators, tests and benchmarks."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

from flywheel.cli import register
from flywheel.settings import Settings


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("topics", nargs="*", help="topics to drain (default: every topic the specs name)")
    p.add_argument("--max-records", type=int, help="stop after this many records per topic")
    p.add_argument("--max-seconds", type=float, help="stop starting new chunks after this long per topic")
    p.add_argument("--flush-rows", type=int, help="rows per chunk (one Parquet file per event hour)")
    p.add_argument("--owner", help="name of this drainer in the ledger (default host:pid)")
    p.add_argument("--workers", type=int,
                   help="chunks decoded and written at once, one thread each (default: one per core, at most 2)")
    p.add_argument("--no-compact", action="store_true",
                   help="leave the small files of settled hours as they are (default: merge each hour into one)")
    p.add_argument("--settle-minutes", type=float, default=60.0,
                   help="only files last written this long ago are compacted (default 60)")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from flywheel.drain import drain_plan, drain_topic
    from flywheel.drain.compact import compact_topic
    from flywheel.specs import load_specs

    topics = args.topics or sorted(drain_plan(load_specs(settings.specs_dir)))
    for topic in topics:
        summary = drain_topic(settings, topic, owner=args.owner, max_records=args.max_records,
                              max_seconds=args.max_seconds, flush_rows=args.flush_rows, workers=args.workers)
        if not args.no_compact:
            summary["compaction"] = compact_topic(settings.open_store(), topic, settle=timedelta(minutes=args.settle_minutes),
                                                  compression=settings.parquet_compression, owner=args.owner or "")
        print(json.dumps(summary, sort_keys=True))
    return 0


register("drain", "drain topics named by the specs into the object store (Parquet, exactly once)", _run, _add_args)
