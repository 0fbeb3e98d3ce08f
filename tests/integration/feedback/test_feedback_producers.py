"""The producers against a real broker that is stopped and started under them."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from core.errors import BrokerUnavailable
from core.events import Demonstration, decode_event
from core.producer import CompletionLogPublisher, FeedbackPublisher
from tests.fixtures.events import completion
from tests.fixtures.kafka import read_topic, wait_for

pytestmark = pytest.mark.kafka


async def test_feedback_publisher_raises_broker_unavailable_quickly_and_recovers(kafka_broker):
    kafka = kafka_broker.kafka  # request timeout 2 s
    publisher = FeedbackPublisher(kafka)
    await publisher.publish(kafka.topics.feedback, Demonstration(prompt="p", response="r"))

    kafka_broker.stop()
    for _ in range(2):  # once with a built producer, once while rebuilding it
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await publisher.publish(kafka.topics.feedback, Demonstration(prompt="p", response="r"))
        assert time.monotonic() - started < 5

    kafka_broker.start()  # a fresh, empty broker on the same port
    demo = Demonstration(prompt="after", response="r")
    await publisher.publish(kafka.topics.feedback, demo)
    [record] = read_topic(kafka, kafka.topics.feedback, expected=1)
    assert decode_event(record.value) == demo
    publisher.close()


async def test_feedback_publisher_built_while_the_broker_is_down_fails_fast(kafka_broker):
    kafka = kafka_broker.kafka
    kafka_broker.stop()
    publisher = FeedbackPublisher(kafka)
    started = time.monotonic()
    results = await asyncio.gather(
        *[publisher.publish(kafka.topics.feedback, Demonstration(prompt="p", response="r"))
          for _ in range(5)], return_exceptions=True)
    assert all(isinstance(r, BrokerUnavailable) for r in results), results
    assert time.monotonic() - started < 8
    publisher.close()


def _sample(registry: CollectorRegistry, name: str, topic: str) -> float:
    return registry.get_sample_value(name, {"topic": topic}) or 0.0


def test_completion_log_buffers_while_the_broker_is_down_and_delivers_after(kafka_broker):
    kafka = kafka_broker.kafka
    topic = kafka.topics.completions
    registry = CollectorRegistry()
    log = CompletionLogPublisher(kafka, buffer_size=100, registry=registry,
                                 retry_backoff_s=0.1)
    log.publish_nowait(completion("before"))
    assert log.flush(timeout=10)

    kafka_broker.stop()
    started = time.monotonic()
    events = [completion(f"down-{i}") for i in range(20)]
    for e in events:
        log.publish_nowait(e)
    assert time.monotonic() - started < 0.1  # never blocks the caller
    assert log.buffered == 20
    assert _sample(registry, "rlhf:events_buffered", topic) == 20
    assert not log.flush(timeout=1.5)  # nothing can be delivered

    kafka_broker.start()
    assert log.flush(timeout=30)
    delivered = {decode_event(r.value).event_id for r in read_topic(kafka, topic, expected=20)}
    assert delivered >= {e.event_id for e in events}
    assert _sample(registry, "rlhf:events_buffered", topic) == 0
    assert _sample(registry, "rlhf:events_published_total", topic) >= 21
    assert _sample(registry, "rlhf:events_dropped_total", topic) == 0
    log.close()


def test_completion_log_drops_the_oldest_when_full_and_counts_them(kafka_broker):
    kafka = kafka_broker.kafka
    topic = kafka.topics.completions
    registry = CollectorRegistry()
    kafka_broker.stop()
    log = CompletionLogPublisher(kafka, buffer_size=10, registry=registry,
                                 retry_backoff_s=0.1)
    events = [completion(f"r{i}") for i in range(15)]
    for e in events:
        log.publish_nowait(e)
    assert log.buffered == 10
    assert _sample(registry, "rlhf:events_dropped_total", topic) == 5

    kafka_broker.start()
    assert log.flush(timeout=30)
    delivered = [decode_event(r.value).request_id for r in read_topic(kafka, topic, expected=10)]
    wait_for(lambda: _sample(registry, "rlhf:events_published_total", topic) == 10, 5,
             what="the published counter")
    assert sorted(delivered) == sorted(e.request_id for e in events[5:])
    log.close()
