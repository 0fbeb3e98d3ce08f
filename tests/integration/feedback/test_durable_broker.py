"""The embedded broker's default storage is durable: Tansu on s3:// against the local
object store (alocals3, pinned), both killed with SIGKILL and restarted.

The object store is an alpha dependency, so the contract Tansu relies on is tested here
as our own: conditional writes (``If-None-Match: *`` creates only, ``If-Match`` replaces
only the version it names), acknowledged events and committed group offsets surviving a
crash of both processes, and `rlhf broker` running durable without being asked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from core.settings import KafkaSettings
from feedback.broker import DURABLE_STORAGE, EmbeddedBroker, free_port
from feedback.object_store import LocalObjectStore
from feedback.settings import EmbeddedBrokerSettings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path):
    with_store = LocalObjectStore(tmp_path / "s3", bucket="contract").start()
    yield with_store
    with_store.stop()


def test_conditional_writes_are_honoured(store):
    url = f"{store.endpoint}/contract/watermark.json"
    created = httpx.put(url, content=b"v1", headers={"If-None-Match": "*"})
    assert created.status_code in (200, 201), created.text
    etag = created.headers["ETag"]
    # create-only: a second writer that also believed the object absent must lose
    assert httpx.put(url, content=b"v1'", headers={"If-None-Match": "*"}).status_code == 412
    # compare-and-swap: only the version named may be replaced, once
    assert httpx.put(url, content=b"v2", headers={"If-Match": etag}).status_code == 200
    assert httpx.put(url, content=b"v2'", headers={"If-Match": etag}).status_code == 412
    assert httpx.get(url).content == b"v2"


def test_acknowledged_events_and_committed_offsets_survive_sigkill_of_both(tmp_path):
    broker = EmbeddedBroker(KafkaSettings(request_timeout_ms=5000), storage_url=DURABLE_STORAGE,
                            data_dir=tmp_path / "broker", log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        assert broker.durable
        topic = broker.kafka.topics.feedback
        sent = [f"event-{i}".encode() for i in range(200)]
        producer = KafkaProducer(**broker.kafka.client_kwargs(), acks="all",
                                 enable_idempotence=True)
        for i, value in enumerate(sent):  # many small batches, as a trickle of POSTs makes
            producer.send(topic, key=str(i % 7).encode(), value=value)
            if i % 20 == 0:
                producer.flush(10)
        producer.flush(10)
        producer.close()
        first = _consume(broker.kafka, topic, group="durable", limit=80)
        assert len(first) == 80

        broker.kill()  # SIGKILL tansu and the object store: nothing is flushed on the way
        broker.start()  # same port, same data directory

        rest = _consume(broker.kafka, topic, group="durable", limit=len(sent))
        # the group resumes at its committed offsets: no event twice, none lost
        assert sorted(first + rest) == sorted(sent)
        assert len(set(first) & set(rest)) == 0
    finally:
        broker.stop()


def _consume(kafka: KafkaSettings, topic: str, group: str, limit: int) -> list[bytes]:
    consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=8000,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        values: list[bytes] = []
        for message in consumer:
            values.append(message.value)
            if len(values) >= limit:
                break
        consumer.commit()
        return values
    finally:
        consumer.close()


def test_rlhf_broker_is_durable_by_default(tmp_path):
    assert EmbeddedBrokerSettings().storage_url == DURABLE_STORAGE
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "RLHF_BROKER__DATA_DIR": str(tmp_path / "broker")}
    env.pop("RLHF_BROKER__STORAGE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", "broker", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # printed once the broker serves
        assert ready.strip() == f"RLHF_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:{port}"
        assert (tmp_path / "broker" / "objects.db").exists()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "MEMORY storage" not in err
    assert not (tmp_path / "rlhf-home").exists()  # the data went where it was told
