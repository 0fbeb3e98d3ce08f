"""The completion log never stalls behind a record Kafka can never accept."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from core.events import decode_event
from core.producer import CompletionLogPublisher
from tests.fixtures.events import completion
from tests.fixtures.kafka import read_topic, wait_for

pytestmark = pytest.mark.kafka


def test_an_oversized_record_is_dropped_and_counted_and_the_rest_are_published(kafka_broker):
    kafka = kafka_broker.kafka
    topic = kafka.topics.completions
    registry = CollectorRegistry()
    log = CompletionLogPublisher(kafka, buffer_size=100, registry=registry,
                                 retry_backoff_s=0.1)
    # Eight 200 KB stop strings: over the producer's 1 MiB max_request_size.
    huge = completion("huge").model_copy(
        update={"sampling_params": {"stop": ["s" * 200_000] * 8}})
    log.publish_nowait(huge)
    events = [completion(f"after-{i}") for i in range(20)]
    for e in events:
        log.publish_nowait(e)
    assert log.flush(timeout=30), "the completion log is stuck behind the oversized record"
    delivered = {decode_event(r.value).request_id for r in read_topic(kafka, topic, 20)}
    assert delivered == {e.request_id for e in events}
    wait_for(lambda: registry.get_sample_value(
        "rlhf:events_rejected_total", {"topic": topic, "reason": "too_large"}) == 1, 5,
        what="the too_large counter")
    assert registry.get_sample_value("rlhf:events_published_total", {"topic": topic}) == 20
    log.close()
