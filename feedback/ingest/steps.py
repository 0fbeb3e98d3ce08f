"""The ingester's pure steps: parse a Kafka record into an event, and validate it.

Each step raises :class:`InvalidEvent` for a bad record, and that one exception routes
the record to the dead-letter topic (see ``dlq.py``); nothing here touches the network
or the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.events import CompletionRecord, Event, InvalidEvent, decode_event
from core.settings import TopicSettings


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the pipeline needs (kafka-python's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


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
    return event


def parse_and_validate(record: Record, topics: TopicSettings) -> Event:
    return validate(parse(record), record, topics)
