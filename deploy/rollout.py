"""Staged rollouts: the fleet table, swapping replicas a few at a time, restoring on failure.

:class:`FleetWatcher` tails ``rlhf.policy`` (no consumer group, from a little before
now) and folds heartbeats and swap reports into a :class:`~deploy.notices.ReplicaTable`;
the fleet is the replicas heard from within ``stale_after_s``. :func:`swap_fleet` sends
one ``swap`` event per replica (``targets`` = that replica), at most ``max_unavailable``
at a time, and waits for each one's ``swapped`` report (matched by ``command_id``) before
the next group. A ``swap_failed`` report, no report within ``swap_timeout_s``, or an
unacknowledged publish raises :class:`StageFailed` naming the replicas already swapped,
so the caller can put them back with :func:`restore`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, Field

from core.errors import BrokerUnavailable, Conflict
from core.events import InvalidEvent
from core.registry import PolicyEvent
from core.settings import KafkaSettings
from deploy.notices import ReplicaTable, ReplicaVersion, decode_policy_event
from deploy.publish import PolicyPublisher

log = logging.getLogger(__name__)

ROLLOUT_STATES = ("idle", "canary", "rolling", "restoring")

Outcome = Literal["promoted", "rolled_back", "rejected", "failed"]
Reason = Literal["gates_passed", "forced", "canary", "regression", "swap_failed", "operator",
                 "gates_failed", "broker_down"]
ROLLOUT_OUTCOMES: dict[Outcome, tuple[Reason, ...]] = {
    "promoted": ("gates_passed", "forced"),
    "rolled_back": ("canary", "regression", "swap_failed", "operator"),
    "rejected": ("gates_failed",),
    "failed": ("swap_failed", "broker_down"),
}
"""How a promotion or rollback the controller carried out ended, and why (docs/metrics.md):
the only label values of ``rlhf:rollout_outcomes``, each exported at 0 from the start."""


class SwapStep(BaseModel):
    """One replica's swap in a rollout."""

    replica: str = Field(description="Replica id.")
    version: str = Field(description="Version it was told to serve.")
    ok: bool = Field(description="Whether it reported `swapped`.")
    seconds: float = Field(description="From the `swap` event to the replica's report.")
    reason: str = Field("", description="The failure, when not ok.")


class StageFailed(Exception):
    """A replica did not swap; ``swapped`` lists those that did before (to restore)."""

    def __init__(self, replica: str, reason: str, swapped: list[str], steps: list[SwapStep]):
        super().__init__(f"swap failed on {replica}: {reason}")
        self.replica, self.reason, self.swapped, self.steps = replica, reason, swapped, steps


class RolloutFailed(Conflict):
    """The rollout stopped: a swap failed or the canary was rolled back (409)."""


class RolloutMetrics:
    """The controller's rollout metrics, served at its /metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.state = Gauge("rlhf:rollout_state", "1 for the rollout's current state "
                           "(idle, canary, rolling, restoring) and version.",
                           ["state", "version"], registry=r)
        self.swap_seconds = Histogram(
            "rlhf:rollout_replica_swap_seconds", "From a replica's swap event to its report.",
            ["replica", "outcome"], buckets=(0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320),
            registry=r)
        self.decisions = Counter("rlhf:rollout_decisions", "Canary and regression decisions.",
                                 ["action"], registry=r)
        self.signal = Gauge("rlhf:online_signal", "Latest online value of a signal per "
                            "version (error_rate, latency_s, rating, length) and its sample "
                            "count (signal=<name>_n).", ["version", "signal"], registry=r)
        self.outcomes = Counter("rlhf:rollout_outcomes", "Promotions and rollbacks by how "
                                "they ended (promoted, rolled_back, rejected, failed) and why.",
                                ["outcome", "reason"], registry=r)
        for outcome, reasons in ROLLOUT_OUTCOMES.items():
            for reason in reasons:
                self.outcomes.labels(outcome=outcome, reason=reason)
        self.set_state("idle", "")

    def set_state(self, state: str, version: str) -> None:
        self.state.clear()
        self.state.labels(state=state, version=version).set(1)

    def finished(self, outcome: Outcome, reason: Reason) -> None:
        """Count one promotion or rollback that ended (one of ``ROLLOUT_OUTCOMES``)."""
        self.outcomes.labels(outcome=outcome, reason=reason).inc()


def max_unavailable(setting: str, fleet_size: int) -> int:
    """``"2"`` → 2, ``"25%"`` → a quarter of the fleet rounded down; always at least 1."""
    if setting.endswith("%"):
        return max(1, math.floor(fleet_size * int(setting[:-1]) / 100))
    return max(1, int(setting))


class FleetWatcher:
    """The controller's live view of the fleet, fed by its own tail of ``rlhf.policy``."""

    def __init__(self, kafka: KafkaSettings, stale_after_s: float):
        self.kafka, self.stale_after_s = kafka, stale_after_s
        self.table = ReplicaTable()
        self.reports: dict[str, PolicyEvent] = {}
        self._changed = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._stop = asyncio.Event()

    def fleet(self, ready_only: bool = False) -> list[ReplicaVersion]:
        """Replicas heard from within ``stale_after_s`` (and ready, if asked)."""
        rows = self.table.snapshot(self.stale_after_s)
        return [r for r in rows if r.ready or not ready_only]

    def apply(self, raw: bytes) -> None:
        try:
            notice = decode_policy_event(raw)
        except InvalidEvent:
            return
        self.table.apply(notice)
        if notice.event.command_id and notice.event.type in ("swapped", "swap_failed"):
            self.reports[notice.event.command_id] = notice.event
            if len(self.reports) > 10_000:
                self.reports.pop(next(iter(self.reports)))
        self._changed.set()

    async def wait_report(self, command_id: str, timeout_s: float) -> PolicyEvent | None:
        """The report answering ``command_id``, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while command_id not in self.reports:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass
        return self.reports[command_id]

    async def wait_caught_up(self, timeout_s: float = 10.0) -> None:
        """Until the first read reached the topic's end (or the timeout)."""
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout_s)
        except TimeoutError:
            log.warning("fleet table not caught up with %s after %ss",
                        self.kafka.topics.policy, timeout_s)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Tail the topic until :meth:`stop`; reconnects after broker errors."""
        consumer: Any = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = await asyncio.to_thread(self._subscribe)
                batches = await asyncio.to_thread(consumer.poll, 200)
                for records in batches.values():
                    for record in records:
                        self.apply(record.value)
                if not self._caught_up.is_set() and await asyncio.to_thread(
                        self._at_end, consumer):
                    self._caught_up.set()
            except Exception:  # noqa: BLE001 - keep watching through broker outages
                log.warning("watching %s failed; retrying", self.kafka.topics.policy,
                            exc_info=True)
                if consumer is not None:
                    await asyncio.to_thread(consumer.close)
                consumer = None
                await asyncio.sleep(1.0)
        if consumer is not None:
            await asyncio.to_thread(consumer.close)

    def _subscribe(self) -> Any:
        """Assign every partition, from ``stale_after_s`` ago (the start if unsupported).

        Caught up means at each partition's high watermark as a fetch gives it
        (``core.consumer.high_watermarks``: ListOffsets is wrong on Tansu); a partition
        with nothing that recent stays there.
        """
        from core.consumer import assign_all_partitions, high_watermarks

        consumer, parts = assign_all_partitions(self.kafka, self.kafka.topics.policy)
        try:
            self._end = high_watermarks(consumer, parts)
        except BaseException:
            consumer.close()
            raise
        since = datetime.now(UTC) - timedelta(seconds=2 * self.stale_after_s)
        try:
            offsets = consumer.offsets_for_times({p: int(since.timestamp() * 1000)
                                                  for p in parts})
        except Exception:  # noqa: BLE001 - a broker without ListOffsets by time
            offsets = None
        for p in parts:
            found = offsets.get(p) if offsets is not None else None
            if found is not None:
                consumer.seek(p, found.offset)
            elif offsets is None:
                consumer.seek_to_beginning(p)
        return consumer

    def _at_end(self, consumer: Any) -> bool:
        return all(consumer.position(p) >= end for p, end in self._end.items())


async def swap_fleet(watcher: FleetWatcher, publisher: PolicyPublisher, replicas: list[str],
                     version: str, batch: int, timeout_s: float, reason: str,
                     metrics: RolloutMetrics | None = None) -> list[SwapStep]:
    """Swap ``replicas`` to ``version``, ``batch`` at a time; StageFailed on a failure."""
    steps: list[SwapStep] = []
    done: list[str] = []
    for i in range(0, len(replicas), batch):
        group = replicas[i:i + batch]
        results = await asyncio.gather(*(
            _swap_one(watcher, publisher, r, version, timeout_s, reason) for r in group))
        for step in results:
            steps.append(step)
            if metrics is not None:
                metrics.swap_seconds.labels(replica=step.replica,
                                            outcome="ok" if step.ok else "failed"
                                            ).observe(step.seconds)
            if step.ok:
                done.append(step.replica)
        failed = [s for s in results if not s.ok]
        if failed:
            raise StageFailed(failed[0].replica, failed[0].reason, done, steps)
    return steps


async def _swap_one(watcher: FleetWatcher, publisher: PolicyPublisher, replica: str,
                    version: str, timeout_s: float, reason: str) -> SwapStep:
    event = PolicyEvent(type="swap", version=version, targets=[replica], reason=reason)
    started = time.monotonic()
    try:
        await publisher.publish(event)
    except BrokerUnavailable as e:
        return SwapStep(replica=replica, version=version, ok=False, seconds=0.0,
                        reason=f"swap event not published: {e}")
    report = await watcher.wait_report(event.event_id, timeout_s)
    seconds = time.monotonic() - started
    if report is None:
        return SwapStep(replica=replica, version=version, ok=False, seconds=seconds,
                        reason=f"no report within {timeout_s:g}s")
    ok = report.type == "swapped"
    log.info("replica %s %s %s in %.2fs", replica, report.type, version, seconds)
    return SwapStep(replica=replica, version=version, ok=ok, seconds=seconds,
                    reason="" if ok else report.reason)


async def restore(watcher: FleetWatcher, publisher: PolicyPublisher, replicas: list[str],
                  version: str, batch: int, timeout_s: float, reason: str,
                  metrics: RolloutMetrics | None = None) -> list[SwapStep]:
    """Put ``replicas`` back on ``version``, best effort: every replica is tried."""
    steps: list[SwapStep] = []
    for i in range(0, len(replicas), batch):
        steps += await asyncio.gather(*(
            _swap_one(watcher, publisher, r, version, timeout_s, reason)
            for r in replicas[i:i + batch]))
    for step in steps:
        if metrics is not None:
            metrics.swap_seconds.labels(replica=step.replica,
                                        outcome="ok" if step.ok else "failed"
                                        ).observe(step.seconds)
        if not step.ok:
            log.error("restoring %s on %s failed: %s", version, step.replica, step.reason)
    return steps
