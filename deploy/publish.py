"""Publishing promote and rollback events so that every replica sees them in order.

Replicas apply promote/rollback events in the order they read them, and Kafka orders
only within a partition. Keying every live-pointer event with the same key (``KEY``)
puts them on one partition, so "promote B, then roll back to A" never arrives reversed.
(The shared ``event_key`` keys by event id, which scatters them.)
"""

from __future__ import annotations

import asyncio
import threading

from kafka import KafkaProducer
from kafka.errors import KafkaError

from core.errors import BrokerUnavailable
from core.events import encode_event
from core.producer import make_producer
from core.registry import PolicyEvent
from core.settings import KafkaSettings

KEY = b"live-policy"


class PolicyPublisher:
    """Sends a PolicyEvent and waits for the broker's ack; BrokerUnavailable otherwise."""

    def __init__(self, kafka: KafkaSettings):
        self._kafka = kafka
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    async def publish(self, event: PolicyEvent) -> None:
        await asyncio.to_thread(self._send, event)

    def _send(self, event: PolicyEvent) -> None:
        """Blocking send; every wait is bounded by the settings' request timeout."""
        with self._lock:
            try:
                if self._producer is None:
                    self._producer = make_producer(self._kafka)
                self._producer.send(self._kafka.topics.policy, key=KEY,
                                    value=encode_event(event)
                                    ).get(timeout=self._kafka.request_timeout_ms / 1000)
            except KafkaError as e:
                self._close()
                raise BrokerUnavailable(f"Kafka at {self._kafka.bootstrap_servers}: {e}") from e

    def _close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except KafkaError:
                pass
            self._producer = None

    def close(self) -> None:
        with self._lock:
            self._close()
