"""Tell the platform about a new version: a candidate event on ``rlhf.policy``."""

from __future__ import annotations

import logging

from core.registry import Kind, PolicyEvent
from core.settings import KafkaSettings

log = logging.getLogger(__name__)


def announce(kafka: KafkaSettings, version: str, kind: Kind, reason: str = "trained"
             ) -> PolicyEvent:
    """Publish a ``candidate`` PolicyEvent and wait for the broker's ack.

    Raises the producer's KafkaError when no broker acknowledges within the timeout; the
    version is already in the registry then, so a retry only has to announce it again.
    """
    from core.events import encode_event, event_headers
    from core.producer import make_producer

    event = PolicyEvent(type="candidate", version=version, kind=kind, reason=reason)
    producer = make_producer(kafka)
    try:
        timeout_s = kafka.request_timeout_ms / 1000
        producer.send(kafka.topics.policy, key=version.encode(), value=encode_event(event),
                      headers=event_headers(event)).get(timeout=timeout_s)
    finally:
        producer.close(timeout=1)
    log.info("announced %s %s on %s", kind, version, kafka.topics.policy)
    return event
