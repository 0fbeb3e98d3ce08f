"""Property: whatever a batch holds, every record is stored or dead-lettered, never both,
nothing is lost, and the consumer advances (the batch is committed).

``Ingester.process`` runs on hand-built records against a real store (SQLite and
PostgreSQL, with a trigger that makes the database itself refuse some rows) and the real
dead-letter producer on a real broker. Only the consumer's ``commit`` is a recorder: the
records do not come from a poll.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from feedback.ingest import Ingester
from feedback.ingest.dlq import DeadLetter
from feedback.settings import IngestSettings
from feedback.store import FeedbackStore
from feedback.store.models import CompletionTable, FeedbackTable, PendingFeedbackTable
from tests.unit.feedback.strategies import records_payloads
from tests.unit.feedback.test_store_rejections import _poison_ratings

pytestmark = pytest.mark.kafka


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None


class Commits:
    """Stands in for the KafkaConsumer that would have polled the records: counts commits."""

    def __init__(self) -> None:
        self.n = 0

    def commit(self) -> None:
        self.n += 1


class Sent:
    """The real DLQ, also remembering what it sent (delivery is still real and awaited)."""

    def __init__(self, dlq) -> None:
        self.dlq, self.letters, self.topic = dlq, [], dlq.topic

    def send(self, letter: DeadLetter) -> None:
        self.letters.append(letter)
        self.dlq.send(letter)

    def flush(self) -> int:
        return self.dlq.flush()

    def close(self) -> None:
        self.dlq.close()


@pytest.fixture
def rig(kafka_broker, store_url):
    store = FeedbackStore(store_url)
    store.migrate()
    _poison_ratings(store)
    s = IngestSettings(kafka=kafka_broker.kafka, metrics_port=0, dlq_max_ratio=1.0,
                       dlq_max_consecutive=0)
    ingester = Ingester(s, store=store, registry=CollectorRegistry())
    ingester.dlq = Sent(ingester.dlq)  # type: ignore[assignment]
    ingester._consumer = Commits()  # type: ignore[assignment]
    yield ingester, store
    ingester._consumer = None
    ingester._close()


def _in_tables(store: FeedbackStore) -> tuple[set[str], set[str]]:
    """event_ids stored (completion, feedback or parked) and request_ids of completions."""
    with store.engine.connect() as c:
        ids = set(c.scalars(select(CompletionTable.event_id)))
        ids |= set(c.scalars(select(FeedbackTable.event_id)))
        ids |= set(c.scalars(select(PendingFeedbackTable.event_id)))
        rids = set(c.scalars(select(CompletionTable.request_id)))
    return ids, rids


def _event_id(value: bytes) -> str | None:
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return None
    eid = data.get("event_id") if isinstance(data, dict) else None
    return eid if isinstance(eid, str) else None


OFFSETS = itertools.count()
BATCHES = itertools.count()
RUN = uuid.uuid4().hex[:6]


@st.composite
def batches(draw) -> list[tuple[str, bytes]]:
    prefix = f"{RUN}-{next(BATCHES)}"  # fresh ids per example: the store is shared
    n = draw(st.integers(1, 10))
    payloads = [draw(records_payloads(prefix, i)) for i in range(n)]
    if draw(st.booleans()):  # a producer retry: the same bytes again
        payloads.append(draw(st.sampled_from(payloads)))
    return [(("completions" if kind == "completion" else "feedback")
             if draw(st.integers(0, 9)) else "wrong", value) for kind, value in payloads]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=batches())
def test_every_record_is_stored_or_dead_lettered_never_both_and_the_batch_commits(rig, batch):
    ingester, store = rig
    topics = ingester.settings.kafka.topics
    names = {"completions": topics.completions, "feedback": topics.feedback,
             "wrong": topics.completions}
    wrong = {i for i, (t, _) in enumerate(batch) if t == "wrong"}
    records = [Rec(names[t] if t != "wrong" else
                   (topics.feedback if b'"completion"' in v else topics.completions),
                   0, next(OFFSETS), v, None) for t, v in batch]
    before, _ = _in_tables(store)
    sent_before = len(ingester.dlq.letters)
    commits = ingester._consumer.n

    assert ingester.process(records) is True
    assert ingester._consumer.n == commits + 1  # always advances

    after, rids = _in_tables(store)
    new = after - before
    letters = ingester.dlq.letters[sent_before:]
    dead_at = {(x.topic, x.offset) for x in letters if x.offset is not None}
    dead_ids = {_event_id(r.value) for r in records if (r.topic, r.offset) in dead_at}
    event(f"records dead-lettered: {min(len(dead_at), 3)}+, newly stored: {min(len(new), 3)}+")
    if any(x.reason.startswith("store: ") for x in letters):
        event("the database refused a row (one-by-one fallback)")
    for i, r in enumerate(records):
        eid = _event_id(r.value)
        dead = (r.topic, r.offset) in dead_at
        if dead:
            assert eid is None or eid not in new or _copy_stored(records, i, dead_at), \
                f"record {i} is both stored and dead-lettered"
            continue
        assert i not in wrong or eid in before or eid in new, f"record {i} on a wrong topic"
        assert eid is not None, f"record {i} without event_id was neither stored nor dead"
        rid = json.loads(r.value).get("request_id")
        assert (eid in new or eid in before or eid in dead_ids
                or (r.topic == topics.completions and rid in rids)), f"record {i} was lost"


def _copy_stored(records: list[Rec], i: int, dead_at: set) -> bool:
    """Another record with the same event_id (not dead-lettered) is the one stored."""
    eid = _event_id(records[i].value)
    return any(_event_id(r.value) == eid and (r.topic, r.offset) not in dead_at
               for j, r in enumerate(records) if j != i)
