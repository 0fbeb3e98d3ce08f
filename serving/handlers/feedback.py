"""Feedback submission: validate, stamp the attribution from the API key, publish, ack.

``202 Accepted`` means the Kafka broker acknowledged the event (idempotent producer,
``acks=all``); if it cannot, the caller gets 503 and may resubmit with the same
``event_id``, which the store deduplicates. An event too large for Kafka is a 413
naming its largest field, before anything of the request is sent.

Attribution never comes from the body: ``source`` is the key's role and ``submitted_by``
the key's id (None when the API is open); values the body sends for them are ignored.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from core.auth import Caller
from core.errors import BrokerUnavailable, PayloadTooLarge, ServiceUnavailable
from core.errors import UnprocessableEntity as InvalidFeedback
from core.events import (
    Comparison,
    CompletionRecord,
    EventBase,
    FeedbackEvent,
    Ranking,
    Rating,
)
from core.producer import MAX_REQUEST_BYTES, FeedbackPublisher, RecordTooLarge, fits


class FeedbackAck(BaseModel):
    event_id: str = Field(..., description="The idempotency key the event is stored under.")
    status: str = Field("accepted", description="`accepted`: the broker acknowledged it.")


class FeedbackBatchAck(BaseModel):
    acks: list[FeedbackAck] = Field(..., description="One receipt per item, in order.")


class RecentCompletions:
    """How many choices recent completions had, to reject bad choice indices up front.

    Completions older than this window are still accepted here and checked by the
    ingester when it joins feedback to its completion.
    """

    def __init__(self, capacity: int = 100_000):
        self._n: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity

    def remember(self, request_id: str, n: int) -> None:
        self._n[request_id] = n
        if len(self._n) > self._capacity:
            self._n.popitem(last=False)

    def choices_of(self, request_id: str | None) -> int | None:
        return self._n.get(request_id) if request_id else None


class RememberingSink:
    """Wraps the completion log: remembers each completion's n, then forwards it."""

    def __init__(self, sink: Any, recent: RecentCompletions):
        self.sink, self.recent = sink, recent

    def publish_nowait(self, event: CompletionRecord) -> None:
        self.recent.remember(event.request_id, len(event.choices))
        self.sink.publish_nowait(event)

    def close(self) -> None:
        self.sink.close()


def _indices(item: EventBase) -> list[tuple[str, int]]:
    if isinstance(item, Ranking):
        return [("choices", i) for i in item.choices or []]
    if isinstance(item, Comparison):
        return [(f, i) for f, i in (("choice_a", item.choice_a), ("choice_b", item.choice_b))
                if i is not None]
    if isinstance(item, Rating) and item.choice is not None:
        return [("choice", item.choice)]
    return []


class FeedbackHandler:
    def __init__(self, publisher: FeedbackPublisher | None, topic: str,
                 recent: RecentCompletions, max_batch: int = 1000):
        self.publisher = publisher
        self.topic = topic
        self.recent = recent
        self.max_batch = max_batch

    def _prepare(self, item: FeedbackEvent, caller: Caller, where: str = "") -> EventBase:
        n = self.recent.choices_of(getattr(item, "request_id", None))
        for field, index in _indices(item):
            if n is not None and index >= n:
                raise InvalidFeedback(f"{where}{field}: choice {index} does not exist; the "
                                      f"completion has {n} choices", param=where + field)
        event = item.model_copy(update={"source": caller.feedback_source,
                                        "submitted_by": caller.name})
        if not fits(event):
            raise _too_large(event, where)
        return event

    async def submit(self, item: FeedbackEvent, caller: Caller) -> FeedbackAck:
        event = self._prepare(item, caller)
        await self._publish([event], single=True)
        return FeedbackAck(event_id=event.event_id)

    async def submit_batch(self, items: Sequence[FeedbackEvent],
                           caller: Caller) -> FeedbackBatchAck:
        """All items are validated before any is sent."""
        if len(items) > self.max_batch:
            raise InvalidFeedback(f"items: {len(items)} items; at most {self.max_batch} per "
                                  f"batch (RLHF_LIMITS__MAX_FEEDBACK_BATCH)", param="items")
        events = [self._prepare(it, caller, where=f"items.{i}.") for i, it in enumerate(items)]
        await self._publish(events)
        return FeedbackBatchAck(acks=[FeedbackAck(event_id=e.event_id) for e in events])

    async def _publish(self, events: list[EventBase], single: bool = False) -> None:
        if self.publisher is None:
            raise ServiceUnavailable("Feedback is disabled on this server (no Kafka broker "
                                    "configured: RLHF_PUBLISH_EVENTS=false).")
        try:
            await self.publisher.publish_batch(self.topic, events)
        except RecordTooLarge as exc:  # the broker's own limit is lower than ours
            where = "" if single else f"items.{exc.index}."
            raise _too_large(events[exc.index], where) from exc
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(f"The feedback broker is unavailable; nothing was "
                                    f"recorded, retry with the same event_id: {exc}") from exc


def _too_large(event: EventBase, where: str) -> PayloadTooLarge:
    """413 naming the event's largest field (the one to shorten)."""
    sizes = {name: len(json.dumps(value, default=str))
             for name, value in event.model_dump(mode="json").items()}
    field = max(sizes, key=lambda name: sizes[name])
    return PayloadTooLarge(f"{where}{field}: this {getattr(event, 'type', 'event')} is too "
                           f"large to record (Kafka accepts {MAX_REQUEST_BYTES} bytes per "
                           f"event; {field} alone is {sizes[field]} bytes as JSON)",
                           param=where + field)
