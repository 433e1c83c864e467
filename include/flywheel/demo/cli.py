"""``flywheel produce-demo``: the synthetic card-payment stream, with late labels and optional drift."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from flywheel.cli import register
from flywheel.settings import Settings


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default="fraud", help="model whose topics receive the stream (default fraud)")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=0, help="events per second to send at (0: as fast as possible)")
    p.add_argument("--event-rate", type=float, default=10.0, help="events per second of event time")
    p.add_argument("--start", help="event time of the first event (ISO; default: now minus the stream's span)")
    p.add_argument("--drift-after", type=int, help="inject the drift from this event on")
    p.add_argument("--bad-every", type=int, default=2000, help="mix in one malformed event every N (0: none)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--prefix", default="e", help="event id prefix (keeps runs apart)")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    import orjson
    from confluent_kafka import Producer

    from flywheel.demo.generator import event_stream
    from flywheel.demo.stream import MALFORMED
    from flywheel.errors import ConfigError
    from flywheel.kafka_config import check_broker, client_config, produce_waiting
    from flywheel.specs import find_spec

    spec = find_spec(settings.specs_dir, args.spec)
    if not spec.topics.labels:
        raise ConfigError(f"spec {args.spec!r} has no labels topic: the demo stream needs one")
    check_broker(settings)
    span = timedelta(seconds=args.events / args.event_rate)
    start = datetime.fromisoformat(args.start) if args.start else datetime.now(UTC) - span
    producer = Producer(client_config(settings, "producer", linger_ms=20))
    sent = bad = 0
    began = time.monotonic()
    for i, event in enumerate(event_stream(args.events, seed=args.seed, start=start, rate_per_s=args.event_rate,
                                           drift_after=args.drift_after, prefix=args.prefix)):
        key = event.features["event_id"].encode()
        produce_waiting(producer, spec.topics.features, orjson.dumps(event.features), key)
        produce_waiting(producer, spec.topics.labels, orjson.dumps(event.label), key)
        if args.bad_every and i % args.bad_every == args.bad_every - 1:
            produce_waiting(producer, spec.topics.features, MALFORMED, b"bad")
            bad += 1
        sent += 1
        if args.rate:
            ahead = sent / args.rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
        if i % 5000 == 0:
            producer.poll(0)
    producer.flush(30)
    print(f"produced {sent} events (+{bad} malformed) and {sent} labels to {spec.topics.features} / "
          f"{spec.topics.labels} in {time.monotonic() - began:.1f}s; event time {start:%Y-%m-%d %H:%M} + {span}")
    return 0


register("produce-demo", "produce the synthetic card-payment stream (features, late labels, drift)", _run, _add_args)


def _add_loop_args(p: argparse.ArgumentParser) -> None:
    from flywheel.demo.loop import DemoPlan

    d = DemoPlan()
    p.add_argument("--spec", default="fraud", help="model to run the loop for (default fraud)")
    p.add_argument("--history", type=int, default=d.history, help="pre-drift events v1 is trained on")
    p.add_argument("--live", type=int, default=d.live, help="pre-drift events scored live by v1")
    p.add_argument("--drifted", type=int, default=d.drifted, help="drifted events before the monitor checks")
    p.add_argument("--after-swap", type=int, default=d.after_swap, help="drifted events scored by v2")
    p.add_argument("--rate", type=float, default=d.rate, help="events per second of the live stream")
    p.add_argument("--no-reset", action="store_true",
                   help="keep the model's topics, drained data and versions (default: start from a clean slate)")
    p.add_argument("--summary-json", help="also write the summary to this file")
    p.add_argument("--url", default=None, help="Airflow API URL (default FLYWHEEL_AIRFLOW_URL or :8080)")


def _run_loop(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from pathlib import Path

    from flywheel.airflow_client import AirflowClient, default_url
    from flywheel.demo.loop import DemoPlan, format_summary, run_loop
    from flywheel.specs import find_spec

    spec = find_spec(settings.specs_dir, args.spec)
    plan = DemoPlan(history=args.history, live=args.live, drifted=args.drifted, after_swap=args.after_swap,
                    rate=args.rate)
    report = run_loop(settings, spec, plan, AirflowClient(args.url or default_url()), reset=not args.no_reset)
    print(format_summary(report))
    if args.summary_json:
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps(report.as_dict(), indent=1, default=str))
    return 0


register("demo", "run the whole loop: produce, drain, train, score, drift, retrain, hot-swap", _run_loop,
         _add_loop_args)
