"""Group-sequential paired tests for the promotion gates.

The gates compare candidate and live on the same prompts with the same sampling seeds, so
each prompt gives one paired difference (mean over its samples of candidate − live). The
mean of those differences is tested against a threshold in *looks*: after each round of
prompts the gate may stop early, promoting when the lower bound clears the threshold or
refusing when it can no longer clear it, up to ``looks`` rounds (the cap).

Repeated looks at growing data would inflate the false-promotion rate if each used the
fixed-sample bound, so the one-sided error ``alpha`` is *spent* across the looks with the
Lan–DeMets O'Brien–Fleming spending function α(t) = 2(1 − Φ(z_{1−α/2} / √t)) at
information fraction t = n_j / n_max. The efficacy boundaries c_1 … c_J satisfy
P(Z_1 < c_1, …, Z_{j−1} < c_{j−1}, Z_j ≥ c_j) = α(t_j) − α(t_{j−1}) under the null, where
Z_j are the correlated look statistics of one Brownian path (corr(Z_i, Z_j) = √(t_i/t_j));
they are found by simulating that joint law (seeded, cached), which is exact up to Monte
Carlo error and needs no numerical integration library. Early looks get tiny α (a
candidate must be clearly better to stop at the first quarter), the last keeps nearly
the fixed-sample level, so power at the cap is close to a single test's.

Each look's statistic uses Student's t with n − 1 degrees of freedom (the per-prompt
spread is estimated) at the boundary's tail probability. Futility (non-binding, so it
never raises the false-promotion rate) stops when the repeated upper bound falls below the
threshold, or from half the information on when the point estimate is not above it.

Hand-written because no library in the dependency set does group-sequential designs
(scipy is not a dependency; statsmodels/gsDesign are not Python-side options here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist, fmean, stdev
from typing import Literal

from core.stats import t_quantile

_N = NormalDist()

Decision = Literal["pass", "fail", "continue"]


def obrien_fleming_spent(t: float, alpha: float) -> float:
    """Lan–DeMets O'Brien–Fleming-type α spent by information fraction ``t`` (one-sided α)."""
    if t <= 0:
        return 0.0
    if t >= 1:
        return alpha
    return 2.0 * (1.0 - _N.cdf(_N.inv_cdf(1.0 - alpha / 2.0) / math.sqrt(t)))


@lru_cache(maxsize=64)
def efficacy_bounds(fractions: tuple[float, ...], alpha: float, paths: int = 400_000,
                    seed: int = 20221231) -> tuple[float, ...]:
    """z boundaries c_j of a one-sided group-sequential test spending ``alpha`` by
    O'Brien–Fleming at the information ``fractions`` (increasing, last = 1).

    Simulated: ``paths`` Brownian paths observed at the fractions; c_j is the value such
    that the share of paths that did not cross before look j and reach ≥ c_j at look j is
    the α increment of look j. Seeded, so the same design always gets the same bounds.
    """
    import numpy as np

    if not fractions or any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
        raise ValueError(f"information fractions must increase: {fractions}")
    rng = np.random.default_rng(seed)
    steps = np.diff(np.concatenate([[0.0], np.asarray(fractions, dtype=float)]))
    w = np.cumsum(rng.standard_normal((paths, len(fractions))) * np.sqrt(steps), axis=1)
    z = w / np.sqrt(np.asarray(fractions))
    alive = np.ones(paths, dtype=bool)
    bounds: list[float] = []
    spent_before = 0.0
    for j, t in enumerate(fractions):
        spent = obrien_fleming_spent(t / fractions[-1], alpha)
        crossings = int(round((spent - spent_before) * paths))
        spent_before = spent
        candidates = np.sort(z[alive, j])[::-1]
        if crossings <= 0 or candidates.size == 0:
            c = float(max(candidates[0] + 1e-9, 8.0)) if candidates.size else 8.0
        else:
            c = float(candidates[min(crossings, candidates.size) - 1])
        bounds.append(c)
        alive &= z[:, j] < c
    return tuple(bounds)


@dataclass(frozen=True)
class Design:
    """A group-sequential plan: ``looks`` equal rounds up to the cap, one-sided ``alpha``
    (the false-promotion rate for a candidate exactly at the threshold), and the power the
    minimum detectable effect is quoted at."""

    looks: int = 4
    alpha: float = 0.05
    power: float = 0.8
    futility: bool = True

    def bounds(self) -> tuple[float, ...]:
        if self.looks == 1:
            return (_N.inv_cdf(1.0 - self.alpha),)
        return efficacy_bounds(tuple((j + 1) / self.looks for j in range(self.looks)),
                               self.alpha)


@dataclass(frozen=True)
class Look:
    """The test of one gate at one look: the numbers that go into gates.json."""

    look: int  # 1-based
    looks: int
    n: int  # paired units (prompts) so far
    mean: float
    lower: float  # repeated confidence bound at this look's boundary
    upper: float
    level: float  # one-sided tail probability of the boundary at this look
    mde: float  # smallest true effect above the threshold detected with `power` at this n
    decision: Decision


def decide(values: Sequence[float], threshold: float, design: Design, look: int) -> Look:
    """Decide at ``look`` (1-based) from the paired per-prompt ``values`` so far.

    pass: the repeated lower bound ≥ threshold and the mean above it (a copy of live, all
    ties, never passes a zero threshold); fail: the upper bound < threshold, or past half
    the information the mean is not above the threshold, or the last look did not pass.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no paired values to test")
    c = design.bounds()[look - 1]
    level = 1.0 - _N.cdf(c)
    q = t_quantile(1.0 - level, n - 1) if n > 1 else math.inf
    mean = fmean(values)
    se = stdev(values) / math.sqrt(n) if n > 1 else math.inf
    half = q * se if se > 0 else 0.0
    if math.isinf(se):
        half = math.inf
    lower, upper = mean - half, mean + half
    mde = (q + _N.inv_cdf(design.power)) * se if se > 0 and not math.isinf(se) else (
        0.0 if se == 0 else math.inf)
    decision: Decision = "continue"
    if lower >= threshold and mean > threshold:
        decision = "pass"
    elif look >= design.looks:
        decision = "fail"
    elif design.futility and (upper < threshold
                              or (look / design.looks >= 0.5 and mean <= threshold)):
        decision = "fail"
    return Look(look, design.looks, n, mean, lower, upper, level, mde, decision)
