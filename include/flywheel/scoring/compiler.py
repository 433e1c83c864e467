"""The champion compiled to native code by lleaves, prepared without slowing the scorer down.

Compiling a 200-tree model takes seconds of Python and LLVM work. Done in the scorer's process it
holds the GIL against scoring, and done before a swap it delays the swap by those seconds. So the
scorer swaps the verified plain model in at once, and a ``CompileJob`` builds the compiled predictor
in a child process (``flywheel.scoring.compile_worker``, lower CPU priority); the scorer's thread only
waits for the child, which releases the GIL, and then loads the object code, which takes milliseconds.

Compiled objects are cached on local disk keyed by the model file's sha256 (one directory per lleaves
version), so a restart, another scorer on the same host or a swap back to an earlier version skips the
compile. LLVM loads a cached object without any check and a damaged one could crash the process, so
each object has a sidecar with the object's own sha256, written only after the child succeeded: an
object whose sidecar is missing or does not match is compiled again, never loaded.

Before it may score, a compiled predictor must agree with the plain model's smoke predictions to
1e-9. Any failure (the child failing or timing out, a load error, a disagreement) raises
``CompileFailed``: the caller keeps serving the plain model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from flywheel.errors import FlywheelError
from flywheel.scoring.model import COMPILED_TOLERANCE, ServingModel

log = logging.getLogger(__name__)
#: A compile of the demo model takes ~5 s; far longer means the child is stuck, not slow.
COMPILE_TIMEOUT_S = 600.0


class CompileFailed(FlywheelError):
    """No compiled predictor for this version; the plain model keeps serving."""


class CompileCancelled(FlywheelError):
    """The job was cancelled (a newer version arrived, or the scorer stops)."""


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "flywheel-lleaves"


def _lleaves_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lleaves")
    except PackageNotFoundError:
        return "unknown"


def cache_path(cache_dir: Path, model_sha256: str) -> Path:
    """Where the object of the model file with this sha256 lives (per lleaves version)."""
    return cache_dir / f"lleaves-{_lleaves_version()}" / f"{model_sha256}.so"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def cached_object_is_valid(path: Path) -> bool:
    """True when the object exists and matches the sha256 its sidecar recorded after a good compile."""
    try:
        expected = _sidecar(path).read_text().strip()
        return hashlib.sha256(path.read_bytes()).hexdigest() == expected
    except OSError:
        return False


def discard_cached_object(path: Path) -> None:
    _sidecar(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def worker_command(model_file: Path, out: Path) -> list[str]:
    """The child process that compiles ``model_file`` to ``out`` (a function, so tests can replace it)."""
    return [sys.executable, "-m", "flywheel.scoring.compile_worker", str(model_file), str(out)]


class CompileJob:
    """Builds and verifies the compiled predictor of one plain ``ServingModel``; ``run`` blocks (run it on
    a thread of its own), ``cancel`` stops it from any thread."""

    def __init__(self, plain: ServingModel, cache_dir: Path, timeout_s: float = COMPILE_TIMEOUT_S) -> None:
        self.plain, self.timeout_s = plain, timeout_s
        self.path = cache_path(cache_dir, plain.sha256)
        self._cancelled = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self.plain.version

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            if self._child is not None and self._child.poll() is None:
                self._child.kill()  # our own child, by its handle

    def run(self) -> ServingModel:
        """The verified compiled model. Raises ``CompileFailed`` (or ``CompileCancelled``)."""
        started = time.perf_counter()
        from_cache = cached_object_is_valid(self.path)
        if not from_cache:
            self._compile_in_child()
        self._check_cancelled()
        try:
            predict = _load(self.plain.source, self.path)
        except Exception as exc:
            discard_cached_object(self.path)
            raise CompileFailed(f"v{self.version}: the compiled object does not load: {exc}") from None
        self._verify(predict)
        seconds = time.perf_counter() - started
        log.info("%s v%d: compiled predictor ready in %.2fs (%s)", self.plain.model, self.version, seconds,
                 "from the local cache" if from_cache else "compiled in a child process")
        return replace(self.plain, predict=predict, compiled=True, load_seconds=seconds, from_cache=from_cache)

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise CompileCancelled(f"v{self.version}: compile cancelled")

    def _compile_in_child(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tag = f"{self.plain.sha256}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        model_file = self.path.parent / f"{tag}.txt"
        partial = self.path.parent / f"{tag}.so.partial"
        model_file.write_bytes(self.plain.source)
        try:
            with self._lock:
                self._check_cancelled()
                self._child = subprocess.Popen(worker_command(model_file, partial), stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                _, stderr = self._child.communicate(timeout=self.timeout_s)  # waits without the GIL
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.communicate()
                raise CompileFailed(f"v{self.version}: lleaves did not finish within {self.timeout_s:g}s") from None
            self._check_cancelled()
            if self._child.returncode != 0 or not partial.exists():
                tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
                raise CompileFailed(f"v{self.version}: the lleaves compile exited with {self._child.returncode}: "
                                    f"{' | '.join(tail) or 'no output'}")
            digest = hashlib.sha256(partial.read_bytes()).hexdigest()
            os.replace(partial, self.path)
            _sidecar(self.path).write_text(digest + "\n")
        finally:
            model_file.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)

    def _verify(self, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        rows, reference = self.plain.check_rows, self.plain.check_scores
        try:
            scores = np.asarray(predict(rows), dtype=np.float64)
            diff = float(np.max(np.abs(scores - reference))) if len(rows) else 0.0
        except Exception as exc:
            discard_cached_object(self.path)
            raise CompileFailed(f"v{self.version}: the compiled predictor fails on the smoke rows: {exc}") from None
        if not diff <= COMPILED_TOLERANCE:  # also catches NaN
            discard_cached_object(self.path)
            raise CompileFailed(f"v{self.version}: the compiled predictor disagrees with LightGBM by {diff:.2e} "
                                f"(tolerance {COMPILED_TOLERANCE:g})")


def _load(source: bytes, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled predictor from the cached object: milliseconds, no compile (lleaves reads only the
    model file's header for the feature count)."""
    import lleaves

    with tempfile.NamedTemporaryFile("wb", suffix=".txt", dir=path.parent, delete=False) as f:
        f.write(source)
        model_file = f.name
    try:
        compiled = lleaves.Model(model_file=model_file)
        compiled.compile(cache=str(path))
    finally:
        Path(model_file).unlink(missing_ok=True)
    # n_jobs=1: the scorer's batches are small; lleaves' thread pool would cost more than it saves.
    return lambda X: compiled.predict(X, n_jobs=1)
