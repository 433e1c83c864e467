"""The versioned model store, on the object store: immutable versions, a champion pointer, history.

Layout under ``models/<model>/``:

* ``versions/<NNNNNN>/claim.json``     created with create-if-absent: whoever creates it owns the number,
  so two trainings can never claim the same version.
* ``versions/<NNNNNN>/model.txt``      the LightGBM model in its native text format (never pickle)
* ``versions/<NNNNNN>/model.onnx``     the same model in ONNX, for scorers outside Python
* ``versions/<NNNNNN>/metadata.json``  written last: a version without it is incomplete and ignored
* ``versions/<NNNNNN>/verdict.json``   promoted or rejected, with the gate results (written once)
* ``champion.json``                    the pointer, moved only by compare-and-swap
* ``history/<NNNNNNNN>.json``          append-only log of promotions and rollbacks

Reading a model always checks its sha256 against the metadata, so a corrupted or tampered file is
refused instead of served.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from flywheel.errors import FlywheelError, ObjectNotFound, PreconditionFailed
from flywheel.models.model_text import InvalidModelText, check_model_text
from flywheel.storage import ObjectStore

MODELS_ROOT = "models"


class ModelStoreError(FlywheelError):
    """The model store refused an operation (unknown version, lost race, bad state)."""


class ModelIntegrityError(ModelStoreError):
    """A stored model file does not match its recorded checksum, or cannot be loaded."""


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    metadata: dict[str, Any]
    verdict: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return (self.verdict or {}).get("status", "candidate")

    @property
    def metrics(self) -> dict[str, Any]:
        """Holdout metrics, once the version has been validated."""
        return (self.validation or {}).get("metrics", {})


@dataclass(frozen=True)
class Champion:
    model: str
    version: int
    promoted_at: float
    action: str  # promote | rollback
    run_id: str = ""
    previous: int | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelStore:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- keys ---------------------------------------------------------------------------------------

    @staticmethod
    def _root(model: str) -> str:
        return f"{MODELS_ROOT}/{model}"

    def version_key(self, model: str, version: int, name: str) -> str:
        return f"{self._root(model)}/versions/{version:06d}/{name}"

    def uri(self, model: str, version: int, name: str = "model.txt") -> str:
        return self.store.uri(self.version_key(model, version, name))

    # -- versions -----------------------------------------------------------------------------------

    def models(self) -> list[str]:
        names = {info.key.split("/")[1] for info in self.store.list(f"{MODELS_ROOT}/")}
        return sorted(names)

    def _version_numbers(self, model: str) -> list[int]:
        numbers = set()
        for info in self.store.list(f"{self._root(model)}/versions/"):
            part = info.key.split("/")[3]
            if part.isdigit():
                numbers.add(int(part))
        return sorted(numbers)

    def claim_version(self, model: str, owner: str) -> int:
        """The next free version number, claimed atomically (create-if-absent), never reused."""
        numbers = self._version_numbers(model)
        candidate = (numbers[-1] + 1) if numbers else 1
        for _ in range(1000):
            body = json.dumps({"owner": owner, "claimed_at": time.time()}).encode()
            try:
                self.store.put(self.version_key(model, candidate, "claim.json"), body, if_none_match=True)
                return candidate
            except PreconditionFailed:
                candidate += 1
        raise ModelStoreError(f"could not claim a version number for {model}")

    def write_version(self, model: str, version: int, model_text: bytes, metadata: dict[str, Any],
                      extra_files: dict[str, bytes] | None = None) -> ModelVersion:
        """Store the files, then the metadata (with checksums) last, so a version is complete or absent."""
        checksums = {"model.txt": sha256(model_text)}
        self.store.put(self.version_key(model, version, "model.txt"), model_text, if_none_match=True)
        for name, data in (extra_files or {}).items():
            self.store.put(self.version_key(model, version, name), data, if_none_match=True)
            checksums[name] = sha256(data)
        full = {**metadata, "model": model, "version": version, "files": checksums,
                "sha256": checksums["model.txt"], "location": self.uri(model, version)}
        self.store.put(self.version_key(model, version, "metadata.json"),
                       json.dumps(full, sort_keys=True, indent=1, default=str).encode(), if_none_match=True)
        return ModelVersion(model, version, full)

    def set_verdict(self, model: str, version: int, status: str, **details: Any) -> None:
        body = {"status": status, "decided_at": time.time(), **details}
        try:
            self.store.put(self.version_key(model, version, "verdict.json"),
                           json.dumps(body, sort_keys=True, default=str).encode(), if_none_match=True)
        except PreconditionFailed:
            raise ModelStoreError(f"{model} v{version} already has a verdict") from None

    def get_version(self, model: str, version: int) -> ModelVersion:
        try:
            metadata = json.loads(self.store.get(self.version_key(model, version, "metadata.json")))
        except ObjectNotFound:
            raise ModelStoreError(f"{model} has no complete version {version}") from None
        return ModelVersion(model, version, metadata, self._optional_json(model, version, "verdict.json"),
                            self._optional_json(model, version, "validation.json"))

    def _optional_json(self, model: str, version: int, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get(self.version_key(model, version, name)))
        except ObjectNotFound:
            return None

    def versions(self, model: str) -> list[ModelVersion]:
        out = []
        for number in self._version_numbers(model):
            try:
                out.append(self.get_version(model, number))
            except ModelStoreError:
                continue  # claimed but not (yet) complete
        return out

    def load_file(self, model: str, version: int, name: str = "model.txt") -> bytes:
        """The file's bytes, verified against the checksum recorded in the version's metadata."""
        meta = self.get_version(model, version).metadata
        expected = meta.get("files", {}).get(name)
        try:
            data = self.store.get(self.version_key(model, version, name))
        except ObjectNotFound:
            raise ModelIntegrityError(f"{model} v{version}: {name} is missing from the store") from None
        if expected is None or sha256(data) != expected:
            raise ModelIntegrityError(
                f"{model} v{version}: {name} checksum mismatch (stored file sha256 {sha256(data)[:12]}..., "
                f"metadata says {str(expected)[:12]}...): refusing a corrupted or tampered model"
            )
        if name == "model.txt":
            # LightGBM's parser aborts the process on a damaged file; one damaged before it was hashed
            # passes the checksum, so the text's structure is checked before anyone parses it.
            try:
                check_model_text(data.decode("ascii"))
            except (InvalidModelText, UnicodeDecodeError) as exc:
                raise ModelIntegrityError(f"{model} v{version}: model.txt is not a valid LightGBM model: {exc}; "
                                          "refusing it") from None
        return data

    # -- champion -----------------------------------------------------------------------------------

    def _champion_key(self, model: str) -> str:
        return f"{self._root(model)}/champion.json"

    def champion_with_etag(self, model: str) -> tuple[Champion | None, str | None]:
        try:
            data, etag = self.store.get_with_etag(self._champion_key(model))
        except ObjectNotFound:
            return None, None
        return Champion(**json.loads(data)), etag

    def champion(self, model: str) -> Champion | None:
        return self.champion_with_etag(model)[0]

    def set_champion(self, model: str, version: int, *, expected_etag: str | None, action: str,
                     run_id: str = "", reason: str = "", extra: dict[str, Any] | None = None) -> Champion:
        """Move the pointer by compare-and-swap from ``expected_etag`` (None: there was no champion)."""
        self.get_version(model, version)  # must exist and be complete
        current, _ = self.champion_with_etag(model)
        new = Champion(model, version, time.time(), action, run_id, current.version if current else None,
                       reason, extra or {})
        body = json.dumps(new.__dict__, sort_keys=True).encode()
        try:
            if expected_etag is None:
                self.store.put(self._champion_key(model), body, if_none_match=True)
            else:
                self.store.put(self._champion_key(model), body, if_match=expected_etag)
        except (PreconditionFailed, ObjectNotFound):
            raise ModelStoreError(
                f"the {model} champion changed while v{version} was being {action}d; nothing was changed"
            ) from None
        self._append_history(model, new)
        return new

    def _append_history(self, model: str, champion: Champion) -> None:
        prefix = f"{self._root(model)}/history/"
        existing = [info.key for info in self.store.list(prefix)]
        seq = int(existing[-1].rsplit("/", 1)[1].split(".")[0]) + 1 if existing else 1
        body = json.dumps(champion.__dict__, sort_keys=True).encode()
        while True:
            try:
                self.store.put(f"{prefix}{seq:08d}.json", body, if_none_match=True)
                return
            except PreconditionFailed:
                seq += 1

    def history(self, model: str) -> list[dict[str, Any]]:
        return [json.loads(self.store.get(info.key)) for info in self.store.list(f"{self._root(model)}/history/")]
