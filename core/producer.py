"""Publishing events to Kafka: acknowledged feedback, and fire-and-forget completion logs.

Two delivery contracts, two classes:

* :class:`FeedbackPublisher` — the feedback API answers 202 only once the broker has
  acknowledged, so ``publish`` waits for the ack (idempotent producer, ``acks=all``) and
  raises :class:`BrokerUnavailable` within the configured timeout otherwise.
* :class:`CompletionLogPublisher` — logging a completion must never slow a response, so
  ``publish_nowait`` only appends to a bounded buffer that a background thread drains.
  While the broker is down events wait; when the buffer is full the oldest go to a spill
  file on local disk (:mod:`core.spill`), replayed once the broker answers, so only a
  disk failure loses one; all of it is visible as metrics. A record Kafka can never
  accept (larger than ``MAX_REQUEST_BYTES``, or refused by the broker as too large) is
  set aside in the spill directory's ``rejected/`` folder and counted
  (``rlhf:events_rejected_total{reason="too_large"}``) instead of being retried forever
  at the head of the buffer.

Feedback too large for Kafka raises :class:`RecordTooLarge` (never BrokerUnavailable: a
retry cannot succeed); callers check :func:`fits` first to refuse it before sending.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.producer.future import FutureRecordMetadata
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from core.errors import BrokerUnavailable
from core.events import (
    EventBase,
    InvalidEvent,
    decode_event,
    encode_event,
    event_headers,
    event_key,
    storable,
)
from core.settings import KafkaSettings
from core.spill import Segment, Spill

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
"""The producers' ``max_request_size`` (kafka-python's and Kafka's default, 1 MiB)."""
_RECORD_OVERHEAD = 256  # batch and record framing, generously (kafka-python: < 100 bytes)
BATCH_BYTES = 256 << 10
"""The producers' ``batch_size`` per partition. kafka-python's 16 KiB default holds about
12 feedback events: a batch POST of 250 then became ~20 record batches, each waking the
I/O thread and taking a produce request; 256 KiB doubled batch publishing (6,900 →
17,700 events/s for 4 × 250 in flight) and halved its CPU per event, with no change for
single publishes (``linger_ms`` stays 0: lingering only delays a lone request)."""


class RecordTooLarge(Exception):
    """An event Kafka will never accept; ``index`` is its position in the batch sent."""

    def __init__(self, index: int, size: int, reason: str = ""):
        super().__init__(f"event {index} is {size} bytes; Kafka accepts at most "
                         f"{MAX_REQUEST_BYTES} {reason}".rstrip())
        self.index, self.size = index, size


def record_size(event: EventBase) -> int:
    """An upper bound of the bytes ``event`` takes in a produce request."""
    headers = sum(len(k) + len(v) for k, v in event_headers(event))
    return len(event_key(event)) + len(encode_event(event)) + headers + _RECORD_OVERHEAD


def fits(event: EventBase) -> bool:
    """Whether the producer can send ``event`` at all."""
    return record_size(event) <= MAX_REQUEST_BYTES


def make_producer(kafka: KafkaSettings) -> KafkaProducer:
    """An idempotent ``acks=all`` producer whose every wait is bounded by the timeout.

    Raises KafkaError (NoBrokersAvailable, KafkaTimeoutError) when no broker answers.
    """
    timeout_ms = kafka.request_timeout_ms
    return KafkaProducer(
        **kafka.client_kwargs(),
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=timeout_ms,
        delivery_timeout_ms=timeout_ms * 2,
        max_block_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=1000,
        linger_ms=0,
        batch_size=BATCH_BYTES,
        max_request_size=MAX_REQUEST_BYTES,
    )


def _close_quietly(producer: KafkaProducer | None) -> None:
    """Drop a producer whose state may be stale (broker gone, or replaced by a new one).

    Never blocks the caller. kafka-python's ``close`` flushes first and raises while records
    are still in flight (``close(timeout=0)`` would leave its I/O thread running until
    garbage collection), so a daemon thread closes it once those records are acknowledged
    or expired, which ``delivery_timeout_ms`` bounds.
    """
    if producer is None:
        return
    timeout = producer.config.get("delivery_timeout_ms", 120_000) / 1000 + 1
    threading.Thread(target=_close, args=(producer, timeout), name="kafka-producer-close",
                     daemon=True).start()


def _close(producer: KafkaProducer, timeout: float) -> None:
    try:
        producer.close(timeout=timeout)
    except Exception:  # noqa: BLE001 - closing a broken producer must not raise
        log.debug("closing producer failed", exc_info=True)


Outcome = tuple[int, BaseException] | None
"""How a batch settled: None when every record was acknowledged, else ``(index, error)``
of the first record that failed (the error is KafkaTimeoutError when no ack came in time)."""


class _Acks:
    """kafka-python's send futures for one batch, bridged to ONE asyncio future.

    The record futures complete on the producer's I/O thread; the last ack, the first
    failure or the timeout settles the batch once (:class:`_Wakeups` carries that to the
    loop). ``future``'s result is the batch's :data:`Outcome`.
    """

    def __init__(self, wakeups: _Wakeups, records: int, timeout_s: float):
        self.future: asyncio.Future[Outcome] = wakeups.loop.create_future()
        self._wakeups = wakeups
        self._left = records
        self._settled = False
        self._lock = threading.Lock()
        self._timer = wakeups.loop.call_later(timeout_s, self._expire, timeout_s)

    def watch(self, index: int, record: FutureRecordMetadata) -> None:
        record.add_callback(self._acked)
        record.add_errback(self._failed, index)

    def _acked(self, _metadata: object) -> None:
        with self._lock:
            self._left -= 1
            if self._left or self._settled:
                return
            self._settled = True
        self._wakeups.post(self, None)

    def _failed(self, index: int, error: BaseException) -> None:
        with self._lock:
            if self._settled:
                return
            self._settled = True
        self._wakeups.post(self, (index, error))

    def _expire(self, timeout_s: float) -> None:  # on the loop
        with self._lock:
            self._settled = True
        self.resolve((0, KafkaTimeoutError(f"no ack within {timeout_s:.1f}s")))

    def resolve(self, outcome: Outcome) -> None:
        """On the loop: the batch's outcome (unless it was settled or cancelled already)."""
        self._timer.cancel()
        if not self.future.done():
            self.future.set_result(outcome)


class _Wakeups:
    """Settled batches handed from the producer's I/O thread to one event loop.

    The I/O thread completes a whole produce response at a time; every batch it settles
    meanwhile is queued here and the loop is woken ONCE for them all (each
    ``call_soon_threadsafe`` is a write to the loop's self-pipe and a wake-up).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._settled: list[tuple[_Acks, Outcome]] = []
        self._lock = threading.Lock()

    def post(self, acks: _Acks, outcome: Outcome) -> None:
        with self._lock:
            self._settled.append((acks, outcome))
            if len(self._settled) > 1:
                return  # a wake-up is on its way already
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    def _deliver(self) -> None:
        with self._lock:
            settled, self._settled = self._settled, []
        for acks, outcome in settled:
            acks.resolve(outcome)


def _knows_topic(producer: KafkaProducer, topic: str) -> bool:
    """Whether ``producer.send(topic, …)`` returns at once instead of blocking on metadata.

    ``send`` blocks (up to ``max_block_ms``) only while the topic's partitions are unknown;
    this is the very check it makes. Unknown (or a kafka-python without ``_metadata``)
    means: warm the producer up off the event loop first.
    """
    metadata = getattr(producer, "_metadata", None)
    return metadata is not None and metadata.partitions_for_topic(topic) is not None


class FeedbackPublisher:
    """Publishes feedback and returns only after the broker acknowledged it.

    ``publish_batch`` calls ``producer.send`` on the event loop and awaits kafka-python's
    own send futures (:class:`_Acks`), so any number of publishes share the producer's
    I/O thread and its batching; no thread waits per request. Only what can block runs in
    a worker thread: building the producer and the first metadata fetch of a topic.

    The producer is built lazily and rebuilt after any failure, so a server that started
    while the broker was down recovers on its own once the broker is back.
    """

    def __init__(self, kafka: KafkaSettings):
        self._kafka = kafka
        self._timeout_s = kafka.request_timeout_ms / 1000
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._failed_at = float("-inf")
        self._warming: dict[tuple[asyncio.AbstractEventLoop, str],
                            asyncio.Future[KafkaProducer]] = {}
        self._wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wakeups] = \
            weakref.WeakKeyDictionary()

    async def publish(self, topic: str, event: EventBase) -> None:
        """Send one event and wait for its ack; BrokerUnavailable within the timeout."""
        await self.publish_batch(topic, [event])

    async def publish_batch(self, topic: str, events: Sequence[EventBase]) -> None:
        """Send events and wait until all are acknowledged (the batch API's 202).

        Raises BrokerUnavailable (retry later) or RecordTooLarge (never retry), each
        within about the settings' timeout (twice it while a producer is being built).
        """
        if not events:
            return
        producer = await self._ready_producer(topic)
        acks = self._send(producer, topic, events)
        try:
            failure = await acks.future
        finally:
            acks.resolve(None)  # cancelled: stop the timer
        if failure is not None:
            self._raise_for(producer, events, *failure)

    def _send(self, producer: KafkaProducer, topic: str,
              events: Sequence[EventBase]) -> _Acks:
        """Hand every event to the producer (non-blocking: the topic's metadata is known)."""
        loop = asyncio.get_running_loop()
        wakeups = self._wakeups.get(loop)
        if wakeups is None:
            wakeups = self._wakeups[loop] = _Wakeups(loop)
        acks = _Acks(wakeups, len(events), self._timeout_s)
        for index, e in enumerate(events):
            try:
                record = producer.send(topic, key=event_key(e), value=encode_event(e),
                                       headers=event_headers(e))
            except KafkaError as error:
                self._raise_for(producer, events, index, error)
            acks.watch(index, record)
        return acks

    def _raise_for(self, producer: KafkaProducer, events: Sequence[EventBase], index: int,
                   error: BaseException) -> NoReturn:
        """RecordTooLarge for a record Kafka refuses by size (the producer is fine);
        otherwise drop the producer and raise BrokerUnavailable."""
        if isinstance(error, MessageSizeTooLargeError):
            raise RecordTooLarge(index, record_size(events[index]), f"({error})") from error
        self._reset(producer)
        raise BrokerUnavailable(f"Kafka at {self._kafka.bootstrap_servers}: {error}") from error

    async def _ready_producer(self, topic: str) -> KafkaProducer:
        """The shared producer, ready to send to ``topic`` without blocking the loop.

        Callers that find it not ready share one warm-up (one worker thread), so a burst of
        requests against a broker that is down fails together within one timeout.
        """
        producer = self._producer
        if producer is not None and _knows_topic(producer, topic):
            return producer
        key = (asyncio.get_running_loop(), topic)
        warming = self._warming.get(key)
        if warming is None:
            warming = self._warming[key] = asyncio.ensure_future(self._warm(topic))
            warming.add_done_callback(partial(self._forget_warm_up, key))
        return await asyncio.shield(warming)  # one caller's cancellation spares the rest

    def _forget_warm_up(self, key: tuple[asyncio.AbstractEventLoop, str],
                        warming: asyncio.Future[KafkaProducer]) -> None:
        self._warming.pop(key, None)
        if not warming.cancelled():
            warming.exception()  # retrieved: its callers (if any are left) got it

    async def _warm(self, topic: str) -> KafkaProducer:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._warm_producer, topic),
                                          timeout=self._timeout_s * 2 + 1)
        except TimeoutError:
            self._reset(self._producer)
            raise BrokerUnavailable(f"Kafka at {self._kafka.bootstrap_servers} did not "
                                    f"answer within {self._timeout_s * 2:.1f}s") from None

    def _warm_producer(self, topic: str) -> KafkaProducer:
        """Blocking: build the producer if needed and fetch ``topic``'s metadata."""
        producer = None
        try:
            producer = self._get_producer()
            producer.partitions_for(topic)  # bounded by max_block_ms
            return producer
        except KafkaError as e:
            self._reset(producer)
            raise BrokerUnavailable(f"Kafka at {self._kafka.bootstrap_servers}: {e}") from e

    def _get_producer(self) -> KafkaProducer:
        """The shared producer, built on first use.

        Calls that queued behind a build that failed fail at once instead of each trying
        again in turn, so N concurrent requests still answer within one timeout.
        """
        asked_at = time.monotonic()
        with self._lock:
            if self._producer is None:
                if self._failed_at > asked_at:
                    raise BrokerUnavailable(
                        f"Kafka at {self._kafka.bootstrap_servers} is unreachable")
                try:
                    self._producer = make_producer(self._kafka)
                except KafkaError:
                    self._failed_at = time.monotonic()
                    raise
            return self._producer

    def _reset(self, producer: KafkaProducer | None) -> None:
        """Drop ``producer`` if it is still the shared one (not one already replaced)."""
        if producer is None:
            return
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
        _close_quietly(producer)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and close the producer, if one was built."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=timeout)
            except KafkaError:
                log.warning("closing the feedback producer failed", exc_info=True)


class _LogMetrics:
    """The completion log's metrics, created once per prometheus registry."""

    _by_registry: dict[int, _LogMetrics] = {}

    def __init__(self, registry: CollectorRegistry):
        self.buffered = Gauge("rlhf:events_buffered", "Events waiting to be sent to Kafka.",
                              ["topic"], registry=registry)
        self.published = Counter("rlhf:events_published", "Events acknowledged by Kafka "
                                 "(replayed ones included).", ["topic"], registry=registry)
        self.spilled = Counter("rlhf:events_spilled", "Events written to the spill file "
                               "because the buffer was full (reason=buffer_full) or the "
                               "process stopped with them undelivered (reason=shutdown).",
                               ["topic", "reason"], registry=registry)
        self.replayed = Counter("rlhf:events_replayed", "Spilled events Kafka acknowledged "
                                "when they were replayed.", ["topic"], registry=registry)
        self.in_spill = Gauge("rlhf:events_in_spill", "Events in this process's spill "
                              "files, waiting to be replayed.", ["topic"], registry=registry)
        self.rejected = Counter("rlhf:events_rejected", "Events Kafka can never accept "
                                "(reason=too_large), kept in the spill directory's "
                                "rejected/ folder instead.", ["topic", "reason"],
                                registry=registry)
        self.dropped = Counter("rlhf:events_dropped", "Events lost: the spill file could not "
                               "be written (reason=spill_failed), no spill directory is set "
                               "(reason=no_spill), the event cannot be serialised "
                               "(reason=unserialisable) or a spilled line no longer decodes "
                               "(reason=unreadable).", ["topic", "reason"], registry=registry)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> _LogMetrics:
        if id(registry) not in cls._by_registry:
            cls._by_registry[id(registry)] = cls(registry)
        return cls._by_registry[id(registry)]


class CompletionLogPublisher:
    """Logs completions without ever blocking the caller, and without losing them.

    ``publish_nowait`` appends to a bounded buffer; a daemon thread sends batches and
    removes them only once acknowledged. Events of a batch that failed go back to the
    front of the buffer and the producer is rebuilt, so a restarted broker is picked up.

    With ``spill_dir`` nothing is dropped short of a disk failure: when the buffer is full
    its oldest event is appended to a spill file (:mod:`core.spill`), as is whatever is
    still undelivered at ``close``; the same thread replays the spill files at start-up,
    every ``replay_interval_s`` and as soon as the broker answers again, removing lines
    only once Kafka acknowledged them. An event Kafka can never accept (too large) is kept
    in ``<spill_dir>/rejected/`` and counted, never retried. Replays and redelivery after
    a failure may duplicate an event; the store deduplicates on ``event_id``. Without
    ``spill_dir`` those events are dropped and counted (``reason="no_spill"``).
    """

    def __init__(self, kafka: KafkaSettings, buffer_size: int = 10_000,
                 registry: CollectorRegistry | None = None, topic: str | None = None,
                 batch_size: int = 500, retry_backoff_s: float = 0.5,
                 spill_dir: Path | str | None = None, replay_interval_s: float = 30.0):
        self._kafka = kafka
        self.topic = topic or kafka.topics.completions
        self._capacity = buffer_size
        self._buffer: collections.deque[EventBase] = collections.deque()
        self._inflight: list[EventBase] = []
        self._batch_size = batch_size
        self._backoff_s = retry_backoff_s
        self._cond = threading.Condition()
        self._closing = False
        self._producer: KafkaProducer | None = None
        self._metrics = _LogMetrics.of(registry or REGISTRY)
        self._spill = Spill(spill_dir, self.topic) if spill_dir is not None else None
        self._rejected = (Spill(Path(spill_dir) / "rejected", self.topic)
                          if spill_dir is not None else None)
        self._replay_interval_s = replay_interval_s
        self._next_replay = 0.0  # monotonic time of the next replay: at start-up
        self._broker_down = False
        self._thread = threading.Thread(target=self._drain_forever, name="completion-log",
                                        daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Events accepted but not yet acknowledged, nor spilled."""
        with self._cond:
            return len(self._buffer) + len(self._inflight)

    @property
    def spilled(self) -> int:
        """Events in this process's spill files, waiting to be replayed."""
        return self._spill.pending if self._spill is not None else 0

    def publish_nowait(self, event: EventBase) -> None:
        """Queue an event; when the buffer is full its oldest event goes to the spill (a
        local file append: the caller never waits on the network)."""
        with self._cond:
            self._buffer.append(event)
            overflow = self._trim()
            self._update_gauge()
            self._cond.notify()
        if overflow:
            self._spill_events(overflow, "buffer_full")

    def _trim(self) -> list[EventBase]:
        """Take the events beyond ``capacity`` (the oldest waiting) out of the buffer."""
        over = len(self._buffer) + len(self._inflight) - self._capacity
        return [self._buffer.popleft() for _ in range(min(over, len(self._buffer)))]

    def _update_gauge(self) -> None:
        self._metrics.buffered.labels(self.topic).set(len(self._buffer) + len(self._inflight))

    # -- the drain thread ---------------------------------------------------------------

    def _drain_forever(self) -> None:
        while True:
            if self._replay_due():
                self._replay()
            batch = self._take_batch()
            if not batch:
                with self._cond:
                    if self._closing and not self._buffer:
                        return
                continue  # woke up for a replay
            published, retry = self._send(batch)
            self._finish_batch(published, retry)
            if retry:
                self._broker_down = True
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(self._backoff_s)
            elif self._broker_down or self.spilled:
                # the broker takes events (again): replay the spill now, not at the timer
                self._broker_down = False
                self._next_replay = 0.0

    def _take_batch(self) -> list[EventBase]:
        """Wait for events and move up to batch_size of them to in-flight; [] when
        closing with nothing left, or when a replay is due."""
        with self._cond:
            while not self._buffer and not self._closing:
                wait = self._until_replay()
                if wait is not None and wait <= 0:
                    return []
                self._cond.wait(wait)
            batch = [self._buffer.popleft()
                     for _ in range(min(self._batch_size, len(self._buffer)))]
            self._inflight = batch
            return batch

    def _finish_batch(self, published: int, retry: list[EventBase]) -> None:
        with self._cond:
            self._inflight = []
            self._metrics.published.labels(self.topic).inc(published)
            overflow = []
            if retry:
                self._buffer.extendleft(reversed(retry))
                overflow = self._trim()
            self._update_gauge()
            self._cond.notify_all()
        if overflow:
            self._spill_events(overflow, "buffer_full")

    def _send(self, batch: list[EventBase]) -> tuple[int, list[EventBase]]:
        """Send one batch and wait for the acks: (how many were acknowledged, the events to
        retry). An event Kafka refuses as too large is set aside (:meth:`_reject`), one
        that cannot be serialised is dropped and counted; any other failure retries the
        unacknowledged events with a fresh producer."""
        sent: list[tuple[EventBase, bytes, Any]] = []
        settled: set[int] = set()  # rejected or dropped: never retried
        try:
            if self._producer is None:
                self._producer = make_producer(self._kafka)
            for event in batch:
                value = self._encode(event)
                if value is None:
                    settled.add(id(event))
                    continue
                try:
                    sent.append((event, value, self._producer.send(
                        self.topic, key=event_key(event), value=value,
                        headers=event_headers(event))))
                except MessageSizeTooLargeError as exc:
                    self._reject(event, value, exc)
                    settled.add(id(event))
        except KafkaError as e:
            log.warning("completion log: Kafka unavailable (%s); %d events buffered",
                        e, self.buffered)
            self._drop_producer()
            return 0, [ev for ev in batch if id(ev) not in settled]
        deadline = time.monotonic() + self._kafka.request_timeout_ms / 1000
        published, error, retry = 0, None, []
        for event, value, future in sent:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
                published += 1
            except MessageSizeTooLargeError as exc:  # the broker's limit is lower
                self._reject(event, value, exc)
            except KafkaError as exc:
                retry.append(event)
                error = exc
        if retry:
            log.warning("completion log: Kafka unavailable (%s); %d events buffered",
                        error, self.buffered)
            self._drop_producer()
        return published, retry

    def _drop_producer(self) -> None:
        _close_quietly(self._producer)
        self._producer = None

    # -- replaying the spill ------------------------------------------------------------

    def _until_replay(self) -> float | None:
        """Seconds until the next replay; None without a spill."""
        if self._spill is None:
            return None
        return self._next_replay - time.monotonic()

    def _replay_due(self) -> bool:
        if self._spill is None or self._closing or time.monotonic() < self._next_replay:
            return False
        if self._broker_down and self.buffered:  # the live retries are probing already
            self._next_replay = time.monotonic() + self._replay_interval_s
            return False
        return True

    def _replay(self) -> None:
        """Send every spilled event; each segment keeps only what was not acknowledged."""
        assert self._spill is not None
        self._next_replay = time.monotonic() + self._replay_interval_s
        try:
            for segment in self._spill.segments():
                if not self._replay_segment(segment):
                    self._broker_down = True
                    break
        except Exception:  # noqa: BLE001 - the lines stay where they are; tried again later
            log.exception("completion log: replaying the spill in %s failed",
                          self._spill.directory)
        self._metrics.in_spill.labels(self.topic).set(self._spill.pending)

    def _replay_segment(self, segment: Segment) -> bool:
        """Replay one spill segment in batches; False when the broker stopped acking."""
        assert self._spill is not None
        lines = self._spill.read(segment)
        events: list[tuple[bytes, EventBase]] = []
        for line in lines:
            try:
                events.append((line, decode_event(line)))
            except InvalidEvent as exc:
                self._metrics.dropped.labels(self.topic, "unreadable").inc()
                log.error("completion log: LOST a spilled line of %s that no longer "
                          "decodes (%s): %.200r", segment.path, exc.reason, line)
        left: list[bytes] = []
        replayed = 0
        for start in range(0, len(events), self._batch_size):
            chunk = events[start:start + self._batch_size]
            published, retry = self._send([event for _, event in chunk])
            replayed += published
            if retry:
                failed = {id(event) for event in retry}
                left = [line for line, event in chunk if id(event) in failed]
                left += [line for line, _ in events[start + self._batch_size:]]
                break
        self._metrics.published.labels(self.topic).inc(replayed)
        self._metrics.replayed.labels(self.topic).inc(replayed)
        if len(left) < len(lines):  # else nothing changed: no rewrite while Kafka is down
            self._spill.settle(segment, left)
        if replayed:
            log.info("completion log: replayed %d spilled events from %s (%d left)",
                     replayed, segment.path, len(left))
        return not left

    # -- what cannot be sent now, or ever -----------------------------------------------

    def _encode(self, event: EventBase) -> bytes | None:
        """The event's wire form. One that cannot be serialised is tried once more with
        unstorable characters replaced (``core.events.storable``), else dropped."""
        try:
            return encode_event(event)
        except ValueError:
            pass
        try:
            value = encode_event(type(event).model_validate(storable(event.model_dump())))
        except ValueError as exc:
            self._drop([event], "unserialisable", exc)
            return None
        log.warning("completion log: %s had characters the store cannot hold; sent with "
                    "U+FFFD instead", _describe(event))
        return value

    def _spill_events(self, events: Sequence[EventBase], reason: str) -> None:
        """Append events to the spill file; count (and log) them, or what that loses."""
        if self._spill is None:
            self._drop(events, "no_spill")
            return
        encoded = [(event, value) for event in events
                   if (value := self._encode(event)) is not None]
        first = self._spill.pending == 0
        try:
            self._spill.append([value for _, value in encoded])
        except OSError as exc:
            self._drop([event for event, _ in encoded], "spill_failed", exc)
            return
        self._metrics.spilled.labels(self.topic, reason).inc(len(encoded))
        self._metrics.in_spill.labels(self.topic).set(self._spill.pending)
        for event, _ in encoded:
            log.log(logging.WARNING if first or reason != "buffer_full" else logging.INFO,
                    "completion log: spilled %s to %s (%s); it is replayed once Kafka "
                    "answers", _describe(event), self._spill.directory, reason)

    def _reject(self, event: EventBase, value: bytes, exc: Exception) -> None:
        """Kafka will never accept ``event``: keep it in ``rejected/`` and count it."""
        self._metrics.rejected.labels(self.topic, "too_large").inc()
        kept = "not kept: no spill directory"
        if self._rejected is not None:
            try:
                self._rejected.append([value])
                kept = f"kept in {self._rejected.directory}"
            except OSError as error:
                kept = f"LOST: {error}"
        log.warning("completion log: Kafka cannot accept %s (%s); %s", _describe(event), exc,
                    kept)

    def _drop(self, events: Sequence[EventBase], reason: str,
              exc: BaseException | None = None) -> None:
        self._metrics.dropped.labels(self.topic, reason).inc(len(events))
        for event in events:
            log.error("completion log: LOST %s (%s%s)", _describe(event), reason,
                      f": {exc}" if exc is not None else "")

    # -- closing ------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until the buffer is empty; True if it emptied within the timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._buffer or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Try to deliver what is buffered within ``timeout``, spill the rest, stop."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            left = list(self._buffer)
            self._buffer.clear()
            self._cond.notify_all()
        self._thread.join(timeout=self._kafka.request_timeout_ms / 1000 * 2 + 1)
        with self._cond:  # a failed batch put back, or still in flight if the thread hangs
            left += list(self._buffer) + (self._inflight if self._thread.is_alive() else [])
            self._buffer.clear()
            self._update_gauge()
        if left:
            log.warning("completion log closing with %d events undelivered", len(left))
            self._spill_events(left, "shutdown")
        _close_quietly(self._producer)
        self._producer = None
        for spill in (self._spill, self._rejected):
            if spill is not None:
                spill.close()


def _describe(event: EventBase) -> str:
    """How the log names an event: its request id and event id."""
    request_id = getattr(event, "request_id", None)
    return f"{request_id} (event {event.event_id})" if request_id else \
        f"event {event.event_id}"
