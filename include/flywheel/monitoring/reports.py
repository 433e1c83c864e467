"""The drift reports in the store: list them, read their summaries, and hand out their files safely.

A drift check (``flywheel.monitoring.drift``) writes one folder per check next to the version it
judged::

    reports/<model>/v<NNNNNN>/<YYYYmmddTHHMMSSZ>/drift.html | evidently.json | summary.json

Report keys reach this module from URLs (the Models view links to them), so a key is accepted only
when it is, character for character, the key of one of those files: under ``reports/``, a valid model
name, a zero-padded version, a UTC time stamp and one of the three file names. That rules out
``..``, absolute paths, backslashes, percent-encoded or double-encoded traversal, the store's own
bookkeeping files and every other object of the store (models, drained data), before the store is
asked anything; the file must then also be listed by the store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flywheel.errors import FlywheelError, ObjectNotFound
from flywheel.storage import ObjectStore

REPORTS_ROOT = "reports"
#: The files a drift check writes, and the media type each is served as.
REPORT_FILES = {"drift.html": "text/html; charset=utf-8", "summary.json": "application/json",
                "evidently.json": "application/json"}
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_MODEL = r"[a-z][a-z0-9_]{0,62}"  # the spec name pattern (flywheel.specs)
_KEY = re.compile(rf"^{REPORTS_ROOT}/(?P<model>{_MODEL})/v(?P<version>\d{{6}})/(?P<stamp>\d{{8}}T\d{{6}}Z)/"
                  rf"(?P<name>{'|'.join(re.escape(n) for n in REPORT_FILES)})$")
_MODEL_RE = re.compile(rf"^{_MODEL}$")


class ReportKeyError(FlywheelError):
    """The key is not the key of a drift report file (or the report does not exist)."""


def report_prefix(model: str, version: int, as_of: datetime) -> str:
    """The folder of the report of ``model`` v``version`` checked at ``as_of`` (same naming as drift.py)."""
    return f"{REPORTS_ROOT}/{model}/v{version:06d}/{as_of.astimezone(UTC).strftime(_STAMP_FORMAT)}/"


@dataclass(frozen=True)
class ReportRef:
    """One drift check's report folder: which model and version it judged, and when."""

    model: str
    version: int
    stamp: str  # YYYYmmddTHHMMSSZ, as in the key
    files: tuple[str, ...]  # which of REPORT_FILES are present

    @property
    def checked_at(self) -> datetime:
        return datetime.strptime(self.stamp, _STAMP_FORMAT).replace(tzinfo=UTC)

    @property
    def prefix(self) -> str:
        return f"{REPORTS_ROOT}/{self.model}/v{self.version:06d}/{self.stamp}/"

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def has_html(self) -> bool:
        return "drift.html" in self.files


def parse_report_key(key: str) -> ReportRef:
    """The report a key names, if the key is exactly a report file's key; ReportKeyError otherwise."""
    match = _KEY.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        shown = repr(key[:120]) if isinstance(key, str) else type(key).__name__
        raise ReportKeyError(f"not a drift report file: {shown}")
    return ReportRef(match["model"], int(match["version"]), match["stamp"], (match["name"],))


def list_reports(store: ObjectStore, model: str) -> list[ReportRef]:
    """Every report of ``model``, newest check first; files that are not report files are ignored."""
    if not _MODEL_RE.fullmatch(model or ""):
        raise ReportKeyError(f"not a model name: {model!r}")
    found: dict[tuple[int, str], set[str]] = {}
    for info in store.list(f"{REPORTS_ROOT}/{model}/"):
        match = _KEY.fullmatch(info.key)
        if match:
            found.setdefault((int(match["version"]), match["stamp"]), set()).add(match["name"])
    refs = [ReportRef(model, version, stamp, tuple(sorted(names))) for (version, stamp), names in found.items()]
    return sorted(refs, key=lambda r: (r.stamp, r.version), reverse=True)


def read_report_file(store: ObjectStore, key: str) -> tuple[bytes, str]:
    """The bytes and media type of a report file, by its validated key; ReportKeyError if it is not one."""
    ref = parse_report_key(key)
    listed = {info.key for info in store.list(ref.prefix)}
    if key not in listed:
        raise ReportKeyError(f"no such drift report file: {key}")
    try:
        return store.get(key), REPORT_FILES[ref.files[0]]
    except ObjectNotFound:  # deleted between the listing and the read
        raise ReportKeyError(f"no such drift report file: {key}") from None


def read_summary(store: ObjectStore, ref: ReportRef) -> dict[str, Any] | None:
    """The check's JSON summary (verdict, drift share, drifted columns), or None if it has none."""
    if "summary.json" not in ref.files:
        return None
    try:
        data, _ = read_report_file(store, ref.key("summary.json"))
        summary = json.loads(data)
    except (ReportKeyError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def latest_summary(store: ObjectStore, model: str) -> tuple[ReportRef, dict[str, Any]] | None:
    """The newest report that has a readable summary, with that summary: the model's last drift verdict."""
    for ref in list_reports(store, model):
        summary = read_summary(store, ref)
        if summary is not None:
            return ref, summary
    return None
