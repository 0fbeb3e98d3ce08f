"""Human win rate of a candidate policy against the live one, and the deploy gate on it.

Each judgment of a candidate-vs-live item is a win (the candidate's answer preferred), a
loss, or a tie ("tie" and "both bad" alike count half). The win rate is
``(wins + ties / 2) / n`` with a Wilson score interval at ``confidence``; the gate passes
only when at least ``min_items`` judgments exist and the interval's LOWER bound is at
least ``min_lower_bound``. Everything here is pure; ``labeling.human_eval`` reads the
judgments from the store and applies the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from labeling.settings import HumanEvalSettings

Outcome = Literal["win", "loss", "tie"]


@dataclass(frozen=True)
class WinRate:
    """Wins, losses and ties of the candidate, with the win rate and its Wilson interval."""

    wins: int
    losses: int
    ties: int
    rate: float | None
    lower: float | None
    upper: float | None
    confidence: float

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; ``successes`` may be fractional (ties ½)."""
    if n <= 0:
        raise ValueError("n must be positive")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(outcomes: list[Outcome], confidence: float = 0.95) -> WinRate:
    """The candidate's win rate over ``outcomes`` (ties half) with its Wilson interval."""
    wins, losses = outcomes.count("win"), outcomes.count("loss")
    ties = outcomes.count("tie")
    n = wins + losses + ties
    if n == 0:
        return WinRate(0, 0, 0, None, None, None, confidence)
    lo, hi = wilson_interval(wins + 0.5 * ties, n, confidence)
    return WinRate(wins, losses, ties, (wins + 0.5 * ties) / n, lo, hi, confidence)


@dataclass(frozen=True)
class HumanEvalVerdict:
    """The gate's verdict, shaped like deploy's GateResult (value, threshold, passed …)."""

    value: float
    threshold: float
    passed: bool
    reason: str
    detail: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "threshold": self.threshold, "passed": self.passed,
                "reason": self.reason, "detail": dict(self.detail)}


def check_human_win_rate(result: WinRate, settings: HumanEvalSettings) -> HumanEvalVerdict:
    """Pass iff n ≥ min_items and the Wilson lower bound ≥ min_lower_bound."""
    detail = {"wins": float(result.wins), "losses": float(result.losses),
              "ties": float(result.ties), "n": float(result.n)}
    if result.rate is not None and result.upper is not None:
        detail.update(rate=result.rate, upper=result.upper)
    if result.n < settings.min_items or result.lower is None:
        return HumanEvalVerdict(
            value=result.lower or 0.0, threshold=settings.min_lower_bound, passed=False,
            reason=f"only {result.n} human judgments of the candidate against the live "
                   f"policy; at least {settings.min_items} needed", detail=detail)
    passed = result.lower >= settings.min_lower_bound
    return HumanEvalVerdict(
        value=result.lower, threshold=settings.min_lower_bound, passed=passed,
        reason=f"human win rate {result.rate:.1%} ({result.wins} wins, {result.ties} ties, "
               f"{result.losses} losses), {result.confidence:.0%} Wilson lower bound "
               f"{result.lower:.1%} {'≥' if passed else '<'} {settings.min_lower_bound:.1%}",
        detail=detail)
