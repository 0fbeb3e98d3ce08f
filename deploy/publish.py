"""Publishing promote and rollback events so that every replica sees them in order.

Replicas apply promote/rollback events in the order they read them, and Kafka orders
only within a partition. Keying every live-pointer event with the same key (``KEY``)
puts them on one partition, so "promote B, then roll back to A" never arrives reversed.
(The shared ``event_key`` keys by event id, which scatters them.)

The producer is idempotent, so the broker tracks its producer id. A restarted broker (or
one that expired the id) answers the next send with a producer-state error; kafka-python
recovers its own state, but the record in flight is lost. Those errors are retried once
on a fresh producer, so the first promotion after a broker restart still goes out.
"""

from __future__ import annotations

import asyncio
import threading

from kafka import KafkaProducer
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    OutOfOrderSequenceNumberError,
    UnknownProducerIdError,
)

from core.errors import BrokerUnavailable
from core.events import encode_event, event_headers
from core.producer import make_producer
from core.registry import PolicyEvent
from core.settings import KafkaSettings

KEY = b"live-policy"


def _needs_new_producer_errors() -> tuple[type[KafkaError], ...]:
    """Errors after which a producer must be replaced: the three producer-state errors,
    plus the classes kafka-python's transaction manager itself recovers from by a new
    producer id/epoch or treats as fatal for the producer (its lists, where present)."""
    from kafka.producer.transaction_manager import TransactionManager

    known = (UnknownProducerIdError, OutOfOrderSequenceNumberError, InvalidProducerEpochError)
    extra = (*getattr(TransactionManager, "_NEEDS_EPOCH_BUMP_ERRORS", ()),
             *getattr(TransactionManager, "_FATAL_ERRORS", ()))
    return tuple(dict.fromkeys((*known, *extra)))


NEEDS_NEW_PRODUCER = _needs_new_producer_errors()


def needs_new_producer(error: BaseException, producer: KafkaProducer | None = None) -> bool:
    """Whether ``error`` leaves the producer unusable, so a fresh one should retry."""
    if isinstance(error, NEEDS_NEW_PRODUCER):
        return True
    manager = getattr(producer, "_transaction_manager", None)
    has_fatal = getattr(manager, "has_fatal_error", None)
    return bool(has_fatal and has_fatal())


class PolicyPublisher:
    """Sends a PolicyEvent and waits for the broker's ack; BrokerUnavailable otherwise."""

    def __init__(self, kafka: KafkaSettings):
        self._kafka = kafka
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    async def publish(self, event: PolicyEvent) -> None:
        await asyncio.to_thread(self._send, event)

    def _send(self, event: PolicyEvent) -> None:
        """Blocking send; every wait is bounded by the settings' request timeout. A
        producer-state error (:func:`needs_new_producer`) is retried once on a new
        producer; any other KafkaError, or a second failure, is BrokerUnavailable."""
        with self._lock:
            try:
                try:
                    self._send_once(event)
                except KafkaError as e:
                    if not needs_new_producer(e, self._producer):
                        raise
                    self._close()
                    self._send_once(event)
            except KafkaError as e:
                self._close()
                raise BrokerUnavailable(f"Kafka at {self._kafka.bootstrap_servers}: {e}") from e

    def _send_once(self, event: PolicyEvent) -> None:
        if self._producer is None:
            self._producer = make_producer(self._kafka)
        self._producer.send(self._kafka.topics.policy, key=KEY,
                            value=encode_event(event), headers=event_headers(event)
                            ).get(timeout=self._kafka.request_timeout_ms / 1000)

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
