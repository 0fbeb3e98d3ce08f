"""Where a partition ends, on the embedded broker (issue 28, item 3: offsets we can trust).

Tansu 0.6.0 answers ListOffsets "latest" (``KafkaConsumer.end_offsets()``) with the newest
record batch's base offset + 1, not the high watermark: 50 records produced in 5 batches of
10 end at 41 (docs/tansu-end-offsets.md). ``core.consumer`` reads the end from Fetch
responses instead; the ingester's ``rlhf:ingest_lag``, ``rlhf deploy status``, the fleet
watcher and the soak's DLQ count rely on it.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from core.consumer import high_watermarks
from core.events import Rating, encode_event
from core.registry import PolicyEvent
from core.settings import KafkaSettings
from deploy.notices import read_replica_versions
from deploy.rollout import FleetWatcher
from feedback.ingest import Ingester
from feedback.settings import IngestSettings
from feedback.store import FeedbackStore
from feedback.store.models import Base
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.kafka

RECORDS, PER_BATCH = 50, 10


def produce_in_batches(kafka: KafkaSettings, topic: str, values: list[bytes],
                       per_batch: int = PER_BATCH, partition: int = 0) -> None:
    """Produce ``values`` to one partition, flushing after every ``per_batch``: one record
    batch each (offsets 0, 10, 20 … are the batches' base offsets)."""
    producer = KafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    try:
        for start in range(0, len(values), per_batch):
            for value in values[start:start + per_batch]:
                producer.send(topic, partition=partition, value=value)
            producer.flush(10)
    finally:
        producer.close()


def test_end_offsets_is_the_newest_batch_plus_one_on_tansu_and_the_helper_is_not(kafka_broker):
    """The reproduction (docs/tansu-end-offsets.md) next to the helper that replaces it.

    If Tansu fixes ListOffsets, the first assertions fail: update the doc and this test.
    """
    kafka = kafka_broker.kafka
    topic = kafka.topics.dlq
    produce_in_batches(kafka, topic, [b"dead letter %d" % i for i in range(RECORDS)])
    tp, empty = TopicPartition(topic, 0), TopicPartition(topic, 1)

    consumer = KafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False)
    admin = KafkaAdminClient(**kafka.client_kwargs())
    try:
        consumer.assign([tp, empty])
        # ListOffsets latest: the base offset of the last batch (40) + 1, not 50.
        assert consumer.end_offsets([tp])[tp] == 41
        assert admin.list_partition_offsets({tp: OffsetSpec.LATEST})[tp].offset == 41
        assert consumer.beginning_offsets([tp])[tp] == 0

        assert high_watermarks(consumer, [tp, empty]) == {tp: RECORDS, empty: 0}
        assert consumer.position(tp) == RECORDS  # left at the end: the next record is new
        produce_in_batches(kafka, topic, [b"the next one"])
        records = wait_for(lambda: consumer.poll(timeout_ms=200).get(tp), 10,
                           what="the record produced after the end")
        assert [(r.offset, r.value) for r in records] == [(RECORDS, b"the next one")]

        with pytest.raises(ValueError, match="fetched"):  # its highwater() is a past one
            high_watermarks(consumer, [tp])
    finally:
        admin.close()
        consumer.close()


def test_ingest_lag_counts_the_records_waiting_for_the_store(kafka_broker, sqlite_url):
    """While the store is down, the ingester's lag is every record not yet stored: the
    batch it holds (its position has passed it) and those it has not polled yet."""
    kafka = kafka_broker.kafka
    topic = kafka.topics.feedback
    store = FeedbackStore(sqlite_url)
    store.migrate()
    with store.engine.begin() as conn:  # the ratings table is gone: every write fails
        conn.execute(text("DROP TABLE ratings"))
    ratings = [Rating(prompt="p", response=f"r{i}", score=i) for i in range(RECORDS)]
    produce_in_batches(kafka, topic, [encode_event(r) for r in ratings])

    settings = IngestSettings(kafka=kafka, group_id="lag", batch_size=PER_BATCH,
                              session_timeout_ms=3000, max_poll_interval_ms=30000,
                              poll_timeout_ms=100, metrics_port=0)
    registry = CollectorRegistry()
    ingester = Ingester(settings, store=FeedbackStore(sqlite_url), registry=registry,
                        max_backoff_s=0.5)

    def lag() -> float | None:
        return registry.get_sample_value("rlhf:ingest_lag",
                                         {"topic": topic, "partition": "0"})

    thread = threading.Thread(target=ingester.run)
    thread.start()
    try:
        wait_for(lambda: lag() is not None, 30, what="rlhf:ingest_lag while the store is down")
        assert lag() == RECORDS  # 10 held in the failing batch + 40 not polled yet
        assert store.counts()["rating"] == 0

        with store.engine.begin() as conn:  # the database "comes back"
            Base.metadata.tables["ratings"].create(conn)
        wait_for(lambda: store.counts()["rating"] == RECORDS, 30, what="every rating stored")
        wait_for(lambda: lag() == 0, 30, what="the lag back at 0")
    finally:
        ingester.stop()
        thread.join(30)
    assert not thread.is_alive()
    store.close()


def heartbeats(n: int) -> list[bytes]:
    return [encode_event(PolicyEvent(type="heartbeat", version="policy-0001", replica=f"r{i:02}",
                                     url=f"http://r{i:02}:8000", ready=True))
            for i in range(n)]


def test_deploy_status_and_the_fleet_watcher_read_to_the_true_end(kafka_broker):
    """Heartbeats in batches of several records: every replica is in the table."""
    kafka = kafka_broker.kafka
    produce_in_batches(kafka, kafka.topics.policy, heartbeats(30))
    replicas = [f"r{i:02}" for i in range(30)]

    assert [r.replica for r in read_replica_versions(kafka)] == replicas

    async def watch() -> list[str]:
        watcher = FleetWatcher(kafka, stale_after_s=300)
        task = asyncio.create_task(watcher.run())
        try:
            await watcher.wait_caught_up(30)
            assert watcher._caught_up.is_set()  # at every partition's end, not just past 41
            return [r.replica for r in watcher.fleet()]
        finally:
            watcher.stop()
            await task

    assert asyncio.run(watch()) == replicas
