"""The dead-letter topic: where records that cannot be stored go, with the reason.

Modelled on arroyo's ``dlq.py``: the original bytes are kept untouched and the reason
and origin travel as headers (``error``, ``source_topic``, ``source_partition``,
``source_offset``), so a record can be inspected and replayed later. Every dead letter,
whatever step produced it, is one :class:`DeadLetter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaProducer

from core.producer import make_producer
from core.settings import KafkaSettings

MAX_ERROR_BYTES = 4000
"""The ``error`` header is cut to this many bytes (a DB message can quote the whole row)."""


@dataclass(frozen=True)
class DeadLetter:
    """One record for the dead-letter topic: its bytes, key, why, and where it came from.

    ``partition``/``offset`` are ``None`` when unknown (feedback parked before the store
    recorded its origin); the headers then carry empty values.
    """

    value: bytes | None
    key: bytes | None
    reason: str
    topic: str
    partition: int | None = None
    offset: int | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        return dlq_headers(self.reason, self.topic, self.partition, self.offset)


def dlq_headers(error: str, topic: str, partition: int | None,
                offset: int | None) -> list[tuple[str, bytes]]:
    """Headers of a dead-lettered record; partition/offset are empty when unknown."""
    return [("error", error.encode(errors="replace")[:MAX_ERROR_BYTES]),
            ("source_topic", topic.encode()),
            ("source_partition", b"" if partition is None else str(partition).encode()),
            ("source_offset", b"" if offset is None else str(offset).encode())]


class DeadLetterQueue:
    """Sends dead letters to the DLQ topic; ``flush`` waits for every ack."""

    def __init__(self, kafka: KafkaSettings):
        self._kafka = kafka
        self.topic = kafka.topics.dlq
        self._producer: KafkaProducer | None = None
        self._futures: list = []

    def send(self, letter: DeadLetter) -> None:
        if self._producer is None:
            self._producer = make_producer(self._kafka)
        self._futures.append(self._producer.send(
            self.topic, value=letter.value or b"", key=letter.key, headers=letter.headers()))

    def flush(self) -> int:
        """Wait until everything sent is acknowledged; raises KafkaError otherwise."""
        futures, self._futures = self._futures, []
        deadline = time.monotonic() + self._kafka.request_timeout_ms / 1000
        for f in futures:
            f.get(timeout=max(0.0, deadline - time.monotonic()))
        return len(futures)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
