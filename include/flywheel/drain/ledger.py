"""The store's own record of how far each partition was drained: exactly once without trusting Kafka.

Per partition, in the object store:

* ``<start>.intent``  claims the chunk that starts at ``start`` and pins its last offset before any
  file is written. A replay after a crash adopts the pinned range, so it rewrites the very same
  objects (same names, same rows) instead of writing an overlapping file.
* ``<start>.json``    the chunk's manifest, created with create-if-absent: the commit point. Two
  drains racing on a partition may both compute a chunk, but only one manifest can exist.
* ``checkpoint.json`` the next offset to drain, moved forward by compare-and-swap. It is a shortcut:
  the manifests alone are the truth, and a lost checkpoint update is rolled forward from them.

Kafka's committed group offsets are written after the manifest for lag monitoring only, so deleting
the consumer group, or a reset, cannot cause a duplicate or a gap.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flywheel.drain import layout
from flywheel.errors import ObjectNotFound, PreconditionFailed
from flywheel.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Manifest:
    topic: str
    partition: int
    start: int
    end: int
    next_offset: int
    rows: int
    rejected: int
    reasons: dict[str, int]
    files: list[dict[str, Any]]
    rejected_files: list[str]
    owner: str
    committed_at: float = field(default_factory=time.time)
    #: Offsets deleted by retention before they were drained: [first, last], reported, never hidden.
    expired: list[int] | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class Claim:
    status: Literal["ok", "busy", "committed"]
    #: For ``ok``: the last offset this chunk must cover (pinned by an earlier attempt if there was one).
    end: int = -1
    holder: str = ""


class PartitionLedger:
    def __init__(self, store: ObjectStore, topic: str, partition: int, owner: str, lease_s: float) -> None:
        self.store, self.topic, self.partition = store, topic, partition
        self.owner, self.lease_s = owner, lease_s

    def _read_json(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get(key))
        except ObjectNotFound:
            return None

    def resume_offset(self) -> int | None:
        """Next offset to drain, or None if this partition was never drained."""
        checkpoint = self._read_json(layout.checkpoint_key(self.topic, self.partition))
        if checkpoint is not None:
            offset = int(checkpoint["next_offset"])
        else:
            manifests = [
                info.key for info in self.store.list(layout.partition_ledger_prefix(self.topic, self.partition))
                if info.key.endswith(".json") and not info.key.endswith("checkpoint.json")
            ]
            if not manifests:
                return None
            offset = Manifest.from_bytes(self.store.get(manifests[-1])).start
        # Roll forward over chunks committed after the checkpoint was last written, removing their claims
        # (a drain that died between manifest and checkpoint left its intent behind).
        rolled_from = offset if checkpoint is not None else None
        while (manifest := self.manifest(offset)) is not None:
            self.store.delete(layout.intent_key(self.topic, self.partition, offset))
            offset = manifest.next_offset
        if offset != rolled_from:
            self.advance_checkpoint(offset)
        return offset

    def manifest(self, start: int) -> Manifest | None:
        data = self._read_json(layout.manifest_key(self.topic, self.partition, start))
        return Manifest(**data) if data is not None else None

    def claim(self, start: int, end: int) -> Claim:
        """Claim chunk [start, end]; adopt an earlier attempt's range if one exists."""
        key = layout.intent_key(self.topic, self.partition, start)
        body = {"start": start, "end": end, "owner": self.owner, "claimed_at": time.time()}
        try:
            self.store.put(key, json.dumps(body).encode(), if_none_match=True)
        except PreconditionFailed:
            pass
        else:
            # The intent may be gone because another drain committed this chunk and cleaned up after itself.
            if self.manifest(start) is not None:
                self.store.delete(key)
                return Claim("committed")
            return Claim("ok", end)
        if self.manifest(start) is not None:
            return Claim("committed")
        try:
            data, etag = self.store.get_with_etag(key)
        except ObjectNotFound:  # committed and cleaned up in between
            return Claim("committed")
        intent = json.loads(data)
        age = time.time() - float(intent["claimed_at"])
        if intent["owner"] != self.owner and age < self.lease_s:
            return Claim("busy", holder=intent["owner"])
        log.info("%s[%d]: replaying chunk %d-%d left by %s %.0fs ago", self.topic, self.partition,
                 start, intent["end"], intent["owner"], age)
        adopted = {**intent, "owner": self.owner, "claimed_at": time.time()}
        try:
            self.store.put(key, json.dumps(adopted).encode(), if_match=etag)
        except (PreconditionFailed, ObjectNotFound):
            return Claim("busy", holder="a concurrent drain")
        return Claim("ok", int(intent["end"]))

    def commit(self, manifest: Manifest) -> bool:
        """Create the manifest; False if another drain committed this chunk first (same range)."""
        key = layout.manifest_key(self.topic, self.partition, manifest.start)
        try:
            self.store.put(key, manifest.to_bytes(), if_none_match=True)
            committed = True
        except PreconditionFailed:
            other = self.manifest(manifest.start)
            if other is None or other.end != manifest.end:
                raise RuntimeError(
                    f"{self.topic}[{self.partition}] chunk at {manifest.start} was committed with a different "
                    f"range ({other.end if other else '?'} vs {manifest.end}); refusing to continue"
                ) from None
            committed = False
        # The claim goes before the checkpoint moves: if the store fails (or the drain dies) in between,
        # the next run's roll-forward from the checkpoint still sees this manifest and finishes the job;
        # the other order would strand the claim behind the checkpoint, where nothing looks again.
        self.store.delete(layout.intent_key(self.topic, self.partition, manifest.start))
        self.advance_checkpoint(manifest.next_offset)
        return committed

    def advance_checkpoint(self, next_offset: int) -> None:
        key = layout.checkpoint_key(self.topic, self.partition)
        body = json.dumps({"next_offset": next_offset, "updated_at": time.time(), "owner": self.owner}).encode()
        for _ in range(20):
            try:
                data, etag = self.store.get_with_etag(key)
            except ObjectNotFound:
                try:
                    self.store.put(key, body, if_none_match=True)
                    return
                except PreconditionFailed:
                    continue
            if int(json.loads(data)["next_offset"]) >= next_offset:
                return
            try:
                self.store.put(key, body, if_match=etag)
                return
            except (PreconditionFailed, ObjectNotFound):
                continue
        log.warning("%s[%d]: checkpoint contention; manifests still hold the truth", self.topic, self.partition)
