"""Reading ``rlhf.policy``: decode PolicyEvents and keep each replica's last known version.

``core.events.decode_event`` covers the completions and feedback topics only, so
policy events are decoded here, with :class:`~core.registry.PolicyEvent` itself as
the one definition. A serving replica names itself in ``replica`` on its swap reports
and heartbeats; the table below folds them into the fleet the controller rolls out to.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from core.consumer import high_watermarks
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
    """What one serving replica last reported (its swaps) and last announced (heartbeats)."""

    replica: str = Field(description="The replica's id (RLHF_REPLICA__ID, else its pod name).")
    version: str | None = Field(description="The version it serves, as far as is known.")
    last_event: str = Field(description="Type of its last event (heartbeat, swapped, "
                                        "swap_failed …).")
    failed_version: str | None = Field(None, description="The version its last swap failed on.")
    reason: str = Field("", description="Reason given with its last swap report.")
    at: datetime = Field(description="When its last swap report (or first heartbeat) was "
                                     "created.")
    url: str | None = Field(None, description="Its HTTP base URL, from its heartbeats.")
    ready: bool | None = Field(None, description="Whether it was ready at its last heartbeat.")
    last_seen: datetime | None = Field(None, description="When its newest event was created.")


@dataclass
class ReplicaTable:
    """Each replica's last reported version, folded from its events in order.

    A replica reports ``swapped``/``swap_failed`` after a swap (older servers:
    ``promote``/``rollback``), and ``heartbeat`` every few seconds with its version, URL
    and readiness. Events are compared by creation time, so reading partitions in any
    order gives the same table; :meth:`snapshot` with ``stale_after_s`` leaves out
    replicas not heard from for that long (stopped or partitioned away).
    """

    replicas: dict[str, ReplicaVersion] = field(default_factory=dict)

    def apply(self, notice: PolicyNotice) -> None:
        if notice.replica is None:
            return
        e, before = notice.event, self.replicas.get(notice.replica)
        if e.type == "heartbeat":
            self._beat(notice.replica, e, before)
            return
        if before is not None and e.created_at < before.at:
            return  # an older report, read late from another partition
        failed = e.type == "swap_failed"
        newest = max(e.created_at, before.last_seen or before.at) if before else e.created_at
        beat_newer = before is not None and (before.last_seen or before.at) > e.created_at
        self.replicas[notice.replica] = ReplicaVersion(
            replica=notice.replica, last_event=e.type, reason=e.reason, at=e.created_at,
            version=(before.version if before else None) if failed or beat_newer
            else e.version,
            failed_version=e.version if failed else None,
            url=before.url if before else None, ready=before.ready if before else None,
            last_seen=newest)

    def _beat(self, replica: str, e: PolicyEvent, before: ReplicaVersion | None) -> None:
        if before is None:
            self.replicas[replica] = ReplicaVersion(
                replica=replica, version=e.version, last_event="heartbeat", at=e.created_at,
                url=e.url, ready=e.ready, last_seen=e.created_at)
            return
        if before.last_seen is not None and e.created_at < before.last_seen:
            return
        self.replicas[replica] = before.model_copy(update={
            "version": e.version if e.created_at >= before.at else before.version,
            "url": e.url, "ready": e.ready, "last_seen": e.created_at})

    def snapshot(self, stale_after_s: float | None = None,
                 now: datetime | None = None) -> list[ReplicaVersion]:
        """Replicas by id; with ``stale_after_s``, only those heard from that recently."""
        rows = [self.replicas[k] for k in sorted(self.replicas)]
        if stale_after_s is None:
            return rows
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=stale_after_s)
        return [r for r in rows if (r.last_seen or r.at) >= cutoff]


class KafkaUnreachable(Exception):
    """No bootstrap server accepted a connection; the message names them."""


def check_reachable(kafka: KafkaSettings, timeout_s: float = 1.0) -> None:
    """Raise KafkaUnreachable unless a bootstrap server accepts TCP within ``timeout_s``.

    kafka-python retries an absent broker for tens of seconds before it gives up (40 s
    for ``rlhf deploy status`` with nothing on the port), so a read-only command asks
    this first and answers at once. The time is shared out between the servers.
    """
    servers = kafka.client_kwargs()["bootstrap_servers"]
    for server in servers:
        host, sep, port = server.rpartition(":")
        try:
            address = (host.strip("[]"), int(port)) if sep else (server, 9092)
            with socket.create_connection(address, timeout=timeout_s / len(servers)):
                return
        except (OSError, ValueError):
            continue
    raise KafkaUnreachable(f"Kafka at {', '.join(servers)} unreachable")


def read_replica_versions(kafka: KafkaSettings, timeout_s: float = 5.0,
                          stale_after_s: float | None = None) -> list[ReplicaVersion]:
    """Replay ``rlhf.policy`` from its start to its current end into a ReplicaTable.

    For ``rlhf deploy status`` run away from the controller: no consumer group, nothing
    committed. The end is the high watermark from a fetch (``core.consumer``:
    ListOffsets is wrong on Tansu). Raises KafkaUnreachable at once when no bootstrap
    server accepts a connection, and kafka's KafkaError when the broker fails later.
    """
    from kafka import KafkaConsumer, TopicPartition

    check_reachable(kafka)
    consumer = KafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False,
                             request_timeout_ms=kafka.request_timeout_ms + 1000,
                             bootstrap_timeout_ms=int(timeout_s * 1000),
                             reconnect_backoff_max_ms=1000, fetch_max_wait_ms=100)
    table = ReplicaTable()
    try:
        topic = kafka.topics.policy
        parts = [TopicPartition(topic, p)
                 for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        deadline = time.monotonic() + timeout_s
        end = high_watermarks(consumer, parts, timeout_s)
        consumer.seek_to_beginning(*parts)
        while any(consumer.position(p) < end[p] for p in parts):
            if time.monotonic() > deadline:
                break
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    _apply_quietly(table, record.value)
        return table.snapshot(stale_after_s)
    finally:
        consumer.close()


def _apply_quietly(table: ReplicaTable, raw: bytes) -> None:
    """Skip what does not decode: status must not fail on one bad message."""
    try:
        table.apply(decode_policy_event(raw))
    except InvalidEvent:
        pass
