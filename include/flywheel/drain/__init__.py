"""Drain Kafka topics into the object store as Parquet, exactly once (see ``runner`` and ``ledger``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flywheel.errors import ConfigError
from flywheel.events.schema import TopicSchema, topic_schemas

if TYPE_CHECKING:
    from flywheel.drain.runner import DrainLimits
    from flywheel.settings import Settings
    from flywheel.specs import ModelSpec


def drain_plan(specs: list[ModelSpec]) -> dict[str, tuple[TopicSchema, ModelSpec]]:
    """Every topic the specs name, with its schema and the spec whose drain settings apply."""
    plan: dict[str, tuple[TopicSchema, ModelSpec]] = {}
    for spec in specs:
        for schema in topic_schemas(spec):
            if schema.topic in plan and plan[schema.topic][0].fields != schema.fields:
                raise ConfigError(
                    f"topic {schema.topic!r} is declared with different fields by {plan[schema.topic][1].source} "
                    f"and {spec.source}"
                )
            plan.setdefault(schema.topic, (schema, spec))
    return plan


def limits_for(spec: ModelSpec, **overrides: Any) -> DrainLimits:
    from flywheel.drain.runner import DrainLimits

    d = spec.drain
    values: dict[str, Any] = {
        "max_records": d.max_records, "max_seconds": d.max_seconds, "flush_rows": d.flush_rows,
        "flush_bytes": d.flush_bytes, "max_event_bytes": d.max_event_bytes, "dead_letter_topic": d.dead_letter_topic,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DrainLimits(**values)


def drain_topic(settings: Settings, topic: str, *, owner: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Drain one topic named by the specs; returns the run's summary (small: fit for XCom)."""
    from flywheel.drain.runner import TopicDrain
    from flywheel.specs import load_specs

    plan = drain_plan(load_specs(settings.specs_dir))
    if topic not in plan:
        raise ConfigError(f"topic {topic!r} is not named by any spec in {settings.specs_dir} (known: {sorted(plan)})")
    schema, spec = plan[topic]
    drain = TopicDrain(settings, schema, settings.open_store(), limits_for(spec, **overrides), owner=owner)
    return drain.run().as_dict()
