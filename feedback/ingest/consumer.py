"""``rlhf ingest``: the consumer group that moves events from Kafka into the feedback store.

Every poll is one batch through the pipeline:

1. parse and validate each record (``steps.py``); bad ones are set aside for the DLQ;
2. persist the good events in ONE transaction (``FeedbackStore.persist``), retrying with
   backoff while the database is down;
3. send the bad records (and feedback the store rejected) to the DLQ and wait for acks;
4. commit the offsets — only now, after the SQL commit, so a crash anywhere above
   replays the batch, and ``event_id`` deduplication makes the replay harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from sqlalchemy.exc import SQLAlchemyError

from core.events import Event, InvalidEvent, event_key
from feedback.ingest.dlq import DeadLetterQueue
from feedback.ingest.metrics import IngestMetrics
from feedback.ingest.steps import Record, parse_and_validate
from feedback.settings import IngestSettings
from feedback.store import FeedbackStore, PersistResult

log = logging.getLogger(__name__)


def make_consumer(settings: IngestSettings) -> KafkaConsumer:
    """A consumer of both topics in the ingest group, committing only by hand."""
    kafka = settings.kafka
    return KafkaConsumer(
        kafka.topics.completions, kafka.topics.feedback,
        **kafka.client_kwargs(),
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_size,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
        max_poll_interval_ms=settings.max_poll_interval_ms,
    )


class Ingester:
    """Runs the pipeline until ``stop()``; the batch in progress is finished and committed."""

    def __init__(self, settings: IngestSettings, store: FeedbackStore | None = None,
                 registry: CollectorRegistry | None = None, max_backoff_s: float = 30.0):
        self.settings = settings
        self.store = store or FeedbackStore(settings.database.url, echo=settings.database.echo)
        self.metrics = IngestMetrics(registry)
        self.dlq = DeadLetterQueue(settings.kafka)
        self._max_backoff_s = max_backoff_s
        self._stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None

    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit and return (signal-safe)."""
        self._stopping.set()

    def run(self) -> None:
        """Consume until stopped. The store must be migrated already."""
        self._consumer = self._connect()
        try:
            while not self._stopping.is_set() and self._consumer is not None:
                polled = self._consumer.poll(timeout_ms=self.settings.poll_timeout_ms,
                                             max_records=self.settings.batch_size)
                records = [r for batch in polled.values() for r in batch]
                if records:
                    self.process(records)
                self._update_lag()
        finally:
            self._close()

    def _connect(self) -> KafkaConsumer | None:
        """Build the consumer, retrying with backoff while the broker is unreachable."""
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                return make_consumer(self.settings)
            except KafkaError as e:
                log.warning("Kafka unreachable (%s); retrying in %.1fs", e, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
        return None

    def process(self, records: Sequence) -> bool:
        """Run one batch through parse → validate → persist → DLQ → commit.

        Returns False when stopped before the store write succeeded (nothing committed).
        """
        started = time.perf_counter()
        good, bad = self._parse_all(records)
        result = self._persist(list(good.values()))
        if result is None:
            return False
        for event, err in result.rejected:
            rec = next((r for r, e in good.items() if e is event), None)
            bad.append((rec, event_key(event), err))
        self._dead_letter(bad)
        self._commit()
        self._count(records, result, len(bad))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return True

    def _parse_all(self, records: Sequence) -> tuple[dict[Record, Event], list]:
        topics = self.settings.kafka.topics
        good: dict[Record, Event] = {}
        bad: list = []
        for r in records:
            rec = Record(r.topic, r.partition, r.offset, r.value)
            try:
                good[rec] = parse_and_validate(rec, topics)
            except InvalidEvent as e:
                bad.append((rec, r.key, e))
        return good, bad

    def _persist(self, events: list[Event]) -> PersistResult | None:
        """Write the batch, retrying with backoff while the database fails; None if stopped."""
        backoff = 0.2
        while True:
            try:
                return self.store.persist(events)
            except SQLAlchemyError as e:
                self.metrics.db_retries.inc()
                log.error("store write failed (%s); retrying in %.1fs, offsets not committed",
                          e.__class__.__name__, backoff)
                if self._stopping.wait(backoff):
                    return None
                backoff = min(backoff * 2, self._max_backoff_s)

    def _dead_letter(self, bad: list) -> None:
        """Send every bad record to the DLQ and wait for the acks before offsets move."""
        for rec, key, err in bad:
            if rec is None:  # pending feedback rejected when its completion arrived
                rec = Record(self.settings.kafka.topics.feedback, -1, -1, None)
            self.dlq.send(rec.value, key, err.reason, rec.topic,
                          rec.partition if rec.partition >= 0 else None,
                          rec.offset if rec.offset >= 0 else None)
            log.warning("dead-lettered %s/%s@%s: %s", rec.topic, rec.partition, rec.offset,
                        err.reason)
        self.dlq.flush()

    def _commit(self) -> None:
        assert self._consumer is not None
        try:
            self._consumer.commit()
        except CommitFailedError:
            # The group rebalanced while we worked; the new owner replays the batch and
            # event_id deduplication keeps the store exact.
            log.warning("offset commit failed after a rebalance; the batch will be replayed")

    def _count(self, records: Sequence, result: PersistResult, n_bad: int) -> None:
        m = self.metrics
        for r in records:
            m.consumed.labels(r.topic).inc()
        m.persisted.labels("completion").inc(result.completions)
        m.persisted.labels("feedback").inc(result.feedback + result.resolved)
        m.persisted.labels("pending").inc(result.pending)
        m.duplicates.inc(result.duplicates)
        if n_bad:
            m.dead_lettered.labels(self.dlq.topic).inc(n_bad)

    def _update_lag(self) -> None:
        c = self._consumer
        if c is None:
            return
        for tp in c.assignment():
            high = c.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - c.position(tp)))

    def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        self.dlq.close()
        self.store.close()


def serve_metrics(port: int, registry: CollectorRegistry | None = None) -> None:
    """Expose /metrics on ``port`` (0 turns it off)."""
    if port:
        start_http_server(port, registry=registry or REGISTRY)
