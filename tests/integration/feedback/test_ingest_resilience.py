"""One event can never stop, stall or corrupt the ingester (real broker, SQLite and
PostgreSQL): values the store cannot hold and rows the database refuses are dead-lettered
while the rest is stored and committed; a flood of dead letters stops the consumer
without committing; parked feedback expires into the DLQ."""

from __future__ import annotations

import itertools
import json
import threading

import pytest
from kafka import KafkaAdminClient
from prometheus_client import CollectorRegistry

from core.events import Comparison, Demonstration, Rating, decode_event, encode_event
from feedback.ingest import Ingester
from feedback.ingest.limit import DlqLimitExceeded
from feedback.settings import IngestSettings
from feedback.store import FeedbackStore
from tests.fixtures.events import completion
from tests.fixtures.kafka import produce_raw, read_topic, wait_for
from tests.unit.feedback.test_store_rejections import _poison_ratings

pytestmark = pytest.mark.kafka


def _committed(kafka, group: str) -> int:
    """Sum of the group's committed offsets (0 when nothing is committed)."""
    admin = KafkaAdminClient(**kafka.client_kwargs())
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(max(0, o.offset) for o in offsets.values())
    finally:
        admin.close()


class Running:
    """The ingester in a thread; ``error`` is what ``run`` raised, if anything."""

    def __init__(self, kafka, store_url: str, group: str, **settings: object):
        self.settings = IngestSettings(kafka=kafka, group_id=group, session_timeout_ms=3000,
                                       max_poll_interval_ms=30000, poll_timeout_ms=100,
                                       metrics_port=0, **settings)
        self.registry = CollectorRegistry()
        self.ingester = Ingester(self.settings, store=FeedbackStore(store_url),
                                 registry=self.registry, max_backoff_s=0.5)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.ingester.run()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.error = e

    def stop(self) -> None:
        self.ingester.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def _raw(**data: object) -> bytes:
    return json.dumps(data).encode()


def test_values_the_store_cannot_hold_are_dead_lettered_and_the_rest_stored(
        kafka_broker, store_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(store_url)
    store.migrate()
    text = {"prompt": "p", "response": "r"}
    bad = [
        _raw(type="rating", event_id="nan", score=float("nan"), **text),
        _raw(type="ranking", event_id="big-rank", prompt="p", responses=["a", "b"],
             ranks=[2**63, 1]),
        _raw(type="demonstration", event_id="nul", prompt="a\x00b", response="r"),
        _raw(type="comparison", event_id="long-id", request_id="r" * 300, choice_a=0,
             choice_b=1, preferred="a"),
        _raw(type="rating", event_id="big-choice", request_id="r", choice=2**31, score=1),
        _raw(type="demonstration", **text),  # no event_id: a retry would be stored twice
    ]
    good = [Demonstration(prompt=f"p{i}", response="d", event_id=f"good-{i}") for i in range(3)]
    key = b"one-partition"  # bad and good records interleaved on one partition
    goods = [encode_event(e) for e in good] * 2  # each good one twice: a producer's retry
    values = [v for pair in itertools.zip_longest(bad, goods) for v in pair if v is not None]
    produce_raw(kafka, kafka.topics.feedback, [(key, v) for v in values])
    # NaN inside a JSON column: PostgreSQL's json type refuses it
    nan_params = completion("nan-params").model_dump(mode="json")
    nan_params["sampling_params"] = {"temperature": float("nan")}
    bad.append(json.dumps(nan_params).encode())
    produce_raw(kafka, kafka.topics.completions, [(b"nan-params", bad[-1])])
    values.append(bad[-1])

    running = Running(kafka, store_url, "bounds")
    try:
        wait_for(lambda: _committed(kafka, "bounds") == len(values), 60,
                 what="every offset committed")
        assert running.error is None and running.thread.is_alive()
    finally:
        running.stop()
    counts = store.counts()
    assert (counts["demonstration"], counts["completions"], counts["pending"]) == (3, 0, 0)
    dead = read_topic(kafka, kafka.topics.dlq, expected=len(bad))
    assert len(dead) == len(bad)
    errors = {r.value: dict(r.headers)["error"].decode() for r in dead}
    assert set(errors) == set(bad)  # the original bytes, each once
    assert "score" in errors[bad[0]] and "ranks.0" in errors[bad[1]]
    assert "prompt" in errors[bad[2]] and "NUL" in errors[bad[2]]
    assert "request_id" in errors[bad[3]] and "choice" in errors[bad[4]]
    assert errors[bad[5]] == "missing event_id"
    assert "sampling_params" in errors[bad[6]] and "finite" in errors[bad[6]]
    origins = {(dict(r.headers)["source_topic"], dict(r.headers)["source_offset"])
               for r in dead}
    assert len(origins) == len(bad)
    store.close()


def test_a_row_the_database_refuses_is_dead_lettered_alone_and_the_batch_stored(
        kafka_broker, store_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(store_url)
    store.migrate()
    _poison_ratings(store)  # the database itself refuses a rating commented "poison"
    text = {"prompt": "p", "response": "r"}
    events = [Rating(event_id=f"rating-{i}", score=i, comment="poison" if i == 2 else None,
                     **text) for i in range(5)]
    produce_raw(kafka, kafka.topics.feedback, [(b"k", encode_event(e)) for e in events])

    running = Running(kafka, store_url, "poison")
    try:
        wait_for(lambda: _committed(kafka, "poison") == 5, 60, what="every offset committed")
        assert running.error is None and running.thread.is_alive()
    finally:
        running.stop()
    assert store.counts()["rating"] == 4
    [dead] = read_topic(kafka, kafka.topics.dlq, expected=1)
    headers = dict(dead.headers)
    assert headers["error"].decode().startswith("store: ")
    assert "poisoned value" in headers["error"].decode()
    assert headers["source_offset"] == b"2" and dead.value == encode_event(events[2])
    assert running.registry.get_sample_value("rlhf:ingest_poisoned_batches_total") >= 1
    assert running.registry.get_sample_value("rlhf:ingest_persisted_total",
                                             {"kind": "feedback"}) == 4
    # exactly once: a replay of the whole topic adds nothing
    again = Running(kafka, store_url, "poison-replay")
    try:
        wait_for(lambda: _committed(kafka, "poison-replay") == 5, 60, what="the replay")
    finally:
        again.stop()
    assert store.counts()["rating"] == 4
    assert again.registry.get_sample_value("rlhf:ingest_duplicates_total") == 4
    store.close()


def test_past_the_dlq_limit_the_consumer_stops_without_committing(kafka_broker, sqlite_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(sqlite_url)
    store.migrate()
    produce_raw(kafka, kafka.topics.feedback, [(b"k", b"{broken deploy")] * 6
                + [(b"k", encode_event(Demonstration(prompt="p", response="r")))])

    running = Running(kafka, sqlite_url, "limit", dlq_max_consecutive=3)
    running.thread.join(60)
    assert not running.thread.is_alive()
    assert isinstance(running.error, DlqLimitExceeded)
    assert "dlq_max_consecutive" in str(running.error)
    assert _committed(kafka, "limit") == 0
    assert read_topic(kafka, kafka.topics.dlq, expected=1, timeout=3) == []
    store.close()


def test_rlhf_ingest_exits_non_zero_past_the_dlq_limit(kafka_broker, ingester_process,
                                                      sqlite_url):
    kafka = kafka_broker.kafka
    FeedbackStore(sqlite_url).migrate()
    produce_raw(kafka, kafka.topics.feedback, [(b"k", b"not an event")] * 5)
    ingester = ingester_process(sqlite_url, dlq_max_consecutive=2)
    assert ingester.proc is not None
    rc = ingester.proc.wait(60)
    assert rc != 0
    assert "dlq_max_consecutive exceeded" in ingester.log()


def test_parked_feedback_expires_into_the_dlq_with_its_origin(kafka_broker, store_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(store_url)
    store.migrate()
    orphan = Comparison(request_id="never", choice_a=0, choice_b=1, preferred="a",
                        source="labeler")
    produce_raw(kafka, kafka.topics.feedback, [(b"never", encode_event(orphan))])
    [original] = read_topic(kafka, kafka.topics.feedback, expected=1)

    running = Running(kafka, store_url, "ttl", pending_ttl_s=3.0)
    try:
        # parked, and visible as parked before the TTL gives up on it (checked every 0.75 s)
        wait_for(lambda: running.registry.get_sample_value("rlhf:ingest_pending") == 1, 20,
                 what="the parked feedback counted")
        assert running.registry.get_sample_value("rlhf:ingest_pending_oldest_seconds") < 3
        [dead] = read_topic(kafka, kafka.topics.dlq, expected=1, timeout=30)
        wait_for(lambda: running.registry.get_sample_value("rlhf:ingest_pending") == 0, 20,
                 what="the parked count back to 0")
    finally:
        running.stop()
    headers = dict(dead.headers)
    assert headers["error"].decode().startswith(
        "pending_ttl: completion 'never' never reached the store")
    assert headers["source_topic"] == kafka.topics.feedback.encode()
    assert (int(headers["source_partition"]), int(headers["source_offset"])) == (
        original.partition, original.offset)
    assert decode_event(dead.value) == orphan and dead.key == b"never"
    assert store.counts()["pending"] == 0
    assert running.registry.get_sample_value("rlhf:ingest_expired_total") == 1
    store.close()
