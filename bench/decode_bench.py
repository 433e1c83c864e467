"""Decoder benchmark: what bad records cost the bulk decoder, against the same batch without them.

    .venv/bin/python -m bench.decode_bench [--events 250000] [--bad 0.01] [--repeat 5]

One drain chunk of the benchmark spec's ~200-byte events (bench/specs/bench.yaml, made as
bench.drain_bench makes them), decoded in-process by ``flywheel.events.decode.decode_batch``:

* ``clean``       the chunk as produced: the limit, one bulk Arrow parse per block;
* ``bad``         the same chunk with ``--bad`` of its records replaced by bad ones (a mix of not JSON,
                  NaN literals, wrong types, missing fields, bad times, tombstones, deep nesting),
                  spread evenly: every block then goes through the per-record rule;
* ``one_bad``     one bad record in the middle: the cost of isolating a single bad record;
* ``reference``   ``decode_reference`` on 20,000 of the clean records (each record decoded alone),
                  scaled: what decoding record by record would cost.

Target (the events-contract issue): ``bad`` costs at most 2x ``clean``. Prints a markdown table (median
and best of ``--repeat`` rounds, with the load average) and writes bench/results/decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.drain_bench import _spec_and_schema, make_events

RESULTS = Path(__file__).resolve().parent / "results"

BAD_KINDS = [
    b"definitely not json",
    b'{"event_id":"x","amount":NaN}',
    b'{"event_id":"x","event_time":"2026-11-25T10:00:00Z","amount":"12.5","amt_ratio":1,"merch_risk":0,'
    b'"dist_km":1,"hour":1,"txn_24h":1,"online":true,"foreign":false}',
    b'{"event_id":"x"}',
    b'{"event_id":"x","event_time":"yesterday","amount":1,"amt_ratio":1,"merch_risk":0,"dist_km":1,"hour":1,'
    b'"txn_24h":1,"online":true,"foreign":false}',
    None,
    b'{"event_id":"x","m":' + b"[" * 200 + b"]" * 200 + b"}",
]


def _batch(values: list[bytes | None]) -> Any:
    from flywheel.events.decode import RawBatch

    n = len(values)
    return RawBatch("bench.features", 0, list(values), list(range(n)), [1_764_064_800_000] * n, [b"k"] * n)


def _time(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=250_000, help="records in the chunk (the drain's flush_rows)")
    parser.add_argument("--bad", type=float, default=0.01, help="share of bad records")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    from flywheel.events.decode import decode_batch, decode_reference

    spec, schema = _spec_and_schema()
    limit = spec.drain.max_event_bytes
    clean = [v for _, v in make_events(0, args.events, args.events)]
    step = max(1, round(1 / args.bad))
    bad = list(clean)
    for j, i in enumerate(range(step // 2, len(bad), step)):
        bad[i] = BAD_KINDS[j % len(BAD_KINDS)]
    one_bad = list(clean)
    one_bad[len(one_bad) // 2] = BAD_KINDS[0]
    sample = clean[:20_000]

    rounds: dict[str, list[float]] = {"clean": [], "bad": [], "one_bad": [], "reference": []}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeat):
        out = decode_batch(schema, _batch(clean), max_event_bytes=limit)
        assert out.table.num_rows == len(clean) and not out.rejected
        rounds["clean"].append(_time(lambda: decode_batch(schema, _batch(clean), max_event_bytes=limit)))
        rounds["bad"].append(_time(lambda: decode_batch(schema, _batch(bad), max_event_bytes=limit)))
        rounds["one_bad"].append(_time(lambda: decode_batch(schema, _batch(one_bad), max_event_bytes=limit)))
        rounds["reference"].append(_time(lambda: decode_reference(schema, _batch(sample), max_event_bytes=limit))
                                   * len(clean) / len(sample))
        loads.append(os.getloadavg()[0])
    checked = decode_batch(schema, _batch(bad), max_event_bytes=limit)
    expected_bad = sum(1 for v in bad if v is None or v in BAD_KINDS)
    assert len(checked.rejected) == expected_bad and checked.table.num_rows == len(bad) - expected_bad, \
        (len(checked.rejected), expected_bad)

    median = {k: statistics.median(v) for k, v in rounds.items()}
    best = {k: min(v) for k, v in rounds.items()}
    result = {
        "events": args.events, "bad_share": args.bad, "bad_records": expected_bad, "repeat": args.repeat,
        "median_s": median, "best_s": best,
        "ratio_bad_to_clean_median": median["bad"] / median["clean"],
        "ratio_one_bad_to_clean_median": median["one_bad"] / median["clean"],
        "ratio_reference_to_clean_median": median["reference"] / median["clean"],
        "load_average": [round(x, 2) for x in loads], "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode.json").write_text(json.dumps(result, indent=2))
    print(f"decode_batch, {args.events:,} records of the bench spec, {args.repeat} rounds, "
          f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores\n")
    print("| batch | median s | best s | µs/record (median) | vs clean (median) |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    for name in rounds:
        print(f"| {name} | {median[name]:.3f} | {best[name]:.3f} | {median[name] / args.events * 1e6:.2f} | "
              f"{median[name] / median['clean']:.2f}x |")
    verdict = "met" if result["ratio_bad_to_clean_median"] <= 2 else "NOT met"
    print(f"\n{args.bad:.0%} bad records cost {result['ratio_bad_to_clean_median']:.2f}x a clean batch "
          f"(target <= 2x: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
