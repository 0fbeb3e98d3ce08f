"""Reading ``rlhf.policy``: decode PolicyEvents and keep each replica's last known version.

``core.events.decode_event`` covers the completions and feedback topics only, so
policy events are decoded here, with :class:`~core.registry.PolicyEvent` itself as
the one definition. A serving replica that reports its swaps adds a ``replica`` field
(its pod name) to the event; until PolicyEvent carries that field, it is read from the
raw JSON before validation, so both shapes decode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, Field

from core.events import InvalidEvent, decode_event
from core.registry import PolicyEvent
from core.settings import KafkaSettings


@dataclass(frozen=True)
class PolicyNotice:
    """A decoded policy event and the replica that sent it (None: not sent by a replica)."""

    event: PolicyEvent
    replica: str | None = None


def decode_policy_event(raw: bytes) -> PolicyNotice:
    """Decode one ``rlhf.policy`` message, or raise InvalidEvent saying why."""
    event = decode_event(raw, as_type=PolicyEvent)
    return PolicyNotice(event, event.replica)


class ReplicaVersion(BaseModel):
    """What one serving replica last reported."""

    replica: str = Field(description="The replica's id (its pod name).")
    version: str | None = Field(description="The version it serves, as far as is known.")
    last_event: str = Field(description="Type of its last event (promote, swap_failed …).")
    failed_version: str | None = Field(None, description="The version its last swap failed on.")
    reason: str = Field("", description="Reason given with its last event.")
    at: datetime = Field(description="When its last event was created.")


@dataclass
class ReplicaTable:
    """Each replica's last reported version, folded from its events in order.

    A replica reports ``promote``/``rollback`` once it serves that version, and
    ``swap_failed`` when a swap failed and it kept its previous version. Reports are
    compared by time, so reading partitions in any order gives the same table.
    """

    replicas: dict[str, ReplicaVersion] = field(default_factory=dict)

    def apply(self, notice: PolicyNotice) -> None:
        if notice.replica is None:
            return
        e, before = notice.event, self.replicas.get(notice.replica)
        if before is not None and e.created_at < before.at:
            return  # an older report, read late from another partition
        failed = e.type == "swap_failed"
        self.replicas[notice.replica] = ReplicaVersion(
            replica=notice.replica, last_event=e.type, reason=e.reason, at=e.created_at,
            version=(before.version if before else None) if failed else e.version,
            failed_version=e.version if failed else None)

    def snapshot(self) -> list[ReplicaVersion]:
        return [self.replicas[k] for k in sorted(self.replicas)]


def read_replica_versions(kafka: KafkaSettings, timeout_s: float = 5.0) -> list[ReplicaVersion]:
    """Replay ``rlhf.policy`` from its start to its current end into a ReplicaTable.

    For ``rlhf deploy status`` run away from the controller: no consumer group, nothing
    committed. Raises kafka's KafkaError when no broker answers.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False,
                             request_timeout_ms=kafka.request_timeout_ms + 1000)
    table = ReplicaTable()
    try:
        topic = kafka.topics.policy
        parts = [TopicPartition(topic, p)
                 for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(p) < end[p] for p in parts):
            if time.monotonic() > deadline:
                break
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    _apply_quietly(table, record.value)
        return table.snapshot()
    finally:
        consumer.close()


def _apply_quietly(table: ReplicaTable, raw: bytes) -> None:
    """Skip what does not decode: status must not fail on one bad message."""
    try:
        table.apply(decode_policy_event(raw))
    except InvalidEvent:
        pass
