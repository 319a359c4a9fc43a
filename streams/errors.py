"""The streaming service's branch of the exception tree.

::

    DriftlabelError
    └── StreamsError
        ├── InvalidMessageError (also ValueError)   a record that cannot be processed -> dead-letter
        ├── BrokerError                             the local broker would not start / stop
        ├── TopicError                              topics could not be created or checked
        ├── CheckpointError                         a checkpoint is missing, corrupt or foreign
        ├── DataUnavailableError                    the demo data is neither on disk nor downloadable
        └── ServiceError                            a worker / the demo failed; the message says what to do

Every message says what went wrong and what to do next.
"""

from __future__ import annotations

from driftlabel.errors import DriftlabelError

__all__ = [
    "BrokerError",
    "CheckpointError",
    "DataUnavailableError",
    "InvalidMessageError",
    "ServiceError",
    "StreamsError",
    "TopicError",
]


class StreamsError(DriftlabelError):
    """Base of every error raised by :mod:`driftlabel.streams`."""


class InvalidMessageError(StreamsError, ValueError):
    """A record could not be processed; ``reason`` is a short machine-readable code for metrics.

    Reasons: ``invalid_utf8``, ``invalid_json``, ``wrong_type``, ``missing_field``, ``empty_text``,
    ``too_large``, ``unknown_op``, ``unknown_label``, ``invalid_value``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(StreamsError):
    """The local development broker could not be found, started, or stopped."""


class TopicError(StreamsError):
    """Topics could not be created or do not match the configuration."""


class CheckpointError(StreamsError):
    """A checkpoint directory is missing, corrupt, or was written for another topic set."""


class DataUnavailableError(StreamsError):
    """The demo's dataset is not on disk and could not be downloaded."""


class ServiceError(StreamsError):
    """A service process (worker, judge, broker) failed or did not become ready in time."""
