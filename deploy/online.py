"""Online evaluation of a canary: compare it with the live version on live signals.

During the canary window both versions serve real traffic. Every ``interval_s`` the
controller gathers, since the canary started, for each version:

* requests, errors and latency, summed over the replicas' ``/metrics``
  (``rlhf:version_requests_total``, ``rlhf:version_request_latency_seconds``) as the
  difference from a baseline scrape taken when the canary started;
* user ratings and answer lengths (completion tokens), joined to versions through the
  feedback store (read-only): ratings by the ``policy_version`` of the completion they
  rate, lengths from the logged completions.

Each signal becomes the difference canary − live with a normal-approximation interval
at ``confidence`` (Agresti–Caffo for error rates, Welch for means; latency variance is
estimated from the histogram buckets). The :class:`OnlinePolicy` (YAML) turns the
intervals into one decision: ``rollback`` when any signal is worse beyond its threshold
with confidence, ``forward`` when every required signal has enough data and is within
its threshold with confidence, else ``hold``; at the end of the window, ``on_timeout``.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Action = Literal["forward", "hold", "rollback"]
Signal = Literal["error_rate", "latency_s", "rating", "length"]


class SignalRule(BaseModel):
    """One signal's threshold: how much worse than live the canary may be."""

    model_config = ConfigDict(extra="forbid")

    max_worse: float = Field(
        description="Largest tolerated degradation, in the signal's unit (error share, "
                    "seconds, rating points, relative length change).")
    min_samples: int = Field(
        20, ge=1, description="Samples per version before the signal counts.")
    required: bool = Field(
        True, description="Must be within max_worse (with confidence) to roll forward; "
                          "an optional signal can still cause a rollback.")


def _rules() -> dict[Signal, SignalRule]:
    return {"error_rate": SignalRule(max_worse=0.02, min_samples=50),
            "latency_s": SignalRule(max_worse=0.5, min_samples=50, required=False),
            "rating": SignalRule(max_worse=0.25, min_samples=20),
            "length": SignalRule(max_worse=0.5, min_samples=20, required=False)}


class OnlinePolicy(BaseModel):
    """The canary policy (``RLHF_ROLLOUT__POLICY_FILE``, YAML); see docs/rollout.md."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = Field(600.0, gt=0, description="Longest canary window.")
    interval_s: float = Field(10.0, gt=0, description="Seconds between evaluations.")
    confidence: float = Field(0.9, gt=0, lt=1, description="Coverage of every interval.")
    on_timeout: Literal["rollback", "forward"] = Field(
        "rollback", description="Decision when the window ends still undecided.")
    signals: dict[Signal, SignalRule] = Field(
        default_factory=_rules, description="Signals to compare and their thresholds; "
                                            "leave one out to ignore it.")
    regression_margin: float = Field(
        0.25, ge=0, description="After a full rollout: roll back when the new version's "
                                "mean rating is below the previous version's by more "
                                "than this, with confidence.")
    regression_min_ratings: int = Field(
        20, ge=1, description="Ratings of each version before the regression check counts.")

    @classmethod
    def load(cls, path: Path | None) -> OnlinePolicy:
        """The policy in ``path`` (YAML mapping), or the defaults when None."""
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)


class Samples(BaseModel):
    """One version's raw signals over the window."""

    requests: int = Field(0, description="Generation requests answered.")
    errors: int = Field(0, description="Of those, failed ones.")
    latency_sum: float = Field(0.0, description="Sum of successful request latencies (s).")
    latency_buckets: dict[float, float] = Field(
        default_factory=dict, description="Cumulative latency histogram (le → count).")
    ratings: list[float] = Field(default_factory=list, description="User rating scores.")
    lengths: list[int] = Field(default_factory=list, description="Completion tokens.")


class SignalResult(BaseModel):
    """canary − live for one signal, oriented so that positive means worse."""

    signal: str = Field(description="error_rate, latency_s, rating or length.")
    canary: float | None = Field(description="The canary's value (mean or share).")
    live: float | None = Field(description="The live version's value.")
    worse: float | None = Field(description="Degradation estimate (positive = worse).")
    low: float | None = Field(description="Lower end of the degradation interval.")
    high: float | None = Field(description="Upper end of the degradation interval.")
    n_canary: int = Field(description="Samples of the canary.")
    n_live: int = Field(description="Samples of the live version.")
    verdict: Literal["worse", "ok", "unsure", "insufficient"] = Field(
        description="worse: low > max_worse; ok: high <= max_worse; else unsure.")


class Decision(BaseModel):
    """One evaluation of the canary and what it means."""

    action: Action = Field(description="forward, hold or rollback.")
    reason: str = Field(description="Why, in one line.")
    canary: str = Field(description="The candidate version.")
    live: str = Field(description="The version it is compared with.")
    signals: list[SignalResult] = Field(description="Every signal's numbers.")
    at: datetime = Field(description="When it was decided.")
    elapsed_s: float = Field(description="Seconds into the canary window.")


# -- statistics --------------------------------------------------------------------------

def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def proportion_diff(x1: int, n1: int, x2: int, n2: int, confidence: float
                    ) -> tuple[float, float, float]:
    """p1 − p2 with an Agresti–Caffo interval (one success and failure added to each)."""
    p1, p2 = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
    se = math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2))
    d = p1 - p2
    return d, d - _z(confidence) * se, d + _z(confidence) * se


def mean_diff(m1: float, v1: float, n1: int, m2: float, v2: float, n2: int,
              confidence: float) -> tuple[float, float, float]:
    """m1 − m2 with a Welch normal interval from the sample variances."""
    se = math.sqrt(v1 / n1 + v2 / n2)
    d = m1 - m2
    return d, d - _z(confidence) * se, d + _z(confidence) * se


def _mean_var(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    v = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return m, v


def histogram_mean_var(buckets: dict[float, float], total: float, count: float
                       ) -> tuple[float, float]:
    """Mean (exact, from the sum) and variance (bucket midpoints) of a histogram."""
    mean = total / count
    var, prev_le, prev_n = 0.0, 0.0, 0.0
    for le in sorted(buckets):
        n = buckets[le] - prev_n
        mid = prev_le * 2 if math.isinf(le) else (prev_le + le) / 2
        var += n * (mid - mean) ** 2
        if not math.isinf(le):
            prev_le = le
        prev_n = buckets[le]
    return mean, var / max(count - 1, 1)


# -- the decision ------------------------------------------------------------------------

def compare(signal: str, canary: Samples, live: Samples, rule: SignalRule,
            confidence: float) -> SignalResult:
    """One signal's degradation interval and verdict."""
    def result(nc: int, nl: int, c: float | None = None, lv: float | None = None,
               d: tuple[float, float, float] | None = None) -> SignalResult:
        if d is None or min(nc, nl) < rule.min_samples:
            return SignalResult(signal=signal, canary=c, live=lv, worse=d[0] if d else None,
                                low=d[1] if d else None, high=d[2] if d else None,
                                n_canary=nc, n_live=nl, verdict="insufficient")
        verdict = ("worse" if d[1] > rule.max_worse else
                   "ok" if d[2] <= rule.max_worse else "unsure")
        return SignalResult(signal=signal, canary=c, live=lv, worse=d[0], low=d[1],
                            high=d[2], n_canary=nc, n_live=nl, verdict=verdict)

    if signal == "error_rate":
        nc, nl = canary.requests, live.requests
        if not nc or not nl:
            return result(nc, nl)
        return result(nc, nl, canary.errors / nc, live.errors / nl,
                      proportion_diff(canary.errors, nc, live.errors, nl, confidence))
    if signal == "latency_s":
        nc, nl = canary.requests - canary.errors, live.requests - live.errors
        if nc < 2 or nl < 2 or not canary.latency_buckets or not live.latency_buckets:
            return result(max(nc, 0), max(nl, 0))
        mc, vc = histogram_mean_var(canary.latency_buckets, canary.latency_sum, nc)
        ml, vl = histogram_mean_var(live.latency_buckets, live.latency_sum, nl)
        return result(nc, nl, mc, ml, mean_diff(mc, vc, nc, ml, vl, nl, confidence))
    if signal == "rating":  # higher is better: degradation is live − canary
        nc, nl = len(canary.ratings), len(live.ratings)
        if nc < 2 or nl < 2:
            return result(nc, nl)
        mc, vc = _mean_var(canary.ratings)
        ml, vl = _mean_var(live.ratings)
        return result(nc, nl, mc, ml, mean_diff(ml, vl, nl, mc, vc, nc, confidence))
    if signal == "length":  # |relative change| in either direction is worse
        nc, nl = len(canary.lengths), len(live.lengths)
        if nc < 2 or nl < 2:
            return result(nc, nl)
        mc, vc = _mean_var([float(x) for x in canary.lengths])
        ml, vl = _mean_var([float(x) for x in live.lengths])
        if ml <= 0:
            return result(nc, nl, mc, ml)
        d, lo, hi = mean_diff(mc, vc, nc, ml, vl, nl, confidence)
        rel = sorted((abs(lo) / ml, abs(hi) / ml))
        low = 0.0 if lo <= 0 <= hi else rel[0]
        return result(nc, nl, mc, ml, (abs(d) / ml, low, rel[1]))
    raise ValueError(f"unknown signal {signal}")


def decide(policy: OnlinePolicy, canary_version: str, live_version: str,
           canary: Samples, live: Samples, elapsed_s: float, now: datetime) -> Decision:
    """rollback if any signal is worse; forward if every required one is ok; else hold."""
    results = [compare(name, canary, live, rule, policy.confidence)
               for name, rule in policy.signals.items()]
    worse = [r for r in results if r.verdict == "worse"]
    pending = [r for r in results
               if policy.signals[r.signal].required and r.verdict != "ok"]  # type: ignore[index]
    if worse:
        action: Action = "rollback"
        reason = "; ".join(f"{r.signal} worse by {r.worse:.4g} (interval {r.low:.4g}.."
                           f"{r.high:.4g}, limit {policy.signals[r.signal].max_worse})"  # type: ignore[index]
                           for r in worse)
    elif not pending:
        action, reason = "forward", "every required signal within its limit"
    elif elapsed_s >= policy.window_s:
        action = policy.on_timeout
        reason = (f"window of {policy.window_s:g}s over, undecided: "
                  + ", ".join(f"{r.signal} {r.verdict}" for r in pending))
    else:
        action = "hold"
        reason = "waiting for " + ", ".join(f"{r.signal} ({r.verdict}, "
                                            f"{min(r.n_canary, r.n_live)} samples)"
                                            for r in pending)
    return Decision(action=action, reason=reason, canary=canary_version, live=live_version,
                    signals=results, at=now, elapsed_s=elapsed_s)


def regression(policy: OnlinePolicy, new: str, previous: str, new_ratings: list[float],
               previous_ratings: list[float]) -> SignalResult:
    """Whether the new live version is rated below the previous one by the margin."""
    rule = SignalRule(max_worse=policy.regression_margin,
                      min_samples=policy.regression_min_ratings)
    return compare("rating", Samples(ratings=new_ratings), Samples(ratings=previous_ratings),
                   rule, policy.confidence)


# -- gathering ---------------------------------------------------------------------------

_SAMPLE = re.compile(r'^(?P<name>[\w:]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class MetricTotals:
    """Per-version counters summed over scraped replicas (Prometheus text format)."""

    requests: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    latency_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[str, dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    def add_text(self, text: str) -> None:
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if not m:
                continue
            name, labels = m["name"], dict(_LABEL.findall(m["labels"]))
            version, value = labels.get("version"), float(m["value"])
            if version is None:
                continue
            if name == "rlhf:version_requests_total":
                self.requests[version][labels.get("outcome", "")] += value
            elif name == "rlhf:version_request_latency_seconds_sum":
                self.latency_sum[version] += value
            elif name == "rlhf:version_request_latency_seconds_bucket":
                self.buckets[version][float(labels["le"])] += value

    def minus(self, base: MetricTotals, version: str) -> Samples:
        """This scrape minus ``base`` for one version (counters never go below zero)."""
        req, old = self.requests.get(version, {}), base.requests.get(version, {})
        total = sum(max(req.get(k, 0) - old.get(k, 0), 0) for k in req)
        errors = max(req.get("error", 0) - old.get("error", 0), 0)
        buckets = {le: max(n - base.buckets.get(version, {}).get(le, 0), 0)
                   for le, n in self.buckets.get(version, {}).items()}
        return Samples(requests=int(total), errors=int(errors),
                       latency_sum=max(self.latency_sum.get(version, 0)
                                       - base.latency_sum.get(version, 0), 0),
                       latency_buckets=buckets)


def scrape(urls: list[str], timeout_s: float = 5.0) -> MetricTotals:
    """Sum every replica's per-version counters; unreachable replicas are skipped."""
    import httpx

    totals = MetricTotals()
    for url in urls:
        try:
            r = httpx.get(url.rstrip("/") + "/metrics", timeout=timeout_s)
            if r.status_code == 200:
                totals.add_text(r.text)
        except httpx.HTTPError:
            continue
    return totals


def feedback_samples(store: Any, versions: list[str], since: datetime | None
                     ) -> dict[str, Samples]:
    """Ratings and completion lengths per version from the feedback store (read-only)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from feedback.store.models import CompletionTable, FeedbackTable, RatingTable

    out = {v: Samples() for v in versions}
    with Session(store.engine) as s:
        q = (select(FeedbackTable.policy_version, RatingTable.score)
             .join(RatingTable, RatingTable.seq == FeedbackTable.seq)
             .where(FeedbackTable.policy_version.in_(versions)))
        if since is not None:
            q = q.where(FeedbackTable.created_at >= since)
        for version, score in s.execute(q):
            out[str(version)].ratings.append(float(score))
        q2 = (select(CompletionTable.policy_version, CompletionTable.completion_tokens)
              .where(CompletionTable.policy_version.in_(versions)))
        if since is not None:
            q2 = q2.where(CompletionTable.created_at >= since)
        for version, tokens in s.execute(q2):
            out[version].lengths.append(int(tokens))
    return out


def merged(metrics: Samples, feedback: Samples) -> Samples:
    """A version's request counters with its store signals."""
    return metrics.model_copy(update={"ratings": feedback.ratings,
                                      "lengths": feedback.lengths})
