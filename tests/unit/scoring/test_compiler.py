"""The compiled predictor's preparation, off the scorer's GIL: child-process compile, cache, verification.

A small LightGBM model compiles in about a second, so these run without a broker; the integration
tests in tests/integration/scoring check the same through a running scorer.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from flywheel.scoring import compiler
from flywheel.scoring.compiler import CompileFailed, CompileJob, cache_path
from flywheel.scoring.model import ServingModel


@pytest.fixture(scope="module")
def plain() -> ServingModel:
    import lightgbm as lgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 6))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 15}, lgb.Dataset(X, y),
                        num_boost_round=20)
    text = booster.model_to_string().encode()
    rows = X[:64]
    return ServingModel("m", 1, hashlib.sha256(text).hexdigest(), [{"name": f"f{i}"} for i in range(6)],
                        lambda A: booster.predict(A, num_threads=1), False, 0.0, source=text, check_rows=rows,
                        check_scores=booster.predict(rows, num_threads=1))


def test_compiles_in_a_child_then_reuses_the_cache(plain, tmp_path, monkeypatch):
    commands: list[list[str]] = []
    real = compiler.worker_command
    monkeypatch.setattr(compiler, "worker_command", lambda *a: commands.append(real(*a)) or commands[-1])

    first = CompileJob(plain, tmp_path).run()
    assert first.compiled and not first.from_cache and first.predictor == "compiled"
    assert first.version == plain.version and first.sha256 == plain.sha256
    assert len(commands) == 1 and commands[0][1:3] == ["-m", "flywheel.scoring.compile_worker"]
    X = np.random.default_rng(4).normal(size=(500, 6))
    assert np.max(np.abs(first.predict(X) - plain.predict(X))) <= 1e-9
    path = cache_path(tmp_path, plain.sha256)
    assert path.exists() and compiler.cached_object_is_valid(path)
    assert not [p for p in path.parent.iterdir() if p.suffix in (".txt", ".partial")], "temporary files left"

    second = CompileJob(plain, tmp_path).run()
    assert second.from_cache and len(commands) == 1, "the cached object was compiled again"
    assert np.array_equal(second.predict(X), first.predict(X))


def test_a_damaged_cached_object_is_compiled_again_not_loaded(plain, tmp_path):
    path = cache_path(tmp_path, plain.sha256)
    CompileJob(plain, tmp_path).run()
    path.write_bytes(path.read_bytes()[:1000])  # truncated: LLVM must never see it
    assert not compiler.cached_object_is_valid(path)
    again = CompileJob(plain, tmp_path).run()
    assert not again.from_cache and compiler.cached_object_is_valid(path)


def test_a_failing_compile_raises_compile_failed(plain, tmp_path, monkeypatch):
    monkeypatch.setattr(compiler, "worker_command", lambda model_file, out: [
        sys.executable, "-c", "import sys; sys.exit('simulated: LLVM ran out of memory')"])
    with pytest.raises(CompileFailed, match="simulated: LLVM ran out of memory"):
        CompileJob(plain, tmp_path).run()
    assert not cache_path(tmp_path, plain.sha256).exists()


def test_a_compiled_model_that_disagrees_is_refused_and_not_cached(plain, tmp_path):
    wrong = ServingModel(**{**plain.__dict__, "check_scores": plain.check_scores + 1e-6})
    with pytest.raises(CompileFailed, match="disagrees with LightGBM"):
        CompileJob(wrong, tmp_path).run()
    assert not Path(cache_path(tmp_path, plain.sha256)).exists()


def test_cancel_stops_the_child(plain, tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(compiler, "worker_command", lambda model_file, out: [
        sys.executable, "-c", "import time; time.sleep(60)"])
    job = CompileJob(plain, tmp_path)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            job.run()
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    job.cancel()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert isinstance(outcome[0], compiler.CompileCancelled)
