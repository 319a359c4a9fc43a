"""The streaming service: Kafka topics, the faust worker (predict -> judge -> learn), the local broker,
metrics, dead letters, checkpoints and the users' commands (``driftlabel broker|worker|produce|consume|
add-class|demo``). See ``docs/streaming.md``.

Only light modules are imported here; the worker (:mod:`driftlabel.streams.worker`, faust) and the
typed messages (:mod:`driftlabel.streams.messages`) load on first use.
"""

from driftlabel.streams.errors import (
    BrokerError,
    CheckpointError,
    DataUnavailableError,
    InvalidMessageError,
    ServiceError,
    StreamsError,
    TopicError,
)
from driftlabel.streams.routing import AdaptiveRouter, uncertainty
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings

__all__ = [
    "AdaptiveRouter",
    "BrokerError",
    "CheckpointError",
    "DataUnavailableError",
    "InvalidMessageError",
    "KafkaSettings",
    "MetricsSettings",
    "ServiceError",
    "StreamSettings",
    "StreamsError",
    "TopicError",
    "uncertainty",
]
