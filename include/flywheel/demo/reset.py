"""A clean slate for one model's demo: its topics, drained data, models, reports and monitor state.

``make demo`` starts from here so a second run tells the same story as the first (v1, drift, v2)
instead of training on the previous run's drifted data. It only ever touches what belongs to the
one spec it is given, and the command asks for it explicitly (``flywheel demo --reset``).
"""

from __future__ import annotations

import logging
import time

from flywheel.drain import layout
from flywheel.errors import BrokerUnavailable
from flywheel.kafka_config import _admin, check_broker, ensure_topics
from flywheel.models.store import MODELS_ROOT
from flywheel.monitoring.decision import state_key
from flywheel.settings import Settings
from flywheel.specs import ModelSpec

log = logging.getLogger(__name__)


def demo_topics(spec: ModelSpec) -> list[str]:
    return [*spec.drained_topics, f"{spec.topics.features}.dlq"]


def store_prefixes(spec: ModelSpec) -> list[str]:
    prefixes = [f"{MODELS_ROOT}/{spec.name}/", f"reports/{spec.name}/", state_key(spec.name)]
    for topic in spec.drained_topics:
        prefixes += [layout.topic_data_prefix(topic), f"{layout.REJECTED_ROOT}/{topic}/", f"{layout.LEDGER_ROOT}/{topic}/",
                     layout.compaction_prefix(topic)]
    return prefixes


def reset_model(settings: Settings, spec: ModelSpec) -> dict[str, int]:
    """Delete and recreate the spec's topics, delete its objects and its scorer's consumer group."""
    existing = check_broker(settings)
    admin = _admin(settings)
    doomed = [t for t in demo_topics(spec) if t in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=settings.broker_timeout_s).values():
            future.result()
    groups = [f"{settings.group_prefix}-scorer-{spec.name}"]
    try:
        for future in admin.delete_consumer_groups(groups, request_timeout=settings.broker_timeout_s).values():
            future.result()
    except Exception as exc:  # absent group, or a member still attached: the topic deletion dropped its offsets
        log.debug("consumer group %s not deleted: %s", groups[0], exc)
    store = settings.open_store()
    deleted = 0
    for prefix in store_prefixes(spec):
        for info in list(store.list(prefix)):
            store.delete(info.key)
            deleted += 1
    # Topic deletion finishes in the background; creating the same name too early is refused.
    deadline = time.monotonic() + 60
    while True:
        try:
            ensure_topics(settings, demo_topics(spec))
            if set(demo_topics(spec)) <= set(check_broker(settings)):
                break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"could not recreate {demo_topics(spec)}: {exc}") from None
        time.sleep(1)
    return {"topics": len(doomed), "objects": deleted}
