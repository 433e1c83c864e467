"""``flywheel score``: run one scorer process (one member of the model's consumer group)."""

from __future__ import annotations

import argparse
import json

from flywheel.cli import register
from flywheel.settings import Settings


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="model name or spec file")
    p.add_argument("--exactly-once", action="store_true", help="Kafka transactions: each event scored exactly once")
    p.add_argument("--compile", action="store_true",
                   help="also compile each champion to native code (lleaves) in a child process; the plain "
                        "model serves until the compiled one is ready and verified")
    p.add_argument("--member-id", default="0", help="unique per process in exactly-once mode")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--metrics-interval", type=float, default=10.0)
    p.add_argument("--max-events", type=int, help="stop after this many events (tests, benchmarks)")
    p.add_argument("--max-seconds", type=float, help="stop after this long")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from flywheel.scoring.service import ScorerOptions, run_scorer
    from flywheel.specs import find_spec, load_spec

    if Path(args.spec).is_file():
        spec = load_spec(args.spec)
    else:
        spec = find_spec(settings.specs_dir, args.spec)
    from flywheel.kafka_config import check_broker

    check_broker(settings)
    options = ScorerOptions(exactly_once=args.exactly_once, compile_model=args.compile, member_id=args.member_id,
                            batch_size=args.batch_size, metrics_interval_s=args.metrics_interval)
    metrics = run_scorer(settings, spec, options, max_events=args.max_events, max_seconds=args.max_seconds)
    print(json.dumps({"model": spec.name, "consumed": metrics.consumed, "scored": metrics.scored,
                      "dead_lettered": metrics.dead_lettered, "swaps": metrics.swaps, "predictor": metrics.predictor,
                      "scored_by": metrics.scored_by, "compile_failures": metrics.compile_failures}))
    return 0


register("score", "score a model's feature topic with its champion (one consumer-group member)", _run, _add_args)
