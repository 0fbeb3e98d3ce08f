"""The ingester counts what it accepts by event kind and source (real broker, SQLite).

One event of each kind goes through Kafka into the store; the counters say which kind
and which role sent it, leave out what was dead-lettered, and count a replay again next
to ``rlhf:ingest_duplicates`` while the store itself stays exact.
"""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from core.events import Comparison, Demonstration, Event, Ranking, Rating, encode_event, event_key
from feedback.ingest import Ingester
from feedback.settings import IngestSettings
from feedback.store import FeedbackStore
from tests.fixtures.events import completion
from tests.fixtures.kafka import produce_raw, wait_for

pytestmark = pytest.mark.kafka


def _records(*events: Event) -> list[tuple[bytes | None, bytes]]:
    return [(event_key(e), encode_event(e)) for e in events]


def test_accepted_events_are_counted_by_kind_and_source(kafka_broker, sqlite_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(sqlite_url)
    store.migrate()
    settings = IngestSettings(kafka=kafka, group_id="ingest-metrics", session_timeout_ms=3000,
                              max_poll_interval_ms=30000, poll_timeout_ms=100, metrics_port=0)
    registry = CollectorRegistry()
    ingester = Ingester(settings, store=FeedbackStore(sqlite_url), registry=registry,
                        max_backoff_s=0.5)

    def accepted(kind: str, source: str) -> float | None:
        return registry.get_sample_value("rlhf:ingest_accepted_total",
                                         {"kind": kind, "source": source})

    def total(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    def all_accepted() -> float:
        return sum(s.value for family in registry.collect() for s in family.samples
                   if s.name == "rlhf:ingest_accepted_total")

    thread = threading.Thread(target=ingester.run, daemon=True)
    thread.start()
    try:
        # The completion first, so that no feedback is parked waiting for it.
        produce_raw(kafka, kafka.topics.completions, _records(completion("req-1", n=4)))
        wait_for(lambda: accepted("completion", "serving") == 1, 30, what="the completion")

        demonstration = Demonstration(prompt="Say hi.", response="Hi!", source="labeler")
        feedback = [
            Ranking(request_id="req-1", choices=[0, 1, 2], ranks=[1, 2, 3], source="labeler"),
            Comparison(request_id="req-1", choice_a=0, choice_b=1, preferred="a"),
            Rating(prompt="p", response="r", score=1.0, source="admin"),
            demonstration,
            # The store rejects this one (req-1 has no choice 9): dead-lettered, not counted.
            Rating(request_id="req-1", choice=9, score=2.0, source="labeler"),
        ]
        produce_raw(kafka, kafka.topics.feedback,
                    [*_records(*feedback), (b"junk", b"not an event")])
        # Counted after each batch commits (the records span partitions, so batches):
        # wait until all six are counted, then check where each one went.
        wait_for(lambda: all_accepted() == 5 and total(
            "rlhf:ingest_dead_lettered_total", topic=kafka.topics.dlq) == 2, 30,
            what="four feedback events accepted and two dead-lettered")

        assert accepted("ranking", "labeler") == 1
        assert accepted("comparison", "user") == 1
        assert accepted("rating", "admin") == 1
        assert accepted("demonstration", "labeler") == 1
        assert accepted("completion", "serving") == 1
        assert accepted("rating", "labeler") == 0  # the rejected one
        # Every other kind and source is exported at 0 from the start (rate() works).
        assert accepted("ranking", "user") == 0 and accepted("demonstration", "admin") == 0
        # The old series keep their meaning: rows written per outcome.
        assert total("rlhf:ingest_persisted_total", kind="completion") == 1
        assert total("rlhf:ingest_persisted_total", kind="feedback") == 4
        assert total("rlhf:ingest_persisted_total", kind="pending") == 0

        # A replay is accepted again (and counted a duplicate); the store keeps one row.
        produce_raw(kafka, kafka.topics.feedback, _records(demonstration))
        wait_for(lambda: total("rlhf:ingest_duplicates_total") == 1, 30, what="the replay")
        assert accepted("demonstration", "labeler") == 2
        assert total("rlhf:ingest_persisted_total", kind="feedback") == 4
        assert store.counts()["demonstration"] == 1
    finally:
        ingester.stop()
        thread.join(30)
    assert not thread.is_alive()
    store.close()
