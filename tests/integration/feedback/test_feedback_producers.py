"""The producers against a real broker that is stopped and started under them."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from core.errors import BrokerUnavailable
from core.events import Demonstration, decode_event
from core.producer import CompletionLogPublisher, FeedbackPublisher, RecordTooLarge
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


async def test_many_publishes_in_flight_await_the_acks_without_a_thread_each(kafka_broker):
    """200 publishes at once: each returns only once its event is on the broker, and they
    share the producer's I/O thread; only the first (the producer's build and the topic's
    metadata) runs in a worker thread. A thread per send would need the default pool's
    min(32, cores + 4) workers."""
    kafka = kafka_broker.kafka
    publisher = FeedbackPublisher(kafka)
    demos = [Demonstration(prompt=f"p{i}", response="r") for i in range(200)]
    before = set(threading.enumerate())
    await asyncio.gather(*[publisher.publish(kafka.topics.feedback, d) for d in demos])
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("asyncio_")]
    assert len(workers) <= 1, [t.name for t in workers]
    records = read_topic(kafka, kafka.topics.feedback, expected=200)
    assert {decode_event(r.value).event_id for r in records} == {d.event_id for d in demos}
    publisher.close()


async def test_a_record_too_large_for_the_producer_names_its_index_and_spares_the_rest(
        kafka_broker):
    kafka = kafka_broker.kafka
    publisher = FeedbackPublisher(kafka)
    small = Demonstration(prompt="p", response="r")
    huge = Demonstration(prompt="p", response="\U0001d11e" * 300_000)  # 1.2 MB of UTF-8
    with pytest.raises(RecordTooLarge) as exc:
        await publisher.publish_batch(kafka.topics.feedback, [small, huge])
    assert exc.value.index == 1 and exc.value.size > 1 << 20
    after = Demonstration(prompt="after", response="r")
    await publisher.publish(kafka.topics.feedback, after)  # the producer was kept
    ids = {decode_event(r.value).event_id for r in read_topic(kafka, kafka.topics.feedback,
                                                                expected=2)}
    assert ids == {small.event_id, after.event_id}
    publisher.close()


def _sample(registry: CollectorRegistry, name: str, topic: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"topic": topic, **labels}) or 0.0


def test_completion_log_buffers_while_the_broker_is_down_and_delivers_after(kafka_broker,
                                                                             caplog):
    caplog.set_level(logging.WARNING, logger="core.producer")
    kafka = kafka_broker.kafka  # request timeout 2 s
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
    # Never blocks the caller: one call that waited on the dead broker would take a request
    # timeout, twenty appends to the buffer take microseconds even on a loaded machine.
    assert time.monotonic() - started < kafka.request_timeout_ms / 1000
    assert log.buffered == 20
    assert _sample(registry, "rlhf:events_buffered", topic) == 20
    # Nothing can be delivered: once a delivery attempt has failed, all 20 are still held.
    wait_for(lambda: any("Kafka unavailable" in r.getMessage() for r in caplog.records), 30,
             what="a failed delivery attempt")
    assert log.buffered == 20
    assert _sample(registry, "rlhf:events_published_total", topic) == 1  # "before"

    kafka_broker.start()
    assert log.flush(timeout=30)
    delivered = {decode_event(r.value).event_id for r in read_topic(kafka, topic, expected=20)}
    assert delivered >= {e.event_id for e in events}
    assert _sample(registry, "rlhf:events_buffered", topic) == 0
    assert _sample(registry, "rlhf:events_published_total", topic) >= 21
    assert _sample(registry, "rlhf:events_dropped_total", topic, reason="no_spill") == 0
    log.close()


def _event_ids(kafka, topic: str, at_least: int) -> Counter:
    """How often each event_id is on ``topic``. Called once the publisher has nothing left
    to send, so every record it sent is there: read until one more than expected could
    have arrived, which shows a duplicate too."""
    records = read_topic(kafka, topic, expected=at_least + 1, timeout=3)
    return Counter(decode_event(r.value).event_id for r in records)


def test_completion_log_spills_when_full_and_replays_each_event_once_when_the_broker_is_back(
        kafka_broker, tmp_path):
    kafka = kafka_broker.kafka
    topic = kafka.topics.completions
    spill = tmp_path / "spill"
    registry = CollectorRegistry()
    kafka_broker.stop()
    # The timer never fires in this test: the replay comes from the broker answering again.
    log = CompletionLogPublisher(kafka, buffer_size=10, registry=registry,
                                 retry_backoff_s=0.1, spill_dir=spill, replay_interval_s=3600)
    events = [completion(f"r{i}") for i in range(15)]
    for e in events:
        log.publish_nowait(e)
    assert log.buffered == 10 and log.spilled == 5
    assert _sample(registry, "rlhf:events_spilled_total", topic, reason="buffer_full") == 5
    assert sum(1 for f in spill.glob("*.jsonl") for _ in f.read_bytes().splitlines()) == 5

    kafka_broker.start()  # a fresh, empty broker on the same port
    wait_for(lambda: log.buffered == 0 and log.spilled == 0, 60,
             what="the buffer delivered and the spill replayed")
    assert _event_ids(kafka, topic, len(events)) == Counter(e.event_id for e in events)
    assert list(spill.glob("*.jsonl")) == []  # replayed lines are removed
    assert _sample(registry, "rlhf:events_replayed_total", topic) == 5
    assert _sample(registry, "rlhf:events_published_total", topic) == 15
    assert _sample(registry, "rlhf:events_in_spill", topic) == 0
    assert _sample(registry, "rlhf:events_dropped_total", topic, reason="spill_failed") == 0
    log.close()


def test_events_spilled_at_shutdown_are_replayed_by_the_next_process_at_start_up(
        kafka_broker, tmp_path):
    kafka = kafka_broker.kafka
    topic = kafka.topics.completions
    spill = tmp_path / "spill"
    kafka_broker.stop()
    first = CompletionLogPublisher(kafka, registry=CollectorRegistry(), retry_backoff_s=0.1,
                                   spill_dir=spill, replay_interval_s=3600)
    events = [completion(f"s{i}") for i in range(5)]
    for e in events:
        first.publish_nowait(e)
    first.close(timeout=0.5)  # the broker is down: everything goes to the spill
    assert sum(1 for f in spill.glob("*.jsonl") for _ in f.read_bytes().splitlines()) == 5

    kafka_broker.start()
    registry = CollectorRegistry()
    second = CompletionLogPublisher(kafka, registry=registry, spill_dir=spill,
                                    replay_interval_s=3600)
    wait_for(lambda: _sample(registry, "rlhf:events_replayed_total", topic) == 5, 30,
             what="the start-up replay")
    wait_for(lambda: not list(spill.glob("*.jsonl")), 10, what="the replayed segment removed")
    assert _event_ids(kafka, topic, len(events)) == Counter(e.event_id for e in events)
    second.close()


def test_completion_log_without_a_spill_drops_the_oldest_when_full_and_counts_them(
        kafka_broker):
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
    assert _sample(registry, "rlhf:events_dropped_total", topic, reason="no_spill") == 5

    kafka_broker.start()
    assert log.flush(timeout=30)
    delivered = [decode_event(r.value).request_id for r in read_topic(kafka, topic, expected=10)]
    wait_for(lambda: _sample(registry, "rlhf:events_published_total", topic) == 10, 5,
             what="the published counter")
    assert len(delivered) == 10
    log.close()
