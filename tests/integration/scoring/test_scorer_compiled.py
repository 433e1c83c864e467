"""The compiled predictor (``--compile``, lleaves) on the real broker.

A swap must not wait for a compile: the verified plain model of a new version serves at once, the
compiled one takes over between two batches when a child process has compiled it and it agrees with
LightGBM to 1e-9. Compiled objects are cached by the model file's sha256, so a restart or a swap back
to a version compiled before uses the compiled predictor without compiling. A compile that fails
leaves the plain model serving and is reported. And the compiled model scores like the plain one.

Each test starts from a copy of the prepared champion (conftest: v1 the champion, v2 a candidate with
the same model file) on fresh topics, with a lleaves cache of its own (under the env's home).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
import pytest
from flywheel.kafka_config import ensure_topics
from flywheel.models.store import ModelStore
from flywheel.scoring import compiler
from flywheel.scoring.service import Scorer, ScorerOptions

from tests.integration.scoring.conftest import (
    SteadyProducer,
    copy_version,
    force_champion,
    live_events,
    model_event_ms,
    model_variant,
    run_in_thread,
    spec_variant,
    wait_for_topics,
    wait_until,
)

pytestmark = pytest.mark.integration
#: As in test_scorer_delivery: 2 s from the promotion event, plus the batch being scored then.
SWAP_BUDGET_MS = 2000 + 10 + 250
#: Compiling the test model in a child process, on a machine that may be busy.
COMPILE_TIMEOUT_S = 90


def record_swaps(scorer: Scorer) -> list[tuple[int, str, float, bool]]:
    """(version, predictor, wall time, from the cache) of every model the scoring loop swapped in."""
    swaps: list[tuple[int, str, float, bool]] = []
    swap = scorer._swap

    def recording(model: Any) -> None:
        swaps.append((model.version, model.predictor, time.time(), model.from_cache))
        swap(model)

    scorer._swap = recording  # type: ignore[method-assign]
    return swaps


def compile_options(**changes: Any) -> ScorerOptions:
    return ScorerOptions(**{"compile_model": True, "poll_interval_s": 300, "metrics_interval_s": 0.5, **changes})


def test_a_compiled_mode_swap_serves_plain_at_once_then_compiled(scoring_env, prediction_log, read_all):
    env = scoring_env()
    events = live_events(4000)
    ids = [e["event_id"] for e in events]
    scorer = Scorer(env.settings, env.spec, compile_options())
    swaps = record_swaps(scorer)
    thread = run_in_thread(scorer.run, max_seconds=240)
    try:
        wait_until(lambda: scorer.model is not None and scorer.model.compiled, COMPILE_TIMEOUT_S,
                   "the compiled predictor of v1")
        producer = SteadyProducer(env, events, rate_per_s=400)
        producer.start()
        log = prediction_log(env)
        wait_until(lambda: len(log.refresh(complete=False).by_id) >= 400, 30, "the first 400 predictions")
        # Another model file (nothing cached for it): a cold compile, while events flow.
        models = ModelStore(env.store)
        v3 = copy_version(env, 1, model_text=model_variant(models.load_file(env.spec.name, 1)))
        force_champion(env, v3)
        published_ms = model_event_ms(env, v3)
        wait_until(lambda: scorer.model.version == v3 and scorer.model.compiled, COMPILE_TIMEOUT_S,
                   f"the compiled predictor of v{v3}")
        assert producer.is_alive(), "events stopped flowing before the compiled predictor took over"
        producer.finish()
        log.wait_for(ids, 60)
    finally:
        scorer.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert [(v, p, c) for v, p, _, c in swaps] == [(1, "plain", False), (1, "compiled", False),
                                                   (v3, "plain", False), (v3, "compiled", False)]
    plain_at, compiled_at = swaps[2][2], swaps[3][2]
    print(f"\ncompiled mode swap: v{v3} plain serving {plain_at * 1000 - published_ms:.0f} ms after its promotion "
          f"event, compiled {compiled_at * 1000 - published_ms:.0f} ms after it")
    assert plain_at * 1000 - published_ms < SWAP_BUDGET_MS

    log.refresh()
    assert not log.missing(ids)
    v3_first = min(p["scored_at_ms"] for p in log.values if p["model_version"] == str(v3))
    assert v3_first - published_ms < SWAP_BUDGET_MS, "the first v3 prediction came too late"
    assert v3_first < compiled_at * 1000, "the first v3 predictions should come from the plain model"
    assert {p["model_version"] for p in log.values} == {"1", str(v3)}

    m = scorer.metrics
    assert m.swaps == 1 and m.predictor_switches == 2 and m.predictor == "compiled" and m.compile_failures == 0
    assert m.scored_by.get("plain", 0) > 0 and m.scored_by.get("compiled", 0) > 0
    assert sum(m.scored_by.values()) == m.scored
    snapshots = [orjson.loads(x.value()) for x in read_all(env.settings.kafka_bootstrap, env.settings.metrics_topic)]
    assert {s["predictor"] for s in snapshots} >= {"compiled"}
    assert snapshots[-1]["scored_compiled"] > 0 and snapshots[-1]["scored_plain"] > 0


def test_the_compile_cache_makes_a_restart_and_a_reswap_compiled_at_once(scoring_env, monkeypatch):
    env = scoring_env()
    first = Scorer(env.settings, env.spec, compile_options())
    thread = run_in_thread(first.run, max_seconds=120)
    try:
        wait_until(lambda: first.model is not None and first.model.compiled, COMPILE_TIMEOUT_S,
                   "the compiled predictor of v1")
        assert not first.model.from_cache
    finally:
        first.stop()
        thread.join(30)
    sha = ModelStore(env.store).get_version(env.spec.name, 1).metadata["sha256"]
    cached = compiler.cache_path(env.settings.home / ".cache" / "lleaves", sha)
    assert cached.exists() and compiler.cached_object_is_valid(cached)

    # From now on a compile would fail: whatever comes compiled comes from the cache.
    children: list[Any] = []
    monkeypatch.setattr(compiler, "worker_command", lambda model_file, out: children.append(model_file) or [
        sys.executable, "-c", "import sys; sys.exit('no compile expected: the object is cached')"])
    restarted = Scorer(env.settings, env.spec, compile_options())
    swaps = record_swaps(restarted)
    thread = run_in_thread(restarted.run, max_seconds=120)
    try:
        wait_until(lambda: restarted.model is not None and restarted.model.compiled, 10,
                   "the cached compiled predictor of v1")
        # A version with the same model file (v2: the same data and seed) is compiled already, too.
        assert ModelStore(env.store).get_version(env.spec.name, 2).metadata["sha256"] == sha
        force_champion(env, 2)
        published_ms = model_event_ms(env, 2)
        wait_until(lambda: restarted.model.version == 2 and restarted.model.compiled, 10,
                   "the cached compiled predictor of v2")
    finally:
        restarted.stop()
        thread.join(30)
    assert not children, "the cached object was compiled again"
    assert not restarted.watcher.compile_failed
    # A compiled predictor from the cache is ready within milliseconds of the plain one: it may even
    # replace the plain one before the scoring loop has taken it.
    assert swaps[-1][:2] == (2, "compiled") and swaps[-1][3], swaps
    started_at = swaps[0][2]
    v1_compiled = next(s[2] for s in swaps if s[:2] == (1, "compiled"))
    print(f"\nfrom the cache: compiled v1 {v1_compiled - started_at:.2f} s after the first model swapped in "
          f"(restart); compiled v2 {swaps[-1][2] * 1000 - published_ms:.0f} ms after its promotion event (re-swap)")
    assert v1_compiled - started_at < 2.0
    assert swaps[-1][2] * 1000 - published_ms < SWAP_BUDGET_MS


def test_a_failed_compile_keeps_the_plain_model_serving(scoring_env, prediction_log, monkeypatch):
    monkeypatch.setattr(compiler, "worker_command", lambda model_file, out: [
        sys.executable, "-c", "import sys; sys.exit('simulated: LLVM ran out of memory')"])
    env = scoring_env()
    events = live_events(2000)
    ids = [e["event_id"] for e in events]
    scorer = Scorer(env.settings, env.spec, compile_options())
    thread = run_in_thread(scorer.run, max_seconds=120)
    try:
        wait_until(lambda: scorer.model is not None, 30, "the plain v1")
        producer = SteadyProducer(env, events, rate_per_s=500)
        producer.start()
        wait_until(lambda: 1 in scorer.watcher.compile_failed, 30, "the compile of v1 to fail")
        assert "simulated: LLVM ran out of memory" in scorer.watcher.compile_failed[1]
        producer.finish()
        log = prediction_log(env)
        log.wait_for(ids, 60)
        wait_until(lambda: scorer.metrics.compile_failures == 1, 5, "the failure to show in the metrics")
        assert thread.is_alive(), "the scorer stopped"
    finally:
        scorer.stop()
        thread.join(30)
    assert scorer.model.version == 1 and scorer.model.predictor == "plain"
    assert scorer.metrics.scored_by == {"plain": scorer.metrics.scored} and scorer.metrics.predictor_switches == 0
    assert {p["model_version"] for p in log.refresh().values} == {"1"}


def test_compiled_model_agrees_with_plain_model(scoring_env, read_all):
    env = scoring_env()
    events = live_events(2000, seed=23)
    env.produce_json(env.spec.topics.features, events)
    plain = Scorer(env.settings, env.spec, ScorerOptions(poll_interval_s=300))
    plain.run(max_events=len(events), max_seconds=60)
    assert plain.metrics.scored == len(events) and plain.metrics.scored_by == {"plain": len(events)}

    # The same events on topics of its own, produced once the compiled predictor serves.
    compiled_spec = spec_variant(env, topics__features=f"{env.spec.topics.features}.compiled",
                                 topics__predictions=f"{env.spec.topics.predictions}.compiled")
    ensure_topics(env.settings, [compiled_spec.topics.features, compiled_spec.topics.predictions], partitions=4)
    wait_for_topics(env.settings, [compiled_spec.topics.features, compiled_spec.topics.predictions])
    compiled = Scorer(env.settings, compiled_spec, ScorerOptions(poll_interval_s=300, compile_model=True))
    thread = run_in_thread(compiled.run, max_events=len(events), max_seconds=180)
    wait_until(lambda: compiled.model is not None and compiled.model.compiled, COMPILE_TIMEOUT_S,
               "the compiled predictor")
    env.produce_json(compiled_spec.topics.features, events)
    thread.join(120)
    assert not thread.is_alive()
    assert compiled.metrics.scored_by == {"compiled": len(events)}

    def scores(topic: str) -> dict[str, float]:
        values = [orjson.loads(m.value()) for m in read_all(env.settings.kafka_bootstrap, topic)]
        assert {v["model_version"] for v in values} == {"1"}
        return {v["event_id"]: v["score"] for v in values}

    reference, native = scores(env.spec.topics.predictions), scores(compiled_spec.topics.predictions)
    assert reference.keys() == native.keys() == {e["event_id"] for e in events}
    worst = max(abs(reference[k] - native[k]) for k in reference)
    print(f"\ncompiled vs plain: max |score difference| {worst:.2e} over {len(reference)} events")
    assert worst <= 1e-9


