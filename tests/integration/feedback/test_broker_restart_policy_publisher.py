"""The deploy controller's publisher survives a broker restart.

After a restart the broker has forgotten the idempotent producer's id, so the first send
of the old producer fails with a producer-state error (UnknownProducerIdError and kin).
The publisher must replace its producer and send again, not answer 503.
"""

import asyncio

import pytest
from kafka import KafkaConsumer

from core.registry import PolicyEvent
from deploy.publish import PolicyPublisher
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.kafka


def _policy_events(kafka) -> list[bytes]:
    consumer = KafkaConsumer(kafka.topics.policy, **kafka.client_kwargs(),
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def test_first_promotion_after_a_broker_restart_is_published(kafka_broker):
    publisher = PolicyPublisher(kafka_broker.kafka)
    try:
        asyncio.run(publisher.publish(PolicyEvent(type="promote", version="policy-0001")))
        kafka_broker.stop()
        kafka_broker.start()  # same port; memory storage: a fresh broker
        asyncio.run(publisher.publish(PolicyEvent(type="promote", version="policy-0002")))
        values = wait_for(lambda: _policy_events(kafka_broker.kafka), 20,
                          what="the promotion on rlhf.policy")
        assert any(b"policy-0002" in v for v in values)
    finally:
        publisher.close()
