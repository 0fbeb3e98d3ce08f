"""The published contract, checked with a second Kafka client that shares no code with ours.

confluent-kafka (librdkafka, C) reads what our kafka-python producers write and writes
what our ingester reads. Each message must carry the routing headers and validate
against the JSON Schema in docs/schemas/ that its ``rlhf-event-type`` header names; the
message it writes is built from docs/events.md alone (plain JSON, no pydantic), so a
team in another language could do the same.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from core.events import Comparison, Demonstration, Ranking, Rating
from core.producer import CompletionLogPublisher, FeedbackPublisher
from core.registry import PolicyEvent
from core.schemas import schema_file_for_type
from core.settings import KafkaSettings
from deploy.publish import PolicyPublisher
from feedback.store import FeedbackStore
from tests.fixtures.events import completion
from tests.fixtures.kafka import wait_for
from training.announce import announce

pytestmark = pytest.mark.kafka

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"
TOPIC_SCHEMA = {"completions": "completion.json", "feedback": "feedback.json",
                "policy": "policy.json"}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


def _consume(kafka: KafkaSettings, topic: str, expected: int, timeout: float = 30.0) -> list:
    """Every message of ``topic`` from offset 0, read by librdkafka without a group."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                         "group.id": f"independent-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(partitions)])
        messages: list = []
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            messages.append(message)
        return messages
    finally:
        consumer.close()


def _produce(kafka: KafkaSettings, topic: str, key: bytes, value: bytes,
             headers: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "enable.idempotence": True, "acks": "all"})
    delivered: list = []
    producer.produce(topic, key=key, value=value, headers=headers,
                     on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(15) == 0 and delivered == [None], delivered


async def test_every_topic_carries_headers_and_validates_against_the_published_schema(
        kafka_broker):
    kafka = kafka_broker.kafka
    feedback = [Ranking(request_id="req-1", choices=[0, 1], ranks=[1, 2], source="labeler"),
                Comparison(prompt="p", text_a="a", text_b="b", preferred="b"),
                Rating(request_id="req-1", choice=0, score=3.0),
                Demonstration(messages=[{"role": "user", "content": "hi"}], response="ho")]
    publisher = FeedbackPublisher(kafka)
    await publisher.publish_batch(kafka.topics.feedback, feedback)
    await publisher.publish(kafka.topics.policy, PolicyEvent(type="swapped", version="p-1",
                                                             replica="serving-0"))
    publisher.close()
    log = CompletionLogPublisher(kafka)
    log.publish_nowait(completion("req-1", n=2))
    assert log.flush(15)
    log.close()
    policy = PolicyPublisher(kafka)
    await policy.publish(PolicyEvent(type="promote", version="p-1"))
    policy.close()
    announce(kafka, "p-2", "policy")

    sent = {"feedback": 4, "completions": 1, "policy": 3}
    for name, count in sent.items():
        topic = getattr(kafka.topics, name)
        messages = _consume(kafka, topic, count)
        assert len(messages) == count, (topic, len(messages))
        for message in messages:
            headers = dict(message.headers() or [])
            assert headers["content-type"] == b"application/json"
            assert headers["rlhf-schema-version"] == b"1"
            event_type = headers["rlhf-event-type"].decode()
            body = json.loads(message.value())
            assert body["type"] == event_type
            _validator(schema_file_for_type(event_type)).validate(body)
            _validator(TOPIC_SCHEMA[name]).validate(body)
        if name == "policy":
            types = sorted(json.loads(m.value())["type"] for m in messages)
            assert types == ["candidate", "promote", "swapped"]


def test_a_message_written_by_another_client_is_stored_and_a_bad_one_dead_lettered(
        kafka_broker, ingester_process, store_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(store_url)
    store.migrate()
    event_id = f"ext-{uuid.uuid4().hex}"
    body = {"type": "demonstration", "event_id": event_id, "schema_version": 1,
            "created_at": "2026-01-02T03:04:05Z", "source": "labeler",
            "prompt": "Name a prime.", "response": "Seven."}
    _validator("demonstration.json").validate(body)
    headers = [("rlhf-event-type", b"demonstration"), ("rlhf-schema-version", b"1"),
               ("content-type", b"application/json")]
    _produce(kafka, kafka.topics.feedback, event_id.encode(), json.dumps(body).encode(),
             headers)
    bad = {**body, "event_id": "ext-bad", "response": ""}  # response needs a character
    assert list(_validator("demonstration.json").iter_errors(bad))
    _produce(kafka, kafka.topics.feedback, b"ext-bad", json.dumps(bad).encode(), headers)

    ingester = ingester_process(store_url)
    [row] = wait_for(store.demonstrations, 30, what="the demonstration in the store")
    assert (row.prompt, row.response) == ("Name a prime.", "Seven.")

    [dead] = _consume(kafka, kafka.topics.dlq, 1)
    dlq = dict(dead.headers() or [])
    assert dead.value() == json.dumps(bad).encode()  # the original bytes, untouched
    assert b"response" in dlq["error"]
    assert dlq["source_topic"] == kafka.topics.feedback.encode()
    assert int(dlq["source_partition"]) >= 0 and int(dlq["source_offset"]) >= 0
    assert store.counts()["demonstration"] == 1
    assert ingester.terminate() == 0, ingester.log()
    store.close()
