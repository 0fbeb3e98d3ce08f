"""The reward-model quality gate: a new RM replaces the one PPO optimises only if it ranks
comparisons neither model trained on at least as well, within the interval.

The comparison set is the gold slice of the rankings (``gold_share``, by a hash of the
prompt: no reward model ever trains on it), up to the new RM's data mark, so it includes
the newest rankings in the slice. Both RMs score every response; per ranked prompt the
pairwise accuracy (strictly ordered pairs, ties in score count half) of new minus current
is one paired unit, and a Student-t interval over prompts decides: the new RM is
*refused* when the whole interval lies below 0 (shown worse), else accepted. A refused RM
stays in the registry with the verdict in its gates.json; PPO and the promotion gates keep
using the accepted one (``training.lineage.accepted_reward``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from core.registry import Manifest, Registry
from core.stats import t_interval
from training.datasets import GOLD_SALT, in_slice
from training.lineage import accepted_reward

log = logging.getLogger(__name__)

MIN_GROUPS = 5
"""Fewer unseen ranked prompts than this: too little to compare, the new RM is accepted."""


def pair_accuracy(scores: Sequence[float], ranks: Sequence[int]) -> float | None:
    """Share of strictly ranked pairs (rank 1 best) the scores order the same way; equal
    scores count half. None when the ranking has no strict pair."""
    hits, pairs = 0.0, 0
    for i in range(len(ranks)):
        for j in range(len(ranks)):
            if ranks[i] < ranks[j]:
                pairs += 1
                hits += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return hits / pairs if pairs else None


def compare(new_scores: Sequence[Sequence[float]], current_scores: Sequence[Sequence[float]],
            ranks: Sequence[Sequence[int]], confidence: float) -> dict[str, Any]:
    """The paired comparison of two RMs' scores of the same ranked groups."""
    diffs, acc_new, acc_cur = [], [], []
    for n, c, r in zip(new_scores, current_scores, ranks, strict=True):
        a, b = pair_accuracy(n, r), pair_accuracy(c, r)
        if a is None or b is None:
            continue
        acc_new.append(a)
        acc_cur.append(b)
        diffs.append(a - b)
    if len(diffs) < MIN_GROUPS:
        return {"status": "accepted", "groups": len(diffs),
                "reason": f"only {len(diffs)} unseen ranked prompts (gold slice); "
                          f"{MIN_GROUPS} needed to compare, so accepted unchecked"}
    mean, lower, upper = t_interval(diffs, confidence)
    refused = upper < 0
    verdict = "refused: shown worse" if refused else "accepted: not shown worse"
    return {"status": "refused" if refused else "accepted", "groups": len(diffs),
            "accuracy": fmean(acc_new), "current_accuracy": fmean(acc_cur),
            "difference": mean, "lower": lower, "upper": upper, "confidence": confidence,
            "reason": f"{verdict}; pairwise accuracy {fmean(acc_new):.1%} vs current "
                      f"{fmean(acc_cur):.1%} on {len(diffs)} unseen ranked prompts, "
                      f"difference {mean:+.1%}, {confidence:.0%} interval "
                      f"[{lower:+.1%}, {upper:+.1%}]"}


def evaluate(registry: Registry, store, candidate: str, *, confidence: float = 0.9,
             device: str = "cpu", batch_size: int = 32) -> dict[str, Any]:
    """The verdict on reward version ``candidate`` against the accepted RM before it."""
    from training.reward_model import RewardScorer

    started = time.perf_counter()
    m = registry.get(candidate)
    if m.config.get("role", "optimised") == "judge":
        return {"status": "accepted", "reason": "a judge RM is not optimised by PPO"}
    current = accepted_reward(registry, before=candidate)
    if current is None:
        return {"status": "accepted", "reason": "the first reward model"}
    share = float(m.config.get("gold_share", 0.0))
    rows = [g for g in store.preference_groups(until=m.data_mark)
            if in_slice(g.prompt, share, GOLD_SALT)]
    verdict: dict[str, Any]
    if not rows:
        verdict = {"status": "accepted", "groups": 0,
                   "reason": f"no gold rankings (gold_share {share}) to compare with "
                             f"{current.version}, so accepted unchecked"}
    else:
        scores: dict[str, list[list[float]]] = {}
        for version in (candidate, current.version):
            scorer = RewardScorer.from_registry(registry, version, device=device,
                                                batch_size=batch_size)
            flat = scorer.score([(g.prompt, r) for g in rows for r in g.responses])
            scores[version], at = [], 0
            for g in rows:
                scores[version].append(flat[at:at + len(g.responses)])
                at += len(g.responses)
            del scorer
        verdict = compare(scores[candidate], scores[current.version], [g.ranks for g in rows],
                          confidence)
        newest = sum(g.seq > (current.data_mark or 0) for g in rows)
        verdict |= {"newer_than_current": newest}
    return {**verdict, "against": current.version, "seconds": time.perf_counter() - started}


def gate(registry: Registry, store, candidate: Manifest, **kw) -> dict[str, Any]:
    """:func:`evaluate` and record the verdict as the reward version's gates.json."""
    verdict = evaluate(registry, store, candidate.version, **kw)
    registry.update_gates(candidate.version, {"kind": "reward_quality", **verdict})
    (log.warning if verdict["status"] == "refused" else log.info)(
        "reward gate: %s %s", candidate.version, verdict["reason"])
    return verdict
