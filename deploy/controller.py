"""The deploy controller: promote, roll back, report status, react to ``rlhf.policy``.

The registry's live pointer is the truth (a restarted server loads it); the promote and
rollback events on ``rlhf.policy`` tell running replicas to swap. So every change is:
write the live pointer, then publish the event and wait for the broker's ack; if the
broker does not acknowledge, the pointer is put back and the caller gets BrokerDown.

With a fleet in view (``start_fleet``: replicas' heartbeats on ``rlhf.policy``) and
``RLHF_ROLLOUT__STAGED`` on, a promotion is staged instead (docs/rollout.md): an optional
canary share first, judged online against the live version (deploy.online), then the
rest, ``max_unavailable`` replicas at a time, each one's ``swapped`` report awaited. The
live pointer moves only when the canary is accepted; a failed swap puts every swapped
replica back and the pointer back on the previous version.

One asyncio lock serialises promotions, rollbacks and event handling inside a process;
the gates run in a worker thread so the admin API keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from core.errors import BrokerUnavailable
from core.registry import LiveRecord, PolicyEvent, Registry, RegistryError
from deploy.errors import (
    BrokerDown,
    DeployError,
    GatesFailed,
    NotPromotable,
    UnknownVersion,
)
from deploy.gates import GateReport, evaluate_and_record
from deploy.notices import PolicyNotice, ReplicaTable, ReplicaVersion
from deploy.online import (
    Decision,
    OnlinePolicy,
    decide,
    feedback_samples,
    merged,
    regression,
    scrape,
)
from deploy.publish import PolicyPublisher
from deploy.rollout import (
    FleetWatcher,
    Reason,
    RolloutFailed,
    RolloutMetrics,
    StageFailed,
    max_unavailable,
    restore,
    swap_fleet,
)
from deploy.settings import DeploySettings
from deploy.status import DeployStatus, RolloutReport, read_status
from deploy.status import gate_status as gate_status  # imported from here by others

log = logging.getLogger(__name__)

BAD_MARKS = ("rolled_back", "swap_failed")
"""Keys in a version's gates.json that keep a default rollback from choosing it."""


class PromoteResult(BaseModel):
    version: str = Field(description="The policy that is live now.")
    previous: str | None = Field(description="The policy it replaced.")
    forced: bool = Field(description="True when the gates were skipped.")
    gates: GateReport | None = Field(None, description="The gate report (None when forced).")
    event_id: str = Field(description="Id of the promote event on rlhf.policy.")
    rollout: RolloutReport | None = Field(
        None, description="The staged rollout (None: one promote event for the fleet).")


class RollbackResult(BaseModel):
    version: str = Field(description="The policy that is live now.")
    rolled_back: str = Field(description="The policy that was taken out of service.")
    event_id: str = Field(description="Id of the rollback event on rlhf.policy.")


def rollback_target(registry: Registry, live: str) -> str | None:
    """The most recently live version other than ``live`` that is not marked bad."""
    for record in reversed(registry.history()):
        for v in (record.version, record.previous):
            if v and v != live and not any(m in registry.get(v).gates for m in BAD_MARKS):
                return v
    return None


class DeployController:
    """Promotion and rollback against one registry and one Kafka cluster."""

    def __init__(self, settings: DeploySettings, *, registry: Registry | None = None,
                 store=None, publisher: PolicyPublisher | None = None):
        self.settings = settings
        self.registry = registry or Registry(settings.registry.root)
        self.store = store
        self.publisher = publisher or PolicyPublisher(settings.kafka)
        self.replicas = ReplicaTable()
        self.watcher: FleetWatcher | None = None
        self.metrics = RolloutMetrics()
        self.online_policy = OnlinePolicy.load(settings.rollout.policy_file)
        self.last_rollout: RolloutReport | None = None
        self._watch: tuple[str, str, datetime, float] | None = None
        self._lock = asyncio.Lock()

    def close(self) -> None:
        """Close the event producer (the lifespan's and each CLI command's last step)."""
        self.publisher.close()

    # -- the fleet ---------------------------------------------------------------------
    def start_fleet(self) -> asyncio.Task:
        """Start tailing heartbeats and swap reports; staged rollouts need it."""
        self.watcher = FleetWatcher(self.settings.kafka, self.settings.rollout.stale_after_s)
        return asyncio.create_task(self.watcher.run())

    async def with_fleet(self, work):
        """Run ``work()`` with the fleet watched (a CLI command's one call)."""
        task = self.start_fleet()
        try:
            return await work()
        finally:
            assert self.watcher is not None
            self.watcher.stop()
            await task

    async def _fleet(self) -> list[ReplicaVersion] | None:
        """Ready replicas to stage a rollout over; None: publish one event instead."""
        if self.watcher is None or not self.settings.rollout.staged:
            return None
        await self.watcher.wait_caught_up()
        return self.watcher.fleet(ready_only=True) or None

    def replica_rows(self) -> list[ReplicaVersion]:
        """The fleet table (fresh replicas, from heartbeats) when watched and not empty;
        else the replicas seen through their swap reports (a failed one included), so a
        fleet whose replicas send no heartbeats still shows who failed what."""
        fleet = self.watcher.fleet() if self.watcher is not None else []
        return fleet or self.replicas.snapshot()

    # -- checks ------------------------------------------------------------------------
    def _policy(self, version: str) -> None:
        """UnknownVersion unless ``version`` is a policy in the registry."""
        try:
            kind = self.registry.get(version).kind
        except RegistryError as e:
            raise UnknownVersion(str(e)) from None
        if kind != "policy":
            raise UnknownVersion(f"{version} is a {kind} model, not a policy")

    def _intact(self, version: str) -> None:
        """NotPromotable when the version's files differ from its manifest."""
        bad = self.registry.verify(version)
        if bad:
            raise NotPromotable(f"{version}: files differ from the manifest: {bad}")

    # -- gates -------------------------------------------------------------------------
    async def evaluate(self, version: str) -> GateReport:
        """Run the gates for ``version`` in a thread and record them in gates.json."""
        self._policy(version)
        return await asyncio.to_thread(evaluate_and_record, self.registry, version,
                                       self.settings.gates, self.store)

    # -- promote and roll back ---------------------------------------------------------
    async def promote(self, version: str, force: bool = False, reason: str = "") -> PromoteResult:
        """Gates (unless forced), then live pointer + promote event. GatesFailed on a fail."""
        async with self._lock:
            self._policy(version)
            if version == self.registry.live_policy():
                raise NotPromotable(f"{version} is already live")
            self._intact(version)
            report = None if force else await self.evaluate(version)
            if report is not None and report.status != "passed":
                self.metrics.finished("rejected", "gates_failed")
                raise GatesFailed(report)
            self._clear_bad_marks(version)
            why = f"promote{' (forced)' if force else ''}" + (f": {reason}" if reason else "")
            fleet = await self._fleet()
            if fleet is not None:
                return await self._staged_promote(version, why, fleet, force, report)
            record, event = await self._switch(version, "promote", why)
            self.metrics.finished("promoted", "forced" if force else "gates_passed")
            return PromoteResult(version=version, previous=record.previous, forced=force,
                                 gates=report, event_id=event.event_id)

    # -- staged rollout ----------------------------------------------------------------
    async def _staged_promote(self, version: str, why: str, fleet: list[ReplicaVersion],
                              force: bool, gates: GateReport | None) -> PromoteResult:
        """Canary (optional), then the rest; a failed swap restores the previous version."""
        rs, previous = self.settings.rollout, self.registry.live_policy()
        ids = [r.replica for r in fleet]
        batch = max_unavailable(rs.max_unavailable, len(ids))
        n_canary = min(rs.canary_replicas, len(ids) - 1) if previous else 0
        rollout = self.last_rollout = RolloutReport(version=version, previous=previous,
                                                    canary=ids[:n_canary])
        swapped: list[str] = []
        moved = False
        try:
            if n_canary:
                decision = await self._canary(rollout, fleet, batch, swapped)
                if decision.action == "rollback":
                    await self._undo(rollout, swapped, batch, moved=False,
                                     why=f"canary of {version} rolled back: {decision.reason}")
                    self.metrics.finished("rolled_back", "canary")
                    raise RolloutFailed(f"canary of {version} rolled back: {decision.reason}",
                                        rollout=rollout.model_dump(mode="json"))
            detail = ({"decision": rollout.decisions[-1].model_dump(mode="json")}
                      if rollout.decisions else {})
            record = self.registry.set_live(version, why, detail)
            moved = True
            self.metrics.set_state("rolling", version)
            rest = [r for r in ids if r not in swapped]
            rollout.steps += await swap_fleet(
                self.watcher, self.publisher, rest, version, batch,  # type: ignore[arg-type]
                rs.swap_timeout_s, why, self.metrics)
            swapped += rest
        except StageFailed as f:
            rollout.steps += [s for s in f.steps if s not in rollout.steps]
            swapped += [r for r in f.swapped if r not in swapped]
            await self._undo(rollout, swapped, batch, moved,
                             why=f"swap of {version} failed on {f.replica}: {f.reason}")
            self._mark(version, "swap_failed", {"replica": f.replica, "reason": f.reason})
            rollout.outcome = "swap_failed"
            self.metrics.finished("failed", "swap_failed")
            raise RolloutFailed(f"rollout of {version} stopped: swap failed on {f.replica}: "
                                f"{f.reason}; {previous} restored",
                                rollout=rollout.model_dump(mode="json")) from None
        event = PolicyEvent(type="promote", version=version, reason=why)
        try:  # replicas outside the table (still loading) follow the live pointer
            await self.publisher.publish(event)
        except BrokerUnavailable as e:
            log.warning("promote event of %s not published (replicas all swapped): %s",
                        version, e)
        rollout.outcome = "promoted"
        self.metrics.set_state("idle", version)
        self.metrics.finished("promoted", "forced" if force else "gates_passed")
        if rs.watch_s > 0 and previous:
            self._watch = (version, previous, datetime.now(UTC), rs.watch_s)
        log.info("staged rollout: %s is live on %d replicas (was %s)", version, len(ids),
                 previous)
        return PromoteResult(version=version, previous=record.previous, forced=force,
                             gates=gates, event_id=event.event_id, rollout=rollout)

    async def _canary(self, rollout: RolloutReport, fleet: list[ReplicaVersion], batch: int,
                      swapped: list[str]) -> Decision:
        """Swap the canary share, then evaluate every interval until not ``hold``."""
        version, live = rollout.version, rollout.previous or ""
        policy, urls = self.online_policy, [r.url for r in fleet if r.url]
        self.metrics.set_state("canary", version)
        base = await asyncio.to_thread(scrape, urls)
        started = datetime.now(UTC)
        steps = await swap_fleet(self.watcher, self.publisher,  # type: ignore[arg-type]
                                 rollout.canary, version, batch,
                                 self.settings.rollout.swap_timeout_s,
                                 f"canary of {version}", self.metrics)
        rollout.steps += steps
        swapped += rollout.canary
        clock = asyncio.get_running_loop().time
        t0 = clock()
        while True:
            await asyncio.sleep(policy.interval_s)
            decision = await asyncio.to_thread(self._evaluate, version, live, base, started,
                                               urls, clock() - t0)
            rollout.decisions.append(decision)
            self._record_decision(version, decision)
            if decision.action != "hold":
                return decision

    def _evaluate(self, version: str, live: str, base, since: datetime, urls: list[str],
                  elapsed: float) -> Decision:
        """One canary evaluation from the replicas' /metrics and the feedback store."""
        totals = scrape(urls)
        fb = (feedback_samples(self.store, [version, live], since)
              if self.store is not None else {})
        canary = merged(totals.minus(base, version), fb.get(version) or _empty())
        current = merged(totals.minus(base, live), fb.get(live) or _empty())
        decision = decide(self.online_policy, version, live, canary, current, elapsed,
                          datetime.now(UTC))
        for r in decision.signals:
            for v, value, n in ((version, r.canary, r.n_canary), (live, r.live, r.n_live)):
                if value is not None:
                    self.metrics.signal.labels(version=v, signal=r.signal).set(value)
                self.metrics.signal.labels(version=v, signal=f"{r.signal}_n").set(n)
        log.info("canary %s vs %s: %s (%s)", version, live, decision.action, decision.reason)
        return decision

    def _record_decision(self, version: str, decision: Decision) -> None:
        """Keep the last 100 decisions in the candidate's gates.json (``rollout``)."""
        gates = dict(self.registry.get(version).gates)
        kept = list(gates.get("rollout", {}).get("decisions", []))[-99:]
        gates["rollout"] = {"decisions": [*kept, decision.model_dump(mode="json")]}
        self.registry.update_gates(version, gates)
        self.metrics.decisions.labels(action=decision.action).inc()

    async def _undo(self, rollout: RolloutReport, swapped: list[str], batch: int,
                    moved: bool, why: str) -> None:
        """Swapped replicas back to the previous version; the pointer too if it moved."""
        previous, version = rollout.previous, rollout.version
        self.metrics.set_state("restoring", version)
        if previous is not None and swapped:
            rollout.steps += await restore(
                self.watcher, self.publisher, swapped, previous, batch,  # type: ignore[arg-type]
                self.settings.rollout.swap_timeout_s, why, self.metrics)
        detail = {"decision": rollout.decisions[-1].model_dump(mode="json")
                  if rollout.decisions else None, "restored": swapped}
        if previous is not None:
            # live stays (or returns to) the previous version; the record keeps the numbers
            self.registry.set_live(previous, f"rollback: {why}", detail)
        self._mark(version, "rolled_back", {"to": previous, "reason": why})
        if moved and previous is not None:
            try:
                await self.publisher.publish(PolicyEvent(type="rollback", version=previous,
                                                         reason=why))
            except BrokerUnavailable as e:
                log.warning("rollback event not published: %s", e)
        rollout.outcome = ("canary_rolled_back" if rollout.outcome == "running"
                           else rollout.outcome)
        self.metrics.set_state("idle", previous or "")

    async def rollback(self, version: str | None = None, reason: str = "") -> RollbackResult:
        """Make ``version`` (default: the previous good live version) live again."""
        async with self._lock:
            return await self._rollback(version, reason)

    async def _rollback(self, version: str | None, reason: str,
                        detail: dict[str, Any] | None = None,
                        cause: Reason = "operator") -> RollbackResult:
        """Roll back to ``version`` (default: the previous good one); ``cause`` is what
        asked for it (the operator, a regression, a replica's swap_failed), for the metric."""
        live = self.registry.live_policy()
        if live is None:
            raise NotPromotable("no policy is live, nothing to roll back")
        target = version or rollback_target(self.registry, live)
        if target is None:
            raise NotPromotable(f"no earlier live version to roll back to from {live}")
        self._policy(target)
        if target == live:
            raise NotPromotable(f"{target} is already live")
        self._intact(target)
        self._mark(live, "rolled_back", {"to": target, "reason": reason})
        why = "rollback" + (f": {reason}" if reason else "")
        fleet = await self._fleet()
        if fleet is not None:  # pointer first, then replicas a few at a time
            self.registry.set_live(target, why, detail)
            await restore(self.watcher, self.publisher,  # type: ignore[arg-type]
                          [r.replica for r in fleet if r.version != target], target,
                          max_unavailable(self.settings.rollout.max_unavailable, len(fleet)),
                          self.settings.rollout.swap_timeout_s, why, self.metrics)
            event = PolicyEvent(type="rollback", version=target, reason=why)
            try:
                await self.publisher.publish(event)
            except BrokerUnavailable as e:
                log.warning("rollback event of %s not published: %s", target, e)
            self.metrics.finished("rolled_back", cause)
            return RollbackResult(version=target, rolled_back=live, event_id=event.event_id)
        _, event = await self._switch(target, "rollback", why, detail)
        self.metrics.finished("rolled_back", cause)
        return RollbackResult(version=target, rolled_back=live, event_id=event.event_id)

    # -- regression after a full rollout -------------------------------------------------
    async def watch_regressions(self, stop: asyncio.Event) -> None:
        """Until ``stop``: after a staged rollout with watch_s > 0, roll back when the new
        live version is rated below the previous one by the policy's margin."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.online_policy.interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self._check_regression()
            except Exception:  # noqa: BLE001 - the watch must outlive one bad check
                log.exception("regression check failed")

    async def _check_regression(self) -> None:
        if self._watch is None or self.store is None:
            return
        version, previous, since, watch_s = self._watch
        if self.registry.live_policy() != version or (
                datetime.now(UTC) - since).total_seconds() > watch_s:
            self._watch = None
            return
        fb = await asyncio.to_thread(feedback_samples, self.store, [version, previous], None)
        new = await asyncio.to_thread(feedback_samples, self.store, [version], since)
        result = regression(self.online_policy, version, previous, new[version].ratings,
                            fb[previous].ratings)
        if result.verdict != "worse":
            return
        reason = (f"{version} rated below {previous} by {result.worse:.3g} (interval "
                  f"{result.low:.3g}..{result.high:.3g}, margin "
                  f"{self.online_policy.regression_margin})")
        async with self._lock:
            if self.registry.live_policy() != version:
                return
            self._watch = None
            self.metrics.decisions.labels(action="regression_rollback").inc()
            await self._rollback(previous, reason,
                                 {"regression": result.model_dump(mode="json")},
                                 cause="regression")
            log.warning("regression: %s", reason)

    async def _switch(self, version: str, kind: str, reason: str,
                      detail: dict[str, Any] | None = None) -> tuple[LiveRecord, PolicyEvent]:
        """Live pointer first, then the event; put the pointer back if the broker fails."""
        record = self.registry.set_live(version, reason, detail)
        event = PolicyEvent(type=kind, version=version, reason=reason)
        try:
            await self.publisher.publish(event)
        except BrokerUnavailable as e:
            if record.previous is not None:
                self.registry.set_live(record.previous, f"{kind} of {version} not announced")
            self.metrics.finished("failed", "broker_down")
            raise BrokerDown(f"{kind} of {version} not announced, live pointer restored to "
                             f"{record.previous}: {e}") from e
        log.info("%s: %s is live (was %s)", kind, version, record.previous)
        return record, event

    # -- marks in gates.json -------------------------------------------------------------
    def _mark(self, version: str, mark: str, detail: dict[str, Any]) -> None:
        """Add ``mark`` to the version's gates.json, keeping the gate report."""
        gates = dict(self.registry.get(version).gates)
        gates[mark] = {**detail, "at": datetime.now(UTC).isoformat()}
        self.registry.update_gates(version, gates)

    def _clear_bad_marks(self, version: str) -> None:
        gates = self.registry.get(version).gates
        if any(m in gates for m in BAD_MARKS):
            self.registry.update_gates(
                version, {k: v for k, v in gates.items() if k not in BAD_MARKS})

    # -- status --------------------------------------------------------------------------
    def status(self, replicas: list[ReplicaVersion] | None = None) -> DeployStatus:
        """Live version, every policy with its gate status, the history, the replicas."""
        return read_status(self.registry, replicas, self.last_rollout)

    # -- events from rlhf.policy ---------------------------------------------------------
    async def handle(self, notice: PolicyNotice) -> None:
        """React to one policy event; DeployErrors are logged, never raised."""
        self.replicas.apply(notice)
        event = notice.event
        if event.command_id:
            return  # answers a staged rollout's swap: the rollout itself handles failures
        try:
            if event.type == "candidate" and event.kind == "policy":
                await self._on_candidate(event.version)
            elif event.type == "swap_failed" and event.kind == "policy":
                await self._on_swap_failed(event.version, notice.replica, event.reason)
        except DeployError as e:
            log.warning("%s event for %s: %s", event.type, event.version, e.message)

    async def _on_candidate(self, version: str) -> None:
        """Evaluate a new candidate once; promote it if it passes and auto_promote is on."""
        self._policy(version)
        if self.registry.get(version).gates or version == self.registry.live_policy():
            return  # evaluated before (a replayed event) or already serving
        live = self.registry.live_policy()
        # An SFT is judged against the current SFT (the SFT gates), not the live policy: it
        # replaces a live base or SFT, but under a live PPO result it only becomes the base
        # of the next PPO lineage (training.cycle), whose candidates must beat the live one.
        sft_under_ppo = self.registry.get(version).config.get("recipe") == "sft" and \
            live is not None and self.registry.get(live).config.get("recipe") == "ppo"
        if self.settings.auto_promote and not sft_under_ppo:
            await self.promote(version, reason="auto-promote")
        else:
            report = await self.evaluate(version)
            log.info("candidate %s gates: %s %s", version, report.status, report.reasons)

    async def _on_swap_failed(self, version: str, replica: str | None, reason: str) -> None:
        """Mark the version; if it is live, roll back to the previous good version."""
        async with self._lock:
            self._policy(version)
            self._mark(version, "swap_failed", {"replica": replica, "reason": reason})
            if version == self.registry.live_policy():
                result = await self._rollback(None, f"swap of {version} failed on "
                                                    f"{replica or 'a replica'}: {reason}",
                                              cause="swap_failed")
                log.warning("swap of %s failed; rolled back to %s", version, result.version)


def _empty():
    from deploy.online import Samples

    return Samples()
