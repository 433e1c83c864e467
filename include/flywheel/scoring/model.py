"""The champion as the scorer serves it: loaded once, verified before it may score a single event.

Verification refuses a version whose file fails its checksum, whose features differ from the spec,
or whose smoke prediction is not a finite probability; with ``compile`` the model is turned into
native code by lleaves and must agree with LightGBM to 1e-9 before it is used.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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

    @property
    def feature_names(self) -> list[str]:
        return [e["name"] for e in self.schema]


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


def _compile(text: bytes, sha: str, cache_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    import lleaves

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", dir=cache_dir, delete=False) as f:
        f.write(text)
        model_file = f.name
    try:
        compiled = lleaves.Model(model_file=model_file)
        compiled.compile(cache=str(cache_dir / f"{sha}.so"))
    finally:
        Path(model_file).unlink(missing_ok=True)
    return lambda X: compiled.predict(X, n_jobs=1)


def load_serving_model(models: ModelStore, spec: ModelSpec, version: int, *, compile_model: bool = False,
                       cache_dir: Path | None = None) -> ServingModel:
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
        return booster.predict(X, num_threads=1)

    rows = _smoke_rows(models, spec, version, len(names))
    reference = np.asarray(plain(rows), dtype=np.float64)
    if not np.all(np.isfinite(reference)) or reference.min() < 0 or reference.max() > 1:
        raise ModelRefused(f"{spec.name} v{version}: smoke prediction is not a probability ({reference[:4]})")
    predict = plain
    if compile_model:
        compiled = _compile(text, meta["sha256"], cache_dir or Path(tempfile.gettempdir()) / "flywheel-lleaves")
        diff = float(np.max(np.abs(np.asarray(compiled(rows)) - reference)))
        if diff > COMPILED_TOLERANCE:
            raise ModelRefused(f"{spec.name} v{version}: compiled model disagrees with LightGBM by {diff:.2e}")
        predict = compiled
    model = ServingModel(spec.name, version, meta["sha256"], schema, predict, compile_model,
                         time.perf_counter() - started)
    log.info("%s v%d loaded and verified in %.2fs%s", spec.name, version, model.load_seconds,
             " (compiled)" if compile_model else "")
    return model

