"""The feedback pipeline end to end on the real Tansu broker, a real `rlhf ingest`
subprocess and a real SQL store."""

from __future__ import annotations

import random

import pytest

from core.events import (
    Comparison,
    Demonstration,
    Ranking,
    Rating,
    encode_event,
    event_key,
)
from core.producer import FeedbackPublisher
from feedback.store import FeedbackStore
from tests.fixtures.events import completion
from tests.fixtures.kafka import produce_raw, read_topic, wait_for

pytestmark = pytest.mark.kafka


@pytest.fixture
def migrated(store_url):
    store = FeedbackStore(store_url)
    store.migrate()
    yield store
    store.close()


async def test_published_feedback_becomes_a_grouped_ranking_in_the_store(
        kafka_broker, ingester_process, migrated, store_url):
    kafka = kafka_broker.kafka
    publisher = FeedbackPublisher(kafka)
    await publisher.publish(kafka.topics.completions, completion("req-1", n=4,
                                                                 policy_version="v2"))
    await publisher.publish(kafka.topics.feedback, Ranking(
        request_id="req-1", choices=[0, 1, 2, 3], ranks=[2, 1, 4, 3], source="labeler"))
    publisher.close()

    ingester = ingester_process(store_url)
    [group] = wait_for(migrated.preference_groups, 30, what="the ranking in the store")
    assert group.responses == ["req-1:0", "req-1:1", "req-1:2", "req-1:3"]
    assert (group.ranks, group.policy_version, group.source) == ([2, 1, 4, 3], "v2", "labeler")
    assert ingester.terminate() == 0, ingester.log()  # SIGTERM: clean exit


def test_bad_events_are_dead_lettered_and_the_good_ones_behind_them_stored(
        kafka_broker, ingester_process, sqlite_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(sqlite_url)
    store.migrate()
    good = [Demonstration(prompt=f"p{i}", response="d", event_id=f"good-{i}") for i in range(3)]
    key = b"same-partition"  # bad and good records on one partition, bad ones first
    produce_raw(kafka, kafka.topics.feedback, [
        (key, b"{not json"),
        (key, b'{"type": "ranking", "request_id": "r", "choices": [0, 1], "ranks": [1]}'),
        (key, encode_event(completion("wrong-topic"))),
        *[(key, encode_event(e)) for e in good]])
    # A choice index that the completion does not have: rejected by the store.
    produce_raw(kafka, kafka.topics.completions, [(b"r9", encode_event(completion("r9", n=2)))])
    produce_raw(kafka, kafka.topics.feedback, [
        (b"r9", encode_event(Rating(request_id="r9", choice=7, score=1)))])

    ingester_process(sqlite_url)
    wait_for(lambda: store.counts()["demonstration"] == 3, 30, what="the good events")
    dead = read_topic(kafka, kafka.topics.dlq, expected=4)
    headers = [dict(r.headers) for r in dead]
    errors = sorted(h["error"].decode() for h in headers)
    assert len(errors) == 4, errors
    assert any("not JSON" in e for e in errors)
    assert any("ranks" in e for e in errors)
    assert any("completion event on the feedback topic" in e for e in errors)
    assert any("choice: choice 7 does not exist" in e for e in errors)
    for h in headers:
        assert h["source_topic"] == kafka.topics.feedback.encode()
        assert int(h["source_partition"]) >= 0 and int(h["source_offset"]) >= 0
    # The three bad records sharing a key sit at offsets 0, 1, 2 of one partition.
    origin = {(int(h["source_partition"]), int(h["source_offset"]))
              for r, h in zip(dead, headers, strict=True) if r.key == key}
    assert len({p for p, _ in origin}) == 1 and {o for _, o in origin} == {0, 1, 2}
    assert b"{not json" in {r.value for r in dead}  # the original bytes, untouched
    store.close()


async def test_feedback_that_arrives_before_its_completion_is_joined_later(
        kafka_broker, ingester_process, sqlite_url):
    kafka = kafka_broker.kafka
    store = FeedbackStore(sqlite_url)
    store.migrate()
    publisher = FeedbackPublisher(kafka)
    ingester_process(sqlite_url)
    await publisher.publish(kafka.topics.feedback,
                            Comparison(request_id="slow", choice_a=1, choice_b=0, preferred="a"))
    wait_for(lambda: store.counts()["pending"] == 1, 30, what="the comparison to wait")
    assert store.preference_groups() == []

    await publisher.publish(kafka.topics.completions, completion("slow", n=2))
    [group] = wait_for(store.preference_groups, 30, what="the join")
    assert (group.responses, group.ranks) == (["slow:1", "slow:0"], [1, 2])
    assert store.counts()["pending"] == 0
    publisher.close()
    store.close()


def _thousand_events(rng: random.Random) -> list:
    """300 completions and 700 pieces of feedback of every kind, shuffled so that some
    feedback comes before its completion."""
    completions = [completion(f"req-{i}", n=4) for i in range(300)]
    feedback: list = []
    for i in range(700):
        rid = f"req-{rng.randrange(300)}"
        feedback.append([
            Ranking(request_id=rid, choices=[0, 1, 2, 3], ranks=[1, 2, 2, 4]),
            Comparison(request_id=rid, choice_a=0, choice_b=3, preferred="b"),
            Rating(request_id=rid, choice=2, score=rng.random()),
            Demonstration(prompt=f"prompt {i}", response="ideal"),
        ][i % 4])
    events = completions + feedback
    rng.shuffle(events)
    return events


def test_sigkill_at_random_points_stores_every_event_exactly_once(
        kafka_broker, ingester_process, sqlite_url):
    rng = random.Random(4)
    kafka = kafka_broker.kafka
    events = _thousand_events(rng)
    store = FeedbackStore(sqlite_url)
    store.migrate()
    topic = {"completion": kafka.topics.completions}
    for t in ("ranking", "comparison", "rating", "demonstration"):
        topic[t] = kafka.topics.feedback
    for t in set(topic.values()):
        produce_raw(kafka, t, [(event_key(e), encode_event(e)) for e in events
                               if topic[e.type] == t])

    def stored() -> int:
        c = store.counts()
        return c["completions"] + sum(c[k] for k in ("ranking", "comparison", "rating",
                                                     "demonstration", "pending"))

    progress_at_kill = []
    for threshold in sorted(rng.sample(range(20, 900), 4)):
        ingester = ingester_process(sqlite_url, batch_size=10)
        wait_for(lambda t=threshold: stored() >= t, 60, interval=0.01, what=f"{threshold} rows")
        ingester.kill()
        progress_at_kill.append(stored())
    final = ingester_process(sqlite_url, batch_size=10)
    wait_for(lambda: stored() == 1000 and store.counts()["pending"] == 0, 90,
             what="all 1000 events")
    assert final.terminate() == 0, final.log()

    assert any(0 < n < 1000 for n in progress_at_kill), progress_at_kill
    counts = store.counts()
    assert counts["completions"] == 300 and counts["pending"] == 0
    assert sum(counts[k] for k in ("ranking", "comparison", "rating", "demonstration")) == 700
    from sqlalchemy import func, select

    from feedback.store.models import FeedbackTable, ProcessedEventTable
    with store.engine.connect() as conn:
        stored_ids = set(conn.scalars(select(FeedbackTable.event_id)))
        processed = conn.scalar(select(func.count()).select_from(ProcessedEventTable))
    assert stored_ids == {e.event_id for e in events if e.type != "completion"}
    assert processed == 1000
    store.close()
