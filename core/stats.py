"""Small statistics the gates share (no scipy in the dependency set)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist, fmean, stdev

_N = NormalDist()


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile: exact for 1 and 2 degrees of freedom, else the Cornish–Fisher
    expansion around the normal one (within 1 % at df 3, ~1e-3 from df 5); df < 1: normal."""
    z = _N.inv_cdf(p)
    if df < 1:
        return z
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def t_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(mean, lower, upper): the two-sided Student-t interval of the mean of ``values``
    (one per independent unit); a single value gives an unbounded interval."""
    mean = fmean(values)
    if len(values) < 2:
        return mean, -math.inf, math.inf
    half = t_quantile(1 - (1 - confidence) / 2, len(values) - 1) * stdev(values) / math.sqrt(
        len(values))
    return mean, mean - half, mean + half
