"""Agreement between labelers: pure functions of rankings, no I/O.

A *ranking* is a list of ranks, one per answer of an item in a fixed (canonical) answer
order; rank 1 is best and equal ranks are ties. A comparison is the ranking of two answers
(``a`` better → ``[1, 2]``, tie → ``[1, 1]``).

* :func:`pairwise_agreement` — InstructGPT's inter-labeler agreement: of the K(K−1)/2
  pairs of answers, the share that two labelers ordered the same way (both ``i`` above
  ``j``, both ``j`` above ``i``, or both tied).
* :func:`krippendorff_alpha_ordinal` — Krippendorff's α with the ordinal metric; the
  units are (item, answer) and the values the ranks each labeler gave. 1 = perfect
  agreement, 0 = agreement at chance, < 0 = systematic disagreement.
* :func:`borda_consensus` — the consensus ranking of one item by the Borda count: an answer
  scores one point for every answer a labeler put strictly below it and half a point for
  every answer tied with it; answers are ranked by total points (equal totals tie).
* :func:`agreement_report` — all of the above for a queue, per labeler, with a flag on a
  labeler far below the median.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from statistics import fmean, median
from typing import Any

Ranks = Sequence[int]
ItemRankings = Mapping[str, Ranks]
"""One item's rankings: labeler → ranks (canonical answer order)."""


def _order(ranks: Ranks, i: int, j: int) -> int:
    """-1 if answer i is above j, 1 if below, 0 if tied."""
    return (ranks[i] > ranks[j]) - (ranks[i] < ranks[j])


def pairwise_agreement(a: Ranks, b: Ranks) -> float:
    """Share of answer pairs that rankings ``a`` and ``b`` order the same way (ties too)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two rankings of the same K >= 2 answers, got {len(a)} "
                         f"and {len(b)}")
    pairs = list(combinations(range(len(a)), 2))
    same = sum(_order(a, i, j) == _order(b, i, j) for i, j in pairs)
    return same / len(pairs)


def borda_scores(rankings: Sequence[Ranks]) -> list[float]:
    """Each answer's Borda points over ``rankings``: 1 per answer below it, ½ per tie."""
    k = len(rankings[0])
    scores = [0.0] * k
    for ranks in rankings:
        for i in range(k):
            scores[i] += sum(1.0 if ranks[j] > ranks[i] else 0.5 if ranks[j] == ranks[i]
                             else 0.0 for j in range(k) if j != i)
    return scores


def borda_consensus(rankings: Sequence[Ranks]) -> list[int]:
    """The consensus ranks (1 = best, dense: equal points share a rank, the next is +1)."""
    if not rankings:
        raise ValueError("no rankings to combine")
    scores = borda_scores(rankings)
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) + 1 for s in scores]


def krippendorff_alpha_ordinal(units: Sequence[Sequence[float | None]]) -> float | None:
    """Krippendorff's α, ordinal metric, over ``units`` (each: the values its coders gave,
    None for a coder who gave none). Units with fewer than two values are not pairable and
    are dropped. None when nothing is pairable or all values are equal (α undefined).

    Computed from the coincidence matrix: o_ck = Σ_u (pairs (c, k) in u) / (m_u − 1),
    n_c = Σ_k o_ck, δ²(c, k) = (Σ_{g=c..k} n_g − (n_c + n_k) / 2)², and
    α = 1 − (n − 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck.
    """
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    if not pairable:
        return None
    values = sorted({v for u in pairable for v in u})
    index = {v: i for i, v in enumerate(values)}
    size = len(values)
    o = [[0.0] * size for _ in range(size)]
    for u in pairable:
        m = len(u)
        for x in range(m):
            for y in range(m):
                if x != y:
                    o[index[u[x]]][index[u[y]]] += 1.0 / (m - 1)
    n_c = [sum(row) for row in o]
    n = sum(n_c)

    def delta2(c: int, k: int) -> float:
        lo, hi = min(c, k), max(c, k)
        return (sum(n_c[lo:hi + 1]) - (n_c[c] + n_c[k]) / 2) ** 2

    observed = sum(o[c][k] * delta2(c, k) for c in range(size) for k in range(size))
    expected = sum(n_c[c] * n_c[k] * delta2(c, k) for c in range(size) for k in range(size))
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def ranking_units(items: Mapping[str, ItemRankings]) -> list[list[float | None]]:
    """Krippendorff units from items: one unit per (item, answer), one value per labeler."""
    labelers = sorted({who for rankings in items.values() for who in rankings})
    units: list[list[float | None]] = []
    for rankings in items.values():
        k = len(next(iter(rankings.values()))) if rankings else 0
        for answer in range(k):
            units.append([float(rankings[w][answer]) if w in rankings else None
                          for w in labelers])
    return units


@dataclass
class LabelerAgreement:
    """How often one labeler agrees with the others on the items they shared."""

    labeler: str
    items: int = 0
    agreement: float | None = None
    flagged: bool = False


@dataclass
class AgreementReport:
    """A queue's agreement: overall, per labeler, and the consensus of each item."""

    items_with_overlap: int
    pairwise_agreement: float | None
    krippendorff_alpha: float | None
    labelers: list[LabelerAgreement] = field(default_factory=list)
    consensus: dict[str, list[int]] = field(default_factory=dict)
    consensus_method: str = "borda"

    def as_dict(self) -> dict[str, Any]:
        return {"items_with_overlap": self.items_with_overlap,
                "pairwise_agreement": self.pairwise_agreement,
                "krippendorff_alpha": self.krippendorff_alpha,
                "consensus_method": self.consensus_method,
                "labelers": [vars(x) for x in self.labelers],
                "consensus": self.consensus}


def agreement_report(items: Mapping[str, ItemRankings], *, flag_margin: float = 0.15,
                     flag_min_items: int = 3) -> AgreementReport:
    """Agreement of a queue from each item's rankings (labeler → ranks).

    The queue's pairwise agreement is the mean over every pair of labelers on every item
    both ranked; a labeler's is the mean over the pairs they are in. A labeler with at
    least ``flag_min_items`` shared items whose agreement is more than ``flag_margin``
    below the median labeler's is flagged (with three or more labelers: with two, both
    disagree with each other equally and neither stands out).
    """
    pair_scores: list[float] = []
    per_labeler: dict[str, list[float]] = defaultdict(list)
    per_labeler_items: dict[str, int] = defaultdict(int)
    overlapping = 0
    for rankings in items.values():
        if len(rankings) < 2:
            continue
        overlapping += 1
        for who in rankings:
            per_labeler_items[who] += 1
        for (x, rx), (y, ry) in combinations(sorted(rankings.items()), 2):
            score = pairwise_agreement(rx, ry)
            pair_scores.append(score)
            per_labeler[x].append(score)
            per_labeler[y].append(score)
    everyone = sorted({who for rankings in items.values() for who in rankings})
    labelers = [LabelerAgreement(labeler=w, items=per_labeler_items.get(w, 0),
                                 agreement=fmean(per_labeler[w]) if per_labeler[w] else None)
                for w in everyone]
    scored = [entry.agreement for entry in labelers if entry.agreement is not None]
    if len(scored) >= 3:
        mid = median(scored)
        for entry in labelers:
            entry.flagged = (entry.agreement is not None and entry.items >= flag_min_items
                             and entry.agreement < mid - flag_margin)
    consensus = {item: borda_consensus(list(r.values())) for item, r in items.items() if r}
    return AgreementReport(
        items_with_overlap=overlapping,
        pairwise_agreement=fmean(pair_scores) if pair_scores else None,
        krippendorff_alpha=krippendorff_alpha_ordinal(ranking_units(
            {i: r for i, r in items.items() if len(r) >= 2})),
        labelers=labelers, consensus=consensus)
