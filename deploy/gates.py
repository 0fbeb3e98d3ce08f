"""Promotion gates: is the candidate policy better than the live one, and safe to serve?

Both policies answer the same held-out prompts (the newest distinct prompts of real
traffic, topped up from a packaged list) with the same seed; the reward model scores
every answer. Four gates, each a pure function of those numbers with its threshold from
:class:`training.settings.GateSettings`:

* ``reward_improvement``: mean r(x, y_cand) − mean r(x, y_live) ≥ min_reward_improvement.
* ``kl``: KL(π_cand ‖ π_ref) ≈ mean over candidate samples of Σ_t log π_cand − log π_ref
  ≤ max_kl. The reference is the SFT policy PPO was anchored to (InstructGPT's β-term).
* ``length_drift``: |mean len(y_cand) / mean len(y_live) − 1| ≤ max_length_drift. Longer
  answers that the reward model likes are a classic reward hack.
* ``win_rate``: share of prompts where r(x, y_cand) > r(x, y_live), ties half, ≥ min_win_rate.

The report goes into the candidate's ``gates.json`` (``Registry.update_gates``); a
candidate that fails stays a candidate, and the report says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from statistics import fmean
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from core.registry import Manifest, Registry, RegistryError
from deploy.errors import GateError
from deploy.settings import GateSettings

log = logging.getLogger(__name__)

FALLBACK_PROMPTS = (
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "Give three tips for learning a new language.",
    "What is the difference between weather and climate?",
    "Summarise the plot of a fairy tale in two sentences.",
    "How do I make a cup of tea?",
    "Describe a good morning routine.",
    "Why do cats sleep so much?",
    "Suggest a name for a small bakery.",
    "What should I pack for a weekend hike?",
    "Explain what a reward model is to a child.",
    "Write a polite email declining a meeting.",
    "List some healthy breakfast ideas.",
    "How does a bicycle stay upright?",
    "Tell me a fun fact about octopuses.",
    "What makes a good friend?",
)
"""Used when recent traffic has fewer distinct prompts than ``num_prompts`` (a new install)."""

TIE_TOLERANCE = 1e-6
"""Reward differences this small are ties (identical answers, float noise of batching)."""


class GateResult(BaseModel):
    """One gate's verdict."""

    value: float = Field(description="The measured quantity.")
    threshold: float = Field(description="The setting it was compared with.")
    passed: bool = Field(description="Whether the value is on the right side of threshold.")
    reason: str = Field(description="The comparison in words, numbers included.")
    detail: dict[str, float] = Field(default_factory=dict, description="Inputs of the value.")


class GateReport(BaseModel):
    """Everything one gate evaluation found; stored as the candidate's gates.json."""

    version: str = Field(description="The candidate policy version.")
    status: Literal["passed", "failed"] = Field(description="passed = every gate passed.")
    failed: list[str] = Field(description="Names of the gates that failed.")
    reasons: list[str] = Field(description="Why each failed gate failed.")
    gates: dict[str, GateResult] = Field(description="Each gate's result, by name.")
    against: str = Field(description="The live policy the candidate was compared with.")
    reference: str = Field(description="The policy the KL was measured against.")
    reward_model: str = Field(description="The reward version that judged.")
    prompts: dict[str, int] = Field(description="Held-out prompts: total, traffic, fallback.")
    settings: dict[str, Any] = Field(description="The gate settings used.")
    seconds: float = Field(description="Wall time of the evaluation.")
    evaluated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


# -- the four gates: pure functions of the measurements ----------------------------------

def reward_improvement_gate(cand: Sequence[float], live: Sequence[float],
                            threshold: float) -> GateResult:
    """mean(cand) − mean(live) ≥ threshold (rewards of the same prompts, in order)."""
    c, l_ = fmean(cand), fmean(live)
    value = c - l_
    passed = value >= threshold
    return GateResult(
        value=value, threshold=threshold, passed=passed,
        reason=f"mean reward {c:.4f} vs live {l_:.4f}: improvement {value:+.4f} "
               f"{'≥' if passed else '<'} {threshold}",
        detail={"candidate_mean": c, "live_mean": l_})


def kl_gate(cand_logprobs: Sequence[float], ref_logprobs: Sequence[float],
            budget: float) -> GateResult:
    """Monte-Carlo KL(π_cand‖π_ref) = E_{y~π_cand}[log π_cand(y|x) − log π_ref(y|x)] ≤ budget.

    ``*_logprobs`` are per-answer sums over tokens of the candidate's own samples, so the
    value is in nats per answer; single samples can be negative, the mean rarely is.
    """
    value = fmean(c - r for c, r in zip(cand_logprobs, ref_logprobs, strict=True))
    passed = value <= budget
    return GateResult(
        value=value, threshold=budget, passed=passed,
        reason=f"KL to reference {value:.4f} nats/answer {'≤' if passed else '>'} {budget}",
        detail={"candidate_logprob_mean": fmean(cand_logprobs),
                "reference_logprob_mean": fmean(ref_logprobs)})


def length_drift_gate(cand_lengths: Sequence[int], live_lengths: Sequence[int],
                      bound: float) -> GateResult:
    """|mean(cand) / mean(live) − 1| ≤ bound; lengths in tokens."""
    c, l_ = fmean(cand_lengths), fmean(live_lengths)
    value = abs(c / max(l_, 1.0) - 1.0)
    passed = value <= bound
    return GateResult(
        value=value, threshold=bound, passed=passed,
        reason=f"mean length {c:.1f} vs live {l_:.1f} tokens: drift {value:.1%} "
               f"{'≤' if passed else '>'} {bound:.1%}",
        detail={"candidate_mean_tokens": c, "live_mean_tokens": l_})


def win_rate_gate(cand: Sequence[float], live: Sequence[float], threshold: float) -> GateResult:
    """Share of prompts where the reward model prefers the candidate (ties half) ≥ threshold."""
    wins = ties = 0
    for c, l_ in zip(cand, live, strict=True):
        if abs(c - l_) <= TIE_TOLERANCE:
            ties += 1
        elif c > l_:
            wins += 1
    n = len(cand)
    value = (wins + 0.5 * ties) / n
    passed = value >= threshold
    return GateResult(
        value=value, threshold=threshold, passed=passed,
        reason=f"win rate {value:.1%} ({wins} wins, {ties} ties, {n - wins - ties} losses "
               f"of {n}) {'≥' if passed else '<'} {threshold:.1%}",
        detail={"wins": wins, "ties": ties, "losses": n - wins - ties})


def make_report(version: str, gates: dict[str, GateResult], **context: Any) -> GateReport:
    """The report of a set of gate results: failed iff any gate failed."""
    failed = [name for name, g in gates.items() if not g.passed]
    return GateReport(version=version, status="failed" if failed else "passed",
                      failed=failed, reasons=[f"{n}: {gates[n].reason}" for n in failed],
                      gates=gates, **context)


# -- what to compare: prompts and versions ------------------------------------------------

def held_out_prompts(store, n: int) -> tuple[list[str], int]:
    """``n`` prompts, the newest traffic first, then the fallback list (repeated if short).

    Returns the prompts and how many came from traffic. ``store`` may be None; a store
    that cannot be read (no database yet) counts as no traffic, with a warning.
    """
    traffic: list[str] = []
    if store is not None:
        try:
            traffic = [p for p in store.recent_prompts(n) if p.strip()]
        except SQLAlchemyError as e:
            log.warning("gates: feedback store unreadable (%s); using fallback prompts", e)
    fallback = [FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(n - len(traffic))]
    return traffic + fallback, len(traffic)


def reward_model_for(registry: Registry, settings: GateSettings) -> str:
    """The configured reward version, else the newest one; GateError when there is none."""
    if settings.reward_model:
        if registry.get(settings.reward_model).kind != "reward":
            raise GateError(f"{settings.reward_model} is not a reward model")
        return settings.reward_model
    newest = registry.latest("reward")
    if newest is None:
        raise GateError("no reward model in the registry to judge the gates")
    return newest.version


def reference_for(manifest: Manifest, settings: GateSettings, live: str) -> str:
    """KL reference: setting, else the manifest's ``config.reference``, its parent, live."""
    return (settings.reference or manifest.config.get("reference") or manifest.parent
            or live)


def baseline_for(registry: Registry, manifest: Manifest) -> str:
    """The live policy; before any is live, the candidate's parent. GateError if neither."""
    live = registry.live_policy() or manifest.parent
    if live is None:
        raise GateError(f"{manifest.version}: no live policy and no parent to compare with; "
                        "promote it with force to bootstrap")
    return live


# -- one evaluation ------------------------------------------------------------------------

def evaluate(registry: Registry, version: str, settings: GateSettings,
             store=None) -> GateReport:
    """Run every gate for candidate ``version``; does not record anything.

    Raises RegistryError for an unknown version and GateError when gates cannot run.
    """
    from deploy.measure import measure

    manifest = registry.get(version)
    if manifest.kind != "policy":
        raise RegistryError(f"{version} is not a policy")
    live = baseline_for(registry, manifest)
    reference = reference_for(manifest, settings, live)
    reward = reward_model_for(registry, settings)
    prompts, from_traffic = held_out_prompts(store, settings.num_prompts)
    started = time.perf_counter()
    m = measure(registry, settings, prompts, candidate=version, live=live,
                reference=reference, reward_model=reward)
    gates = {
        "reward_improvement": reward_improvement_gate(
            m.cand_rewards, m.live_rewards, settings.min_reward_improvement),
        "kl": kl_gate(m.cand_logprobs, m.ref_logprobs, settings.max_kl),
        "length_drift": length_drift_gate(m.cand_lengths, m.live_lengths,
                                          settings.max_length_drift),
        "win_rate": win_rate_gate(m.cand_rewards, m.live_rewards, settings.min_win_rate),
    }
    return make_report(
        version, gates, against=live, reference=reference, reward_model=reward,
        prompts={"total": len(prompts), "traffic": from_traffic,
                 "fallback": len(prompts) - from_traffic},
        settings=settings.model_dump(), seconds=time.perf_counter() - started)


def record(registry: Registry, report: GateReport) -> Manifest:
    """Write ``report`` as the version's gates.json (replacing an earlier evaluation)."""
    return registry.update_gates(report.version, report.model_dump(mode="json"))


def evaluate_and_record(registry: Registry, version: str, settings: GateSettings,
                        store=None) -> GateReport:
    """:func:`evaluate`, then :func:`record`; the controller's one call."""
    report = evaluate(registry, version, settings, store)
    record(registry, report)
    return report
