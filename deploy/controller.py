"""The deploy controller: promote, roll back, report status, react to ``rlhf.policy``.

The registry's live pointer is the truth (a restarted server loads it); the promote and
rollback events on ``rlhf.policy`` tell running replicas to swap. So every change is:
write the live pointer, then publish the event and wait for the broker's ack; if the
broker does not acknowledge, the pointer is put back and the caller gets BrokerDown.

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
from deploy.publish import PolicyPublisher
from deploy.settings import DeploySettings

log = logging.getLogger(__name__)

BAD_MARKS = ("rolled_back", "swap_failed")
"""Keys in a version's gates.json that keep a default rollback from choosing it."""


class PromoteResult(BaseModel):
    version: str = Field(description="The policy that is live now.")
    previous: str | None = Field(description="The policy it replaced.")
    forced: bool = Field(description="True when the gates were skipped.")
    gates: GateReport | None = Field(None, description="The gate report (None when forced).")
    event_id: str = Field(description="Id of the promote event on rlhf.policy.")


class RollbackResult(BaseModel):
    version: str = Field(description="The policy that is live now.")
    rolled_back: str = Field(description="The policy that was taken out of service.")
    event_id: str = Field(description="Id of the rollback event on rlhf.policy.")


class VersionState(BaseModel):
    version: str = Field(description="Policy version id.")
    parent: str | None = Field(description="Version it was trained from.")
    created_at: datetime = Field(description="When it was registered.")
    state: str = Field(description="live, retired (was live) or candidate.")
    gates: str = Field(description="Gate status: passed, failed, not evaluated, "
                                   "rolled_back or swap_failed.")
    reasons: list[str] = Field(default_factory=list, description="Why gates failed.")


class DeployStatus(BaseModel):
    live: str | None = Field(description="The policy the registry says is live.")
    live_since: datetime | None = Field(description="When it became live.")
    versions: list[VersionState] = Field(description="Every policy version, oldest first.")
    history: list[LiveRecord] = Field(description="Every change of the live policy.")
    replicas: list[ReplicaVersion] | None = Field(
        description="Each serving replica's last reported version; None if unknown.")


def gate_status(gates: dict[str, Any]) -> str:
    """One word for a version's gates.json: a later bad mark beats the gate verdict."""
    for mark in ("swap_failed", "rolled_back"):
        if mark in gates:
            return mark
    return gates.get("status", "not evaluated")


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
        self._lock = asyncio.Lock()

    def close(self) -> None:
        """Close the event producer (the lifespan's and each CLI command's last step)."""
        self.publisher.close()

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
                raise GatesFailed(report)
            self._clear_bad_marks(version)
            why = f"promote{' (forced)' if force else ''}" + (f": {reason}" if reason else "")
            record, event = await self._switch(version, "promote", why)
            return PromoteResult(version=version, previous=record.previous, forced=force,
                                 gates=report, event_id=event.event_id)

    async def rollback(self, version: str | None = None, reason: str = "") -> RollbackResult:
        """Make ``version`` (default: the previous good live version) live again."""
        async with self._lock:
            return await self._rollback(version, reason)

    async def _rollback(self, version: str | None, reason: str) -> RollbackResult:
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
        _, event = await self._switch(target, "rollback", why)
        return RollbackResult(version=target, rolled_back=live, event_id=event.event_id)

    async def _switch(self, version: str, kind: str, reason: str
                      ) -> tuple[LiveRecord, PolicyEvent]:
        """Live pointer first, then the event; put the pointer back if the broker fails."""
        record = self.registry.set_live(version, reason)
        event = PolicyEvent(type=kind, version=version, reason=reason)
        try:
            await self.publisher.publish(event)
        except BrokerUnavailable as e:
            if record.previous is not None:
                self.registry.set_live(record.previous, f"{kind} of {version} not announced")
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
        live, history = self.registry.live(), self.registry.history()
        ever_live = {r.version for r in history}
        versions = [VersionState(
            version=m.version, parent=m.parent, created_at=m.created_at,
            state="live" if live and m.version == live.version
            else "retired" if m.version in ever_live else "candidate",
            gates=gate_status(m.gates), reasons=m.gates.get("reasons", []))
            for m in self.registry.list("policy")]
        return DeployStatus(live=live.version if live else None,
                            live_since=live.changed_at if live else None,
                            versions=versions, history=history, replicas=replicas)

    # -- events from rlhf.policy ---------------------------------------------------------
    async def handle(self, notice: PolicyNotice) -> None:
        """React to one policy event; DeployErrors are logged, never raised."""
        self.replicas.apply(notice)
        event = notice.event
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
        if self.settings.auto_promote:
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
                                                    f"{replica or 'a replica'}: {reason}")
                log.warning("swap of %s failed; rolled back to %s", version, result.version)
