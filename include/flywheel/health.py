"""Pre-flight checks behind ``flywheel check``: each failure is one line that says what to fix."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.errors import FlywheelError
from flywheel.settings import Settings


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def control_topics(settings: Settings) -> dict[str, bool]:
    """flywheel's own topics and whether each is compacted (model events keep the latest per model)."""
    return {settings.model_events_topic: True, settings.metrics_topic: False, settings.alerts_topic: False}


def check_all(settings: Settings, *, create_topics: bool = False) -> list[CheckResult]:
    from flywheel.kafka_config import check_broker, ensure_topics
    from flywheel.specs import load_specs

    results = [CheckResult("settings", True, ", ".join(f"{k}={v}" for k, v in settings.describe().items()))]
    try:
        specs = load_specs(settings.specs_dir)
        results.append(CheckResult("specs", True, ", ".join(s.name for s in specs) or "no specs yet"))
    except FlywheelError as exc:
        specs = []
        results.append(CheckResult("specs", False, str(exc)))

    try:
        store = settings.open_store()
        probe = "_flywheel/check"
        store.put(probe, b"ok")
        store.get(probe)
        store.delete(probe)
        results.append(CheckResult("store", True, f"{store.url} is writable"))
    except FlywheelError as exc:
        results.append(CheckResult("store", False, str(exc)))

    try:
        wanted = {t for s in specs for t in s.drained_topics} | set(control_topics(settings))
        if create_topics:
            compacted = [t for t, c in control_topics(settings).items() if c]
            created = ensure_topics(settings, wanted, compacted=compacted)
            if created:
                results.append(CheckResult("topics created", True, ", ".join(created)))
        existing = check_broker(settings)
        results.append(CheckResult("broker", True, f"{settings.kafka_bootstrap} answers ({len(existing)} topics)"))
        missing = sorted(wanted - set(existing))
        results.append(
            CheckResult("topics", not missing, "all present" if not missing else
                        f"missing {', '.join(missing)} (run: flywheel check --create-topics)")
        )
    except FlywheelError as exc:
        results.append(CheckResult("broker", False, str(exc)))
    return results
