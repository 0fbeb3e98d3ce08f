"""The ingester in-process on a real broker: offsets move only after the store commits."""

from __future__ import annotations

import threading

import pytest
from kafka import KafkaAdminClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from core.events import Rating, encode_event, event_key
from feedback.ingest import Ingester
from feedback.settings import IngestSettings
from feedback.store import FeedbackStore
from feedback.store.models import Base
from tests.fixtures.kafka import produce_raw, wait_for

pytestmark = pytest.mark.kafka


def _committed(kafka, group: str) -> int:
    """Sum of the group's committed offsets (0 when nothing is committed)."""
    admin = KafkaAdminClient(**kafka.client_kwargs())
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(max(0, o.offset) for o in offsets.values())
    finally:
        admin.close()


def test_while_the_database_fails_nothing_is_committed_and_the_batch_is_retried(
        kafka_broker, sqlite_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(sqlite_url)
    store.migrate()
    with store.engine.begin() as conn:  # the ratings table is gone: every write fails
        conn.execute(text("DROP TABLE ratings"))
    ratings = [Rating(prompt="p", response=f"r{i}", score=i) for i in range(5)]
    produce_raw(kafka, kafka.topics.feedback, [(event_key(r), encode_event(r)) for r in ratings])

    settings = IngestSettings(kafka=kafka, group_id="db-down", session_timeout_ms=3000,
                              max_poll_interval_ms=30000, poll_timeout_ms=100, metrics_port=0)
    registry = CollectorRegistry()
    ingester = Ingester(settings, store=FeedbackStore(sqlite_url), registry=registry,
                        max_backoff_s=0.5)
    thread = threading.Thread(target=ingester.run)
    thread.start()
    try:
        wait_for(lambda: (registry.get_sample_value("rlhf:ingest_db_retries_total") or 0) >= 3,
                 30, what="store retries")
        assert _committed(kafka, "db-down") == 0
        assert store.counts()["rating"] == 0

        with store.engine.begin() as conn:  # the database "comes back"
            Base.metadata.tables["ratings"].create(conn)
        wait_for(lambda: store.counts()["rating"] == 5, 30, what="the retried batch")
        wait_for(lambda: _committed(kafka, "db-down") == 5, 30, what="the offset commit")
    finally:
        ingester.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert registry.get_sample_value("rlhf:ingest_persisted_total", {"kind": "feedback"}) == 5
    store.close()
