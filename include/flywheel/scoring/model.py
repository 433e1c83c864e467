"""The champion as the scorer serves it: loaded once, verified before it may score a single event.

Verification refuses a version whose file fails its checksum, whose features differ from the spec,
or whose smoke prediction is not a finite probability. What is loaded here is always the plain
LightGBM model, ready in a fraction of a second; the lleaves-compiled predictor of the same version is
prepared later, in another process (``flywheel.scoring.compiler``), and must agree with these smoke
predictions to 1e-9 before it replaces the plain one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.errors import FlywheelError
from flywheel.models.store import ModelStore, ModelStoreError
from flywheel.specs import ModelSpec

log = logging.getLogger(__name__)
COMPILED_TOLERANCE = 1e-9


class ModelRefused(FlywheelError):
    """A model version failed verification; the scorer keeps serving the previous one."""


@dataclass
class ServingModel:
    model: str
    version: int
    sha256: str
    schema: list[dict[str, Any]]
    predict: Callable[[np.ndarray], np.ndarray]
    compiled: bool
    load_seconds: float
    #: The verified model file: what the compiler compiles, so it never reads the store again.
    source: bytes = field(default=b"", repr=False)
    #: Smoke rows and the plain model's scores on them: the reference a compiled predictor must match.
    check_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    check_scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    #: Compiled predictors: whether the object came from the local cache (no compile at all).
    from_cache: bool = False

    @property
    def feature_names(self) -> list[str]:
        return [e["name"] for e in self.schema]

    @property
    def predictor(self) -> str:
        """``plain`` (LightGBM) or ``compiled`` (lleaves): which code scores, shown in the metrics."""
        return "compiled" if self.compiled else "plain"


def _smoke_rows(models: ModelStore, spec: ModelSpec, version: int, n_features: int) -> np.ndarray:
    """A few real training rows when the version has them, else zeros: enough to exercise every tree."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flywheel.features import to_matrix

    try:
        data = models.load_file(spec.name, version, "reference.parquet")
        table = pq.read_table(pa.BufferReader(data)).slice(0, 256)
        meta = models.get_version(spec.name, version).metadata
        return to_matrix(table, meta["feature_schema"])
    except Exception:  # an old version without a reference sample still gets a smoke test
        return np.zeros((4, n_features))


def load_serving_model(models: ModelStore, spec: ModelSpec, version: int, *, compile_model: bool = False,
                       cache_dir: Path | None = None) -> ServingModel:
    """The verified plain model; with ``compile_model`` the verified compiled one, compiled here and now
    (in a child process, through the cache in ``cache_dir``) for callers that can wait, such as
    benchmarks. The scorer never waits: its watcher swaps the plain model in and compiles afterwards."""
    import lightgbm as lgb

    started = time.perf_counter()
    try:
        text = models.load_file(spec.name, version)  # checksum verified
        meta = models.get_version(spec.name, version).metadata
    except ModelStoreError as exc:  # incomplete, missing or tampered: a verdict on this version
        raise ModelRefused(f"{spec.name} v{version}: {exc}") from None
    # Any other StoreError (the store unreachable, timing out) says nothing about the model: it propagates,
    # and the watcher tries again on the next poll or event.
    schema = meta["feature_schema"]
    names = [e["name"] for e in schema]
    if names != spec.feature_names:
        raise ModelRefused(f"{spec.name} v{version}: its features {names} differ from the spec's {spec.feature_names}")
    try:
        booster = lgb.Booster(model_str=text.decode())
    except Exception as exc:
        raise ModelRefused(f"{spec.name} v{version}: LightGBM cannot load the model file: {exc}") from None
    if booster.num_feature() != len(names):
        raise ModelRefused(f"{spec.name} v{version}: model expects {booster.num_feature()} features, spec has {len(names)}")

    def plain(X: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(X, num_threads=1))  # an ndarray already for a dense X: no copy

    rows = _smoke_rows(models, spec, version, len(names))
    reference = np.asarray(plain(rows), dtype=np.float64)
    if not np.all(np.isfinite(reference)) or reference.min() < 0 or reference.max() > 1:
        raise ModelRefused(f"{spec.name} v{version}: smoke prediction is not a probability ({reference[:4]})")
    model = ServingModel(spec.name, version, meta["sha256"], schema, plain, False, time.perf_counter() - started,
                         source=text, check_rows=rows, check_scores=reference)
    log.info("%s v%d loaded and verified in %.2fs", spec.name, version, model.load_seconds)
    if compile_model:
        from flywheel.scoring.compiler import CompileJob, default_cache_dir

        return CompileJob(model, cache_dir or default_cache_dir()).run()
    return model

