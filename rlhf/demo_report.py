"""What the demo measures and shows: every policy version on the held-out prompts.

Each version is loaded from the registry and answers every held-out prompt (prompts the
server never saw) ``samples`` times with fixed seeds, so versions are compared on the same
prompts and sampling noise. The hidden rule scores each answer; at the end the newest
reward model scores them too. Nothing here goes through the serving API, so measuring
does not add the held-out prompts to the traffic the trainer learns from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import fmean

from core.registry import Manifest, Registry
from training.synthetic import hidden_score


@dataclass
class Measurement:
    """One version's answers to the held-out prompts and their hidden-rule scores."""

    version: str
    prompts: list[str]
    responses: list[str]
    scores: list[int]
    rm_scores: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return fmean(self.scores)


def measure(registry: Registry, version: str, prompts: list[str], *, samples: int,
            max_new_tokens: int, seed: int = 0) -> Measurement:
    """``samples`` seeded answers per held-out prompt, scored by the hidden rule."""
    from transformers.utils import logging as hf_logging

    from deploy.sampling import Policy, sample

    hf_logging.disable_progress_bar()
    policy = Policy.load(registry.path(version), version)
    asked, answers = [], []
    for i in range(samples):
        out = sample(policy, prompts, max_new_tokens=max_new_tokens, temperature=1.0,
                     seed=seed + 1000 * i, batch_size=len(prompts), max_prompt_tokens=64)
        asked += prompts
        answers += out.responses
    policy.release()
    return Measurement(version, asked, answers, [hidden_score(a) for a in answers])


def score_with_reward_model(registry: Registry, measurements: list[Measurement]) -> str | None:
    """Fill ``rm_scores`` with the accepted reward model's rewards; returns its version."""
    from training.lineage import accepted_reward
    from training.reward_model import RewardScorer

    newest = accepted_reward(registry)
    if newest is None:
        return None
    scorer = RewardScorer.from_registry(registry, newest.version)
    for m in measurements:
        m.rm_scores = scorer.score(list(zip(m.prompts, m.responses, strict=True)))
    return newest.version


def win_rate(scores: list[int], baseline: list[int]) -> float:
    """Share of (prompt, seed) pairs where ``scores`` beats ``baseline``; ties count half."""
    pairs = list(zip(scores, baseline, strict=True))
    return fmean(1.0 if s > b else 0.5 if s == b else 0.0 for s, b in pairs)


@dataclass
class Row:
    """One line of the demo's table."""

    version: str
    recipe: str
    state: str  # live, retired or candidate
    gates: str  # passed, failed, forced, rolled_back, … ("-" for the first policy)
    live_at_s: float | None  # seconds after the demo started (0 = live before it)
    data: str
    rm_accuracy: float | None
    hidden_score: float
    win_rate: float
    rm_score: float | None
    kl: float | None  # KL to the SFT (the lineage's KL reference), nats per answer
    sample: str
    gate_detail: str = "-"  # the gates' deciding numbers with their confidence intervals
    reference: str | None = None  # the KL reference (the lineage's SFT) of a PPO version
    tax: float | None = None  # alignment tax: relative capability-loss rise over the SFT
    diversity_drop: float | None = None  # relative distinct-2 drop below the SFT's answers
    rm_disagreement: float | None = None  # win rate under the optimised RM − under the judge


def data_used(registry: Registry, m: Manifest) -> str:
    """The data a version learnt from, from the manifests: store mark and row counts."""
    rows = m.row_counts
    if m.config.get("recipe") == "ppo":
        rm = registry.get(m.config["reward_model"])
        return (f"{rm.version}: {rm.row_counts.get('ranking', 0)} rankings "
                f"(mark {rm.data_mark}); {rows.get('completions', 0)} completions logged")
    if m.config.get("recipe") == "sft":
        return f"{rows.get('demonstration', 0)} demonstrations (mark {m.data_mark})"
    return "base model"


def rm_accuracy(registry: Registry, m: Manifest) -> float | None:
    """Held-out pairwise accuracy of the reward model a PPO version was trained against."""
    reward = m.config.get("reward_model")
    return registry.get(reward).metrics.get("eval_accuracy") if reward else None


def kl_of(m: Manifest) -> float | None:
    """KL to the SFT (the lineage's KL reference) in nats per answer: the gate's
    measurement, else PPO's own; None for versions that are not PPO results."""
    if m.config.get("recipe") != "ppo":
        return None
    gate = m.gates.get("gates", {}).get("kl")
    return gate["value"] if gate else m.metrics.get("kl_to_ref")


def gate_value(m: Manifest, name: str) -> float | None:
    """The measured value of one PPO gate, if the gates ran it."""
    g = m.gates.get("gates", {}).get(name)
    return g["value"] if g else None


def gate_summary(gates: dict) -> str:
    """The gates' deciding numbers in a few words, intervals included, e.g.
    ``Δr +0.41 [+0.12, +0.70], win 66% [55%, 77%]`` or ``loss 2.10 < 6.93``."""
    results = gates.get("gates", {})
    parts = []
    loss = results.get("lm_loss")
    if loss:
        d = loss.get("detail", {})
        parts.append(f"loss {d.get('candidate_loss', 0):.2f} vs {d.get('current_loss', 0):.2f}")
    for name, label in (("reward_improvement", "Δr"), ("reward_not_worse", "Δr"),
                        ("judge_reward_improvement", "judge Δr")):
        g = results.get(name)
        if g and g.get("lower") is not None:
            parts.append(f"{label} {g['value']:+.2f} [{g['lower']:+.2f}, {g['upper']:+.2f}]")
    g = results.get("win_rate")
    if g and g.get("lower") is not None:
        lc = g.get("detail", {}).get("length_controlled")
        parts.append(f"win {g['value']:.0%}" + (f" (LC {lc:.0%})" if lc is not None else "")
                     + f" [{g['lower']:.0%}, {g['upper']:.0%}]")
    if g and g.get("n") is not None:
        parts.append(f"{g['n']} prompts, look {g['look']}/{g['looks']}")
    failed = [n for n in gates.get("failed", []) if n not in ("lm_loss",)]
    if failed:
        parts.append("failed: " + ", ".join(failed))
    return ", ".join(parts) or "-"


def live_times(registry: Registry, started: datetime) -> dict[str, float]:
    """Seconds after ``started`` at which each version first became live (0 if before)."""
    out: dict[str, float] = {}
    for record in registry.history():
        out.setdefault(record.version, max(0.0, (record.changed_at - started).total_seconds()))
    return out


def build_rows(registry: Registry, measured: dict[str, Measurement], first: str,
               started: datetime) -> list[Row]:
    from deploy.controller import gate_status

    live, times = registry.live_policy(), live_times(registry, started)
    rows = []
    for m in registry.list("policy"):
        if m.version not in measured:
            continue
        got = measured[m.version]
        state = "live" if m.version == live else "retired" if m.version in times else "candidate"
        gates = gate_status(m.gates) if m.gates else "forced" if m.version in times else "-"
        rows.append(Row(
            version=m.version, recipe=m.config.get("recipe", "base"), state=state,
            gates="-" if m.version == first else gates,
            gate_detail=gate_summary(m.gates) if m.gates else "-",
            reference=(m.gates.get("reference") or m.config.get("reference"))
            if m.config.get("recipe") == "ppo" else None,
            live_at_s=times.get(m.version),
            data=data_used(registry, m), rm_accuracy=rm_accuracy(registry, m),
            hidden_score=got.mean, win_rate=win_rate(got.scores, measured[first].scores),
            rm_score=fmean(got.rm_scores) if got.rm_scores else None, kl=kl_of(m),
            sample=got.responses[0], tax=gate_value(m, "alignment_tax"),
            diversity_drop=gate_value(m, "diversity"),
            rm_disagreement=m.gates.get("gates", {}).get("overoptimisation", {}).get(
                "detail", {}).get("disagreement")))
    return rows


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def print_table(rows: list[Row], reward_version: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Policies on held-out prompts (hidden rule: count of \"good\")")
    for name in ("version", "recipe", "state", "gates (90% intervals)", "live at",
                 "data used", "RM acc", "hidden score", "win vs first",
                 f"RM score ({reward_version})", "KL to SFT", "tax", "distinct-2 drop",
                 "RM vs judge"):
        table.add_column(name)
    for r in rows:
        at = "-" if r.live_at_s is None else f"{r.live_at_s / 60:.1f} min"
        gates = r.gates if r.gate_detail == "-" else f"{r.gates}: {r.gate_detail}"
        table.add_row(r.version, r.recipe, r.state, gates, at, r.data,
                      _num(r.rm_accuracy, ".0%"), f"{r.hidden_score:.2f}",
                      f"{r.win_rate:.0%}", _num(r.rm_score, "+.2f"),
                      _num(r.kl, ".2f") + (f" ({r.reference})" if r.reference else ""),
                      _num(r.tax, "+.1%"), _num(r.diversity_drop, "+.1%"),
                      _num(r.rm_disagreement, "+.0%"))
    Console(width=240).print(table)


def plot(rows: list[Row], path: Path, budget_s: float) -> None:
    """Hidden-rule score of the live policy over the demo's time (steps at promotions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lived = sorted(((r.live_at_s / 60, r) for r in rows if r.live_at_s is not None),
                   key=lambda pair: pair[0])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [m for m, _ in lived] + [max(budget_s / 60, lived[-1][0])]
    ys = [r.hidden_score for _, r in lived] + [lived[-1][1].hidden_score]
    ax.step(xs, ys, where="post", label="live policy")
    for minute, r in lived:
        ax.annotate(r.version, (minute, r.hidden_score), textcoords="offset points",
                    xytext=(4, 6), fontsize=8)
    ax.scatter([m for m, _ in lived], [r.hidden_score for _, r in lived], zorder=3)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1,
               label='the demonstrations (one "good" each)')
    ax.set_xlabel("minutes since the demo started")
    ax.set_ylabel('hidden-rule score (mean count of "good")')
    ax.set_title("The served policy on held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(path: Path, rows: list[Row], verdict: dict, extra: dict) -> None:
    path.write_text(json.dumps({**extra, "verdict": verdict,
                                "versions": [asdict(r) for r in rows]}, indent=2))


def verdict(rows: list[Row], first: str) -> dict:
    """Does the live policy beat the first one by the hidden rule on held-out prompts?"""
    by = {r.version: r for r in rows}
    live = next(r for r in rows if r.state == "live")
    base = by[first]
    beats = live.version != first and live.hidden_score > base.hidden_score \
        and live.win_rate > 0.5
    return {"live": live.version, "first": first, "live_score": live.hidden_score,
            "first_score": base.hidden_score, "win_rate": live.win_rate, "beats_first": beats}
