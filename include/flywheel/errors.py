"""Named exceptions, so callers (CLI, DAG tasks, the scorer) can turn them into one clear message.

Every error a user can cause by configuration or input derives from :class:`FlywheelError`; the CLI
prints its message without a traceback.
"""


class FlywheelError(Exception):
    """Base class: the message is written for the person running flywheel."""


class ConfigError(FlywheelError):
    """A setting is missing, malformed or points at something that is not there."""


class SpecError(ConfigError):
    """A model spec is invalid; the message names the file, the field and the reason."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path, self.field, self.reason = path, field, reason
        super().__init__(f"{path}: {field}: {reason}")


class BrokerUnavailable(FlywheelError):
    """The Kafka cluster did not answer in time."""


class StoreError(FlywheelError):
    """Base class for object-store failures."""


class StoreUnavailable(StoreError):
    """The object store could not be reached (endpoint down, bucket missing, no permission)."""


class ObjectNotFound(StoreError):
    """The key does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object exists (create-if-absent) or changed (compare-and-swap)."""
