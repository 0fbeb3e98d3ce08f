"""The ingester's pure steps: parse a Kafka record into an event, validate it, route it.

Each step raises :class:`InvalidEvent` for a bad record, and ``route`` turns that one
exception into a :class:`~feedback.ingest.dlq.DeadLetter`; nothing here touches the
network or the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.events import CompletionRecord, Event, InvalidEvent, decode_event
from core.settings import TopicSettings
from feedback.ingest.dlq import DeadLetter
from feedback.store.store import Origin


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the pipeline needs (kafka-python's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None

    @classmethod
    def of(cls, r: Any) -> Record:
        """From a ConsumerRecord (or anything with topic/partition/offset/value/key)."""
        return cls(r.topic, r.partition, r.offset, r.value, getattr(r, "key", None))

    def dead_letter(self, reason: str) -> DeadLetter:
        return DeadLetter(self.value, self.key, reason, self.topic, self.partition, self.offset)


def parse(record: Record) -> Event:
    """Decode the record's value; InvalidEvent for an empty value or a bad event."""
    if not record.value:
        raise InvalidEvent("empty message")
    return decode_event(record.value)


def validate(event: Event, record: Record, topics: TopicSettings) -> Event:
    """Checks that need no database: each topic carries only its own kind of event."""
    is_completion = isinstance(event, CompletionRecord)
    if record.topic == topics.completions and not is_completion:
        raise InvalidEvent(f"type: {event.type!r} event on the completions topic")
    if record.topic == topics.feedback and is_completion:
        raise InvalidEvent("type: completion event on the feedback topic")
    if record.topic not in (topics.completions, topics.feedback):
        raise InvalidEvent(f"topic: {record.topic!r} is not an ingested topic")
    return event


def parse_and_validate(record: Record, topics: TopicSettings) -> Event:
    return validate(parse(record), record, topics)


@dataclass
class Routed:
    """One batch after parsing: the good events (in record order) and the dead letters.

    ``first`` maps each event_id to the index of the first record that carried it (a
    replayed duplicate later in the batch is the store's to skip), so a store rejection
    can be traced back to its record, its bytes and its origin.
    """

    records: list[Record]
    events: list[Event] = field(default_factory=list)
    first: dict[str, int] = field(default_factory=dict)
    dead: dict[int, DeadLetter] = field(default_factory=dict)

    def origins(self) -> dict[str, Origin]:
        """event_id → (partition, offset) of its first record, for the store."""
        return {eid: (self.records[i].partition, self.records[i].offset)
                for eid, i in self.first.items()}

    def outcomes(self, rejected_ids: set[str]) -> list[bool]:
        """Per record, in order: True when it is dead-lettered (for the DLQ limiter)."""
        dead_rejected = {self.first[e] for e in rejected_ids if e in self.first}
        return [i in self.dead or i in dead_rejected for i in range(len(self.records))]


def route(records: Sequence[Record], topics: TopicSettings) -> Routed:
    """Parse and validate every record; each one lands in ``events`` or in ``dead``."""
    routed = Routed(list(records))
    for i, rec in enumerate(routed.records):
        try:
            event = parse_and_validate(rec, topics)
        except InvalidEvent as e:
            routed.dead[i] = rec.dead_letter(e.reason)
            continue
        routed.events.append(event)
        routed.first.setdefault(event.event_id, i)
    return routed
