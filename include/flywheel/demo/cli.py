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
    from flywheel.errors import ConfigError
    from flywheel.kafka_config import check_broker, client_config
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
        for topic, value in ((spec.topics.features, orjson.dumps(event.features)),
                             (spec.topics.labels, orjson.dumps(event.label))):
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
        if args.bad_every and i % args.bad_every == args.bad_every - 1:
            producer.produce(spec.topics.features, key=b"bad", value=b'{"event_id": "broken", "amount": "lots"}')
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
