"""Prometheus metrics of the ingester (``rlhf:ingest_…``; docs/metrics.md lists them)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from typing import get_args

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from core.events import (
    Comparison,
    CompletionRecord,
    Demonstration,
    Event,
    FeedbackBase,
    Ranking,
    Rating,
    Source,
)
from feedback.store.store import Rejection

COMPLETION_SOURCE = "serving"
"""The ``source`` label of completions: the serving process logs them (feedback carries
the submitter's role, ``user``/``labeler``/``admin``)."""


def kind_and_source(event: Event) -> tuple[str, str]:
    """The ``kind`` and ``source`` labels of an event: its ``type`` and who sent it."""
    source = event.source if isinstance(event, FeedbackBase) else COMPLETION_SOURCE
    return event.type, source


def _every_kind_and_source() -> list[tuple[str, str]]:
    feedback = [m.model_fields["type"].default
                for m in (Ranking, Comparison, Rating, Demonstration)]
    completion = CompletionRecord.model_fields["type"].default
    return [(completion, COMPLETION_SOURCE),
            *((k, s) for k in feedback for s in get_args(Source))]


def accepted(events: Sequence[Event], rejected: Sequence[Rejection]) -> list[Event]:
    """The batch's events the store took: every one but those it rejected.

    The store rejects an event_id's first occurrence (a repeat later in the batch is then
    a duplicate), or every occurrence when it writes one event at a time; so one
    occurrence is dropped per rejection. Rejections of parked feedback (not in the batch)
    drop nothing.
    """
    left = Tally(r.event_id for r in rejected)
    kept = []
    for event in events:
        if left[event.event_id]:
            left[event.event_id] -= 1
        else:
            kept.append(event)
    return kept


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry or REGISTRY
        self.consumed = Counter("rlhf:ingest_consumed", "Records read from Kafka.",
                                ["topic"], registry=r)
        self.persisted = Counter("rlhf:ingest_persisted", "Events written to the store "
                                 "(stored, parked as pending, or resolved).", ["kind"],
                                 registry=r)
        self.accepted = Counter(
            "rlhf:ingest_accepted", "Events the store accepted, by kind (the event type: "
            "completion, ranking, comparison, rating, demonstration) and source (user, "
            "labeler, admin; serving for completions): stored, parked for their "
            "completion, or already stored (a replay, also in rlhf:ingest_duplicates). "
            "Dead-lettered events are not counted.", ["kind", "source"], registry=r)
        for kind, source in _every_kind_and_source():
            self.accepted.labels(kind=kind, source=source)
        self.duplicates = Counter("rlhf:ingest_duplicates", "Events skipped as already "
                                  "stored (replays).", registry=r)
        self.dead_lettered = Counter("rlhf:ingest_dead_lettered", "Records sent to the "
                                     "dead-letter topic.", ["topic"], registry=r)
        self.lag = Gauge("rlhf:ingest_lag", "Records not yet in the store: from the committed "
                         "offset to the partition's high-water mark (as the ingester's own "
                         "fetches report it; updated after each batch and while a store "
                         "write is retried).", ["topic", "partition"], registry=r)
        self.batch_seconds = Histogram("rlhf:ingest_batch_seconds", "Time to parse, persist "
                                       "and commit one batch.", registry=r)
        self.poisoned_batches = Counter(
            "rlhf:ingest_poisoned_batches", "Batches the store refused for their contents "
            "and wrote one event at a time.", registry=r)
        self.expired = Counter("rlhf:ingest_expired", "Parked feedback dead-lettered "
                               "because its completion did not arrive in time.", registry=r)
        self.pending = Gauge("rlhf:ingest_pending", "Feedback parked waiting for its "
                             "completion; dead-lettered once older than the pending TTL.",
                             registry=r)
        self.pending_oldest = Gauge(
            "rlhf:ingest_pending_oldest_seconds", "Age of the oldest parked feedback (0 when "
            "none): an alert well below RLHF_INGEST__PENDING_TTL_S sees completions that "
            "are not arriving before their feedback is dead-lettered.", registry=r)
        self.db_retries = Counter("rlhf:ingest_db_retries", "Store writes retried after a "
                                  "database error.", registry=r)

    def count_accepted(self, events: Sequence[Event], rejected: Sequence[Rejection]) -> None:
        """Count a batch's accepted events by kind and source."""
        for labels, n in Tally(kind_and_source(e) for e in accepted(events, rejected)).items():
            self.accepted.labels(*labels).inc(n)
