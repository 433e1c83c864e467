"""A synthetic card-payment stream for the demo spec (``include/specs/fraud.yaml``).

Fraud is rare (about 2%) and shows in a handful of features the way it does in practice: unusual
amount for the card, new device, foreign and online, risky IP, bursts of transactions. ``drift``
changes the fraud pattern (fraudsters move to small amounts on old cards from low-risk IPs), so a
model trained before the drift loses accuracy after it, and a retrained one recovers. It also
shifts how legitimate customers pay (bigger baskets, more online, farther from home, riskier IPs),
the covariate drift that data-drift monitoring sees before any label arrives.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FRAUD_RATE = 0.02


@dataclass(frozen=True)
class DemoEvent:
    features: dict[str, Any]
    label: dict[str, Any]


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(rng: random.Random, seq: int, when: datetime, *, drift: bool = False, prefix: str = "e") -> DemoEvent:
    fraud = rng.random() < FRAUD_RATE
    s = 1.0 if fraud else 0.0
    if drift and fraud:
        # The new pattern: small amounts, familiar devices, domestic, low IP risk, high card age.
        amount = rng.lognormvariate(2.0, 0.5)
        amount_vs_avg = rng.uniform(0.2, 0.9)
        device_new, is_foreign, ip_risk = rng.random() < 0.1, rng.random() < 0.05, rng.betavariate(1, 8)
        card_age = int(rng.uniform(400, 3000))
        velocity = rng.betavariate(2, 5) + 0.3
        txn_1h = int(rng.uniform(4, 12))
    else:
        amount = rng.lognormvariate(3.5 + 1.2 * s, 1.0)
        amount_vs_avg = rng.lognormvariate(0.0 + 1.3 * s, 0.5)
        device_new = rng.random() < (0.05 + 0.55 * s)
        is_foreign = rng.random() < (0.08 + 0.45 * s)
        ip_risk = rng.betavariate(1 + 4 * s, 6)
        card_age = int(rng.expovariate(1 / (900 - 800 * s)))
        velocity = rng.betavariate(2 + 3 * s, 5)
        txn_1h = int(rng.expovariate(1 / (1 + 3 * s)))
    if drift:  # the customer base changed too: every event, not only fraud
        amount *= 1.9
        amount_vs_avg *= 1.4
        ip_risk = min(1.0, ip_risk + 0.15)
    hour = when.hour
    features: dict[str, Any] = {
        "event_id": f"{prefix}{seq}",
        "event_time": _iso(when),
        "amount": round(amount, 2),
        "amount_vs_avg": round(amount_vs_avg, 4),
        "hour_of_day": hour,
        "merchant_risk": round(rng.betavariate(1 + s, 30), 5),
        "merchant_category": rng.randrange(8, 28) if drift else rng.randrange(20),
        "distance_from_home_km": round(rng.expovariate(1 / (15 + 40 * drift + 200 * s * (not drift))), 2),
        "card_age_days": card_age,
        "txn_count_1h": txn_1h,
        "txn_count_24h": txn_1h + int(rng.expovariate(1 / (4 + 4 * drift))),
        "amount_sum_24h": round(amount * (1 + rng.expovariate(1)), 2),
        "distinct_merchants_24h": 1 + int(rng.expovariate(1 / (2 + 2 * s))),
        "is_online": rng.random() < (0.4 + 0.3 * drift + 0.4 * s),
        "is_foreign": is_foreign,
        "cvv_failed_24h": int(rng.expovariate(1 / (0.05 + 1.5 * s * (not drift)))),
        "device_new": device_new,
        "ip_risk": round(ip_risk, 5),
        "velocity_score": round(min(velocity, 1.0), 5),
        "account_age_days": card_age + int(rng.expovariate(1 / 300)),
        "chargebacks_90d": int(rng.random() < 0.02 + 0.2 * s),
        "customer_age": None if rng.random() < 0.05 else int(18 + rng.betavariate(2, 3) * 70),
    }
    if math.isnan(features["amount"]):  # pragma: no cover - lognormvariate never returns NaN
        features["amount"] = 0.0
    label = {"event_id": features["event_id"], "is_fraud": int(fraud), "labelled_at": _iso(when)}
    return DemoEvent(features, label)


def event_stream(
    n: int, *, seed: int = 7, start: datetime | None = None, rate_per_s: float = 100.0,
    drift_after: int | None = None, prefix: str = "e",
) -> Iterator[DemoEvent]:
    """``n`` events with event times spaced at ``rate_per_s`` from ``start``; drift from ``drift_after``."""
    rng = random.Random(seed)
    start = start or datetime(2026, 11, 25, tzinfo=UTC)
    for i in range(n):
        when = start + timedelta(seconds=i / rate_per_s)
        yield make_event(rng, i, when, drift=drift_after is not None and i >= drift_after, prefix=prefix)
