"""What ``rlhf deploy status`` and ``GET /v1/deploy/status`` report: the live policy,
every policy version's state, the replicas, and the last staged rollout.

Kept apart from the controller so that the status command imports neither the gates nor
(through them) torch: it reads the registry without creating it and answers in well
under two seconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.registry import LiveRecord, Registry
from deploy.notices import ReplicaVersion
from deploy.online import Decision
from deploy.rollout import SwapStep


class RolloutReport(BaseModel):
    """What a staged rollout did: which replicas swapped when, and the canary decisions."""

    version: str = Field(description="The candidate.")
    previous: str | None = Field(description="The live version it started from.")
    canary: list[str] = Field(default_factory=list, description="Replicas of the canary.")
    steps: list[SwapStep] = Field(default_factory=list, description="Every replica swap.")
    decisions: list[Decision] = Field(default_factory=list,
                                      description="Canary evaluations, the deciding one last.")
    outcome: str = Field("running", description="running, promoted, canary_rolled_back or "
                                                "swap_failed.")


class VersionState(BaseModel):
    version: str = Field(description="Policy version id.")
    parent: str | None = Field(description="Version it was trained from.")
    created_at: datetime = Field(description="When it was registered.")
    state: str = Field(description="live, retired (was live) or candidate.")
    gates: str = Field(description="Gate status: passed, failed, not evaluated, "
                                   "rolled_back or swap_failed.")
    reasons: list[str] = Field(default_factory=list, description="Why gates failed.")
    rm_disagreement: float | None = Field(
        None, description="Win rate under the optimised RM minus under the held-out judge "
                          "(the reward ensemble's disagreement on this candidate); None "
                          "without a judge.")


class DeployStatus(BaseModel):
    live: str | None = Field(description="The policy the registry says is live.")
    live_since: datetime | None = Field(description="When it became live.")
    versions: list[VersionState] = Field(description="Every policy version, oldest first.")
    history: list[LiveRecord] = Field(description="Every change of the live policy.")
    replicas: list[ReplicaVersion] | None = Field(
        description="Each serving replica's last reported version; None if unknown.")
    rollout: RolloutReport | None = Field(
        None, description="The rollout in progress or the last one (controller only).")


def gate_status(gates: dict[str, Any]) -> str:
    """One word for a version's gates.json: a later bad mark beats the gate verdict."""
    for mark in ("swap_failed", "rolled_back"):
        if mark in gates:
            return mark
    return gates.get("status", "not evaluated")


def read_status(registry: Registry, replicas: list[ReplicaVersion] | None = None,
                rollout: RolloutReport | None = None) -> DeployStatus:
    """Live version, every policy with its gate status, the history, the replicas."""
    live, history = registry.live(), registry.history()
    ever_live = {r.version for r in history}
    versions = [VersionState(
        version=m.version, parent=m.parent, created_at=m.created_at,
        state="live" if live and m.version == live.version
        else "retired" if m.version in ever_live else "candidate",
        gates=gate_status(m.gates), reasons=m.gates.get("reasons", []),
        rm_disagreement=m.gates.get("gates", {}).get("overoptimisation", {}).get(
            "detail", {}).get("disagreement"))
        for m in registry.list("policy")]
    return DeployStatus(live=live.version if live else None,
                        live_since=live.changed_at if live else None,
                        versions=versions, history=history, replicas=replicas,
                        rollout=rollout)
