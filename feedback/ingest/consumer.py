"""``rlhf ingest``: the consumer group that moves events from Kafka into the feedback store.

Every poll is one batch through the pipeline:

1. parse and validate each record (``steps.route``); bad ones become dead letters;
2. persist the good events in ONE transaction (``FeedbackStore.persist``). While the
   database is unreachable the batch is retried with backoff (nothing is committed).
   When the database refuses the batch for what is in it (a value it cannot hold, a
   constraint), the events are written one by one, each in its own transaction, so only
   the poisoned ones are dead-lettered (with the database's error) and the rest stored;
3. check the dead-letter limit (``limit.py``): past it the ingester stops WITHOUT
   committing, raising :class:`DlqLimitExceeded`, so a bad deploy cannot drain a topic;
4. send the dead letters to the DLQ and wait for the acks;
5. commit the offsets — only now, after the SQL commit, so a crash anywhere above
   replays the batch, and ``event_id`` deduplication makes the replay harmless.

Between polls, feedback parked longer than ``pending_ttl_s`` (its completion never came)
is dead-lettered too, with the reason ``pending_ttl: completion '<request_id>' never
reached the store …``; ``rlhf:ingest_pending`` and ``rlhf:ingest_pending_oldest_seconds``
show what is parked before that happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from sqlalchemy.exc import SQLAlchemyError

from core.consumer import consumer_lag
from core.events import Event, encode_event, event_key
from feedback.ingest.dlq import DeadLetter, DeadLetterQueue
from feedback.ingest.limit import DlqLimit, DlqLimiter, DlqLimitExceeded
from feedback.ingest.metrics import IngestMetrics
from feedback.ingest.steps import Record, Routed, route
from feedback.settings import IngestSettings
from feedback.store import FeedbackStore, PersistResult
from feedback.store.errors import describe, is_transient
from feedback.store.store import Rejection

log = logging.getLogger(__name__)

__all__ = ["DlqLimitExceeded", "Ingester", "make_consumer", "serve_metrics"]


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
        **({"group_instance_id": settings.group_instance_id}
           if settings.group_instance_id else {}),
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )


class Ingester:
    """Runs the pipeline until ``stop()``; the batch in progress is finished and committed.

    ``run`` raises :class:`DlqLimitExceeded` (after logging it) when too many records are
    dead-lettered; the batch that tripped the limit is not committed.
    """

    def __init__(self, settings: IngestSettings, store: FeedbackStore | None = None,
                 registry: CollectorRegistry | None = None, max_backoff_s: float = 30.0):
        self.settings = settings
        self.store = store or FeedbackStore(settings.database.url, echo=settings.database.echo)
        self.metrics = IngestMetrics(registry)
        self.dlq = DeadLetterQueue(settings.kafka)
        self.limiter = DlqLimiter(DlqLimit(
            max_ratio=settings.dlq_max_ratio, window=settings.dlq_ratio_window,
            min_records=settings.dlq_ratio_min_records,
            max_consecutive=settings.dlq_max_consecutive))
        self._max_backoff_s = max_backoff_s
        self._stopping = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._next_expiry = 0.0

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
                self.expire_pending()
                self._update_lag()
        except DlqLimitExceeded as e:
            log.error("stopping WITHOUT committing the current batch: %s. Fix the producer "
                      "or the store, or raise the limit (RLHF_INGEST__DLQ_MAX_RATIO, "
                      "RLHF_INGEST__DLQ_MAX_CONSECUTIVE), then restart", e)
            raise
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

    # -- one batch -------------------------------------------------------------------------

    def process(self, records: Sequence) -> bool:
        """Run one batch through parse → validate → persist → limit → DLQ → commit.

        ``records`` are ConsumerRecord-like (topic, partition, offset, value, key). Returns
        False when stopped before the store write succeeded (nothing committed); raises
        DlqLimitExceeded (nothing committed) when the batch trips the dead-letter limit.
        """
        started = time.perf_counter()
        batch = route([Record.of(r) for r in records], self.settings.kafka.topics)
        result = self._persist(batch)
        if result is None:
            return False
        letters = list(batch.dead.values())
        letters += [self._letter(rej, batch) for rej in result.rejected]
        self._check_limit(batch, result, letters)
        self._dead_letter(letters)
        self._commit()
        self._count(records, batch, result, len(letters))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return True

    def _persist(self, batch: Routed) -> PersistResult | None:
        """Write the batch, retrying with backoff while the database is unreachable.

        None if stopped while retrying. Permanent failures never reach the retry loop:
        ``_write`` turns them into rejections.
        """
        backoff = 0.2
        while True:
            try:
                return self._write(batch)
            except Exception as e:  # noqa: BLE001 - _write lets only transient ones out
                self.metrics.db_retries.inc()
                self._update_lag(batch.records)
                log.error("store write failed (%s); retrying in %.1fs, offsets not committed",
                          describe(e), backoff)
                if self._stopping.wait(backoff):
                    return None
                backoff = min(backoff * 2, self._max_backoff_s)

    def _write(self, batch: Routed) -> PersistResult:
        """The batch in one transaction; on a permanent failure, event by event."""
        origins = batch.origins()
        try:
            return self.store.persist(batch.events, origins)
        except Exception as e:  # noqa: BLE001 - classified below
            if is_transient(e):
                raise
            log.warning("the store refused the batch (%s); writing its %d events one by one",
                        describe(e), len(batch.events))
            self.metrics.poisoned_batches.inc()
        result = PersistResult()
        for event in batch.events:
            try:
                result.add(self.store.persist([event], origins))
            except Exception as e:  # noqa: BLE001 - transient ones retry the whole batch
                if is_transient(e):
                    raise
                result.rejected.append(_poisoned(event, describe(e), origins))
        return result

    def _letter(self, rejection: Rejection, batch: Routed) -> DeadLetter:
        """A store rejection as a dead letter: the original record when it is in the batch."""
        i = batch.first.get(rejection.event_id)
        if i is not None:
            return batch.records[i].dead_letter(rejection.reason)
        return DeadLetter(rejection.value, rejection.key, rejection.reason,
                          self.settings.kafka.topics.feedback, rejection.partition,
                          rejection.offset)

    def _check_limit(self, batch: Routed, result: PersistResult,
                     letters: list[DeadLetter]) -> None:
        """Raise DlqLimitExceeded when this batch breaks the limit; nothing is committed.

        Letters for parked feedback (no record in this batch) are delivered first: the
        store already dropped them, so a replay would not produce them again.
        """
        try:
            self.limiter.observe(batch.outcomes({r.event_id for r in result.rejected}))
        except DlqLimitExceeded:
            orphans = [x for x, r in zip(letters[len(batch.dead):], result.rejected,
                                         strict=True) if r.event_id not in batch.first]
            self._dead_letter(orphans)
            raise

    def _dead_letter(self, letters: list[DeadLetter]) -> None:
        """Send every dead letter to the DLQ and wait for the acks before offsets move."""
        for x in letters:
            self.dlq.send(x)
            log.warning("dead-lettered %s/%s@%s: %s", x.topic, x.partition, x.offset, x.reason)
        self.dlq.flush()

    def _commit(self) -> None:
        assert self._consumer is not None
        try:
            self._consumer.commit()
        except CommitFailedError:
            # The group rebalanced while we worked; the new owner replays the batch and
            # event_id deduplication keeps the store exact.
            log.warning("offset commit failed after a rebalance; the batch will be replayed")

    # -- parked feedback -------------------------------------------------------------------

    def expire_pending(self, force: bool = False) -> int:
        """Dead-letter feedback parked longer than ``pending_ttl_s``; how many expired.

        Runs at most every ``min(60, ttl/4)`` seconds unless ``force``. A database or
        broker failure is logged and tried again later (the rows stay parked).
        """
        ttl = self.settings.pending_ttl_s
        now = time.monotonic()
        if not force and now < self._next_expiry:
            return 0
        self._next_expiry = now + min(60.0, ttl / 4)
        cutoff = datetime.now(UTC) - timedelta(seconds=ttl)
        topic = self.settings.kafka.topics.feedback

        def deliver(expired: list[Rejection]) -> None:
            self._dead_letter([DeadLetter(r.value, r.key, r.reason, topic, r.partition,
                                          r.offset) for r in expired])

        try:
            n = self.store.expire_pending(cutoff, deliver)
        except (SQLAlchemyError, KafkaError) as e:
            log.warning("could not expire parked feedback (%s); will try again", describe(e))
            return 0
        if n:
            self.metrics.expired.inc(n)
            self.metrics.dead_lettered.labels(self.dlq.topic).inc(n)
        self._gauge_pending()
        return n

    def _gauge_pending(self) -> None:
        """rlhf:ingest_pending and the age of the oldest parked feedback (read after each
        expiry check, so they lag by at most its interval)."""
        try:
            n, oldest = self.store.pending_summary()
        except SQLAlchemyError as e:
            log.warning("could not count parked feedback (%s)", describe(e))
            return
        self.metrics.pending.set(n)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.pending_oldest.set(max(0.0, age))

    # -- bookkeeping -----------------------------------------------------------------------

    def _count(self, records: Sequence, batch: Routed, result: PersistResult,
               n_bad: int) -> None:
        m = self.metrics
        for topic, n in Counter(r.topic for r in records).items():
            m.consumed.labels(topic).inc(n)
        m.count_accepted(batch.events, result.rejected)
        m.persisted.labels("completion").inc(result.completions)
        m.persisted.labels("feedback").inc(result.feedback + result.resolved)
        m.persisted.labels("pending").inc(result.pending)
        m.duplicates.inc(result.duplicates)
        if n_bad:
            m.dead_lettered.labels(self.dlq.topic).inc(n_bad)

    def _update_lag(self, waiting: Sequence[Record] = ()) -> None:
        """rlhf:ingest_lag: per partition, records from the committed offset to the high
        watermark of the consumer's own fetches (never ListOffsets, wrong on Tansu: see
        core/consumer.py). ``waiting`` is a batch the store has not taken yet: its records
        count, although the position has passed them."""
        if self._consumer is None:
            return
        for tp, n in consumer_lag(self._consumer, waiting).items():
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(n)

    def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        self.dlq.close()
        self.store.close()


def _poisoned(event: Event, reason: str, origins: dict) -> Rejection:
    """An event the database refused on its own: dead-letter it with the DB's error."""
    partition, offset = origins.get(event.event_id, (None, None))
    return Rejection(event.event_id, encode_event(event), event_key(event), reason,
                     partition, offset)


def serve_metrics(port: int, registry: CollectorRegistry | None = None) -> None:
    """Expose /metrics on ``port`` (0 turns it off)."""
    if port:
        start_http_server(port, registry=registry or REGISTRY)
