"""Drill: the object store is unavailable for a while, in the middle of a drain.

The drain writes to a real S3 endpoint (moto's server, over HTTP) through a TCP proxy. The proxy cuts
itself at an exact step of the drain's commit protocol (connections refused, open ones reset), stays
cut through two more runs (as a task's retries would come), and is restored:

* ``manifest``: the 3rd chunk's manifest write never reaches the store: the chunk is written but not
  committed, and must be replayed (same range, same objects) by the next run.
* ``claim_cleanup``: the 3rd chunk is committed (manifest written) and the store goes
  away as its claim is deleted.

While the store is away the drain fails with StoreUnavailable naming the endpoint and bucket, and the
consumer group's offsets never run ahead of what the store durably holds; once it is back, one more
run drains every offset exactly once, leaving no claim behind.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlparse

import pytest
from flywheel.demo.generator import event_stream
from flywheel.drain import drain_topic
from flywheel.errors import StoreUnavailable

from tests.fixtures.s3_server import TEST_CREDENTIALS, new_bucket
from tests.integration.drain.test_drain_failures import _ledger, _watermarks, assert_exactly_once
from tests.integration.drills.conftest import TcpProxy
from tests.integration.scoring.conftest import START, committed_offsets

pytestmark = [pytest.mark.integration, pytest.mark.drill]

N = 3000
FLUSH_ROWS = 100
OWNER = "drill:feature_drain:drain_features"


def _durable(store: Any, topic: str) -> dict[int, int]:
    """Partition -> the offset the committed manifests reach (contiguously from 0)."""
    reach = {}
    for partition, chain in _ledger(store, topic)[1].items():
        offset = 0
        for manifest in sorted(chain, key=lambda m: m.start):
            if manifest.start != offset:
                break
            offset = manifest.next_offset
        reach[partition] = offset
    return reach


class ClaimLeftBehind(AssertionError):
    """Every offset was drained once, but a claim (intent) of a committed chunk stays in the ledger."""


#: The store goes away as the drain sends its 3rd request of this kind (S3 REST, path-style keys).
CUT_AT = {
    "manifest": rb"PUT /\S+/\d{20}\.json ",
    "claim_cleanup": rb"DELETE /\S+/\d{20}\.intent ",
}


@pytest.mark.parametrize("step", [
    "manifest",
    "claim_cleanup",
])
def test_store_unavailable_for_a_while_in_the_middle_of_a_drain(kafka_broker, drill_s3, fresh_env, step):
    proxy = TcpProxy(urlparse(drill_s3).port).start()
    try:
        bucket = new_bucket(drill_s3, "drill")
        env = fresh_env(kafka_broker.bootstrap, store_url=f"s3://{bucket}/lake",
                        s3_endpoint_url=f"http://127.0.0.1:{proxy.port}", s3_region=TEST_CREDENTIALS["region"],
                        s3_access_key=TEST_CREDENTIALS["access_key"], s3_secret_key=TEST_CREDENTIALS["secret_key"])
        # The same bucket seen without the proxy: how the drill looks at the store while it is "down".
        behind = env.settings.with_overrides(s3_endpoint_url=drill_s3).open_store()
        topic = env.spec.topics.features
        group = f"{env.settings.group_prefix}-drain"
        events = [e.features for e in event_stream(N, start=START, rate_per_s=2, seed=4, prefix="outage-")]
        env.produce_json(topic, events)
        ids = [e["event_id"] for e in events]

        outcome: dict[str, Any] = {}

        def first_run() -> None:
            try:
                outcome["summary"] = drain_topic(env.settings, topic, owner=OWNER, flush_rows=FLUSH_ROWS)
            except Exception as exc:
                outcome["error"] = exc

        proxy.cut_when(CUT_AT[step], nth=3)
        thread = threading.Thread(target=first_run, daemon=True, name="drill-drain")
        thread.start()
        assert proxy.cut_by_trigger.wait(60) or thread.is_alive(), f"the store was never cut: {outcome}"
        cut_at = time.monotonic()
        thread.join(60)
        assert not thread.is_alive(), "the drain hangs on an unreachable store"
        assert proxy.cut_by_trigger.is_set(), f"the drain finished before the store was cut: {outcome}"
        failed_after = time.monotonic() - cut_at
        error = outcome.get("error")
        assert isinstance(error, StoreUnavailable), f"expected StoreUnavailable, got {outcome}"
        assert f"127.0.0.1:{proxy.port}" in str(error) and bucket in str(error), error

        def offsets_within_durable() -> tuple[dict[int, int], dict[int, int]]:
            durable = _durable(behind, topic)
            committed = {p: o for p, o in committed_offsets(env.settings, group, topic).items() if o >= 0}
            ahead = {p: (o, durable.get(p, 0)) for p, o in committed.items() if o > durable.get(p, 0)}
            assert not ahead, f"group offsets committed past what the store holds (committed, durable): {ahead}"
            return committed, durable

        committed, durable = offsets_within_durable()
        assert 0 < sum(durable.values()) < N, "the outage did not land in the middle of the drain"

        # The store stays away: the retries fail fast with the same clear error and commit nothing.
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match=bucket):
                drain_topic(env.settings, topic, owner=OWNER, flush_rows=FLUSH_ROWS)
        assert offsets_within_durable() == (committed, durable), "a failed run moved the offsets or the ledger"

        proxy.restore()
        summary = drain_topic(env.settings, topic, owner=OWNER, flush_rows=FLUSH_ROWS)
        left = _ledger(env.store, topic)[0]
        for key in left:  # harmless for the data; cleared here so the rest of the ledger can be checked
            env.store.delete(key)
        assert_exactly_once(env, topic, ids)
        assert sum(durable.values()) + summary["rows"] == N
        # Lag monitoring recovers: the group's offsets are at the end of every partition.
        assert committed_offsets(env.settings, group, topic) == _watermarks(env.settings, topic)
        print(f"\nstore cut at {proxy.triggered_by.decode()!r} with {sum(durable.values())} of {N} offsets "
              f"durable; the drain failed {failed_after:.1f}s later ({error}); two retries failed fast; after the "
              f"store came back one run drained the remaining {summary['rows']}, every offset once")
        if left:
            raise ClaimLeftBehind(f"claims of committed chunks left in the ledger after the store came back: {left}")
    finally:
        proxy.cut()  # closes whatever is still open (a no-op on a cut proxy)
