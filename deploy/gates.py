"""Promotion gates: is the candidate policy better than the live one, and safe to serve?

Judged the way InstructGPT judged policies, by what PPO did not optimise:

* **Prompts PPO never trained on.** A fixed slice of traffic, picked by a hash of the
  normalised prompt (``holdout_share``, the same share PPO excludes from its prompt pool,
  ``training.datasets.is_gate_prompt``), plus an optional operator file
  (``eval_prompt_file``), topped up from a packaged list on a new install.
* **A judge that is not only the optimised reward model.** The RM the candidate was
  optimised against judges, and so does a held-out judge RM when there is one
  (``judge_model``: a reward version, ``previous``, or by default the newest reward
  version trained with ``role: judge`` on rankings no optimised RM sees). A candidate that
  exploits a flaw of its RM (reward hacking) wins under that RM and not under the judge.
* **Paired samples, sequential tests.** Both policies answer every prompt
  ``samples_per_prompt`` times with the same seeds; answers are as long as the
  candidate's own ``max_new_tokens`` unless set, and an unfinished one is scored as PPO
  scores it (minus its truncation penalty). The prompts are measured in
  ``sequential_looks`` rounds; after each, reward gain and win rate are tested over the
  prompts so far (:mod:`deploy.sequential`: α spending, Student-t bounds, futility) and
  the evaluation stops once they are decided. gates.json records n, the interval and the
  smallest detectable effect (docs/gates.md).

Gates, each a pure function of the measurements with thresholds from ``GateSettings``:

* ``reward_improvement`` (and ``judge_reward_improvement``): lower bound of
  mean_x[r(x, y_cand) − r(x, y_live)] ≥ min_reward_improvement.
* ``win_rate`` (and ``judge_win_rate``): lower bound of the share of paired samples where
  r(x, y_cand) > r(x, y_live), ties half, length effect regressed out
  (``length_controlled``), ≥ min_win_rate.
* ``alignment_tax``: LM loss on capability texts no recipe trains on (``capability_file``,
  else the packaged corpus's held-out slice) may rise at most ``max_alignment_tax``
  (relative) over the SFT reference's: what PPO-ptx is meant to protect, measured.
* ``diversity``: distinct-2 and self-repetition of the candidate's answers against its
  SFT reference's, within ``max_diversity_drop`` / ``max_repetition_increase``.
* ``kl``: KL(π_cand ‖ π_ref) ≈ mean over candidate samples of Σ_t log π_cand − log π_ref
  ≤ max_kl. The reference is the SFT version of the candidate's lineage (the one PPO's
  KL penalty used, recorded as ``reference`` in its manifest), so the budget bounds the
  cumulative drift from SFT over every PPO generation. A candidate that is not a PPO
  result (SFT, hand-made) is its own reference.
* ``length_drift``: |mean len(y_cand) / mean len(y_live) − 1| ≤ max_length_drift.

The report goes into the candidate's ``gates.json`` (``Registry.update_gates``); a
candidate that fails stays a candidate, and the report says why.

**SFT candidates** (``recipe: sft``) get the SFT gates instead (:func:`evaluate_sft`):
they are compared with the *current SFT* (the newest older SFT version that passed its
gates or was promoted by force; before any, the pretrained base the SFT started from),
not with the live policy:

* ``lm_loss``: token-weighted LM loss on the held-out demonstrations (the hash slice no
  SFT trains on, ``training.recipes.sft.split_demonstrations``, up to the candidate's data
  mark) not worse than the current SFT's: candidate ≤ current. Against the pretrained
  base (the first SFT) it must be strictly lower: an SFT that learnt nothing is not used.
* ``reward_not_worse`` (only when a reward model exists): both answer the held-out gate
  prompts ``samples_per_prompt`` times with the same seeds and the newest reward model
  scores them; passes unless the whole bootstrap interval of the reward gain lies below
  0 (upper bound ≥ 0: the candidate is not shown to be worse).

``training.cycle`` starts PPO only from an SFT that passed them.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from core.registry import Manifest, Registry, RegistryError
from deploy.errors import GateError
from deploy.sequential import Design, decide
from deploy.settings import GateSettings
from training.datasets import is_gate_prompt, normalise_prompt
from training.lineage import accepted_reward, reference_of

if TYPE_CHECKING:
    from deploy.measure import Measurements

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
    lower: float | None = Field(None, description="Lower bound of the interval.")
    upper: float | None = Field(None, description="Upper bound of the interval.")
    confidence: float | None = Field(None, description="Coverage of [lower, upper].")
    n: int | None = Field(None, description="Prompts (paired units) the test used.")
    look: int | None = Field(None, description="The sequential look it stopped at.")
    looks: int | None = Field(None, description="Looks planned (the cap).")
    min_detectable_effect: float | None = Field(
        None, description="Smallest true effect above the threshold this n detects with "
                          "the planned power.")
    decision: str | None = Field(
        None, description="Sequential verdict: pass, fail, or continue (undecided when "
                          "another gate stopped the evaluation).")


class GateReport(BaseModel):
    """Everything one gate evaluation found; stored as the candidate's gates.json."""

    version: str = Field(description="The candidate policy version.")
    status: Literal["passed", "failed"] = Field(description="passed = every gate passed.")
    failed: list[str] = Field(description="Names of the gates that failed.")
    undecided: list[str] = Field(
        default_factory=list, description="Sequential gates not decided when another gate's "
                                          "failure stopped the evaluation.")
    reasons: list[str] = Field(description="Why each failed gate failed.")
    gates: dict[str, GateResult] = Field(description="Each gate's result, by name.")
    against: str = Field(description="The live policy the candidate was compared with.")
    reference: str = Field(description="The policy the KL was measured against.")
    reward_model: str | None = Field(
        description="The reward version the candidate optimised (SFT: the one that scored "
                    "it, None before any reward model exists).")
    judge_model: str | None = Field(None, description="The held-out judge reward version.")
    samples_per_prompt: int = Field(1, description="Answers per prompt and policy.")
    prompts: dict[str, int] = Field(
        description="Held-out prompts: total, traffic (gate slice), eval_file, fallback.")
    settings: dict[str, Any] = Field(description="The gate settings used.")
    seconds: float = Field(description="Wall time of the evaluation.")
    evaluated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


# -- bootstrap intervals ---------------------------------------------------------------

@dataclass(frozen=True)
class Bootstrap:
    """Percentile bootstrap over prompts: ``resamples`` draws, seeded, ``confidence``
    two-sided coverage (the gates use the lower end)."""

    confidence: float = 0.9
    resamples: int = 1000
    seed: int = 0


def bootstrap_interval(values: Sequence[float], boot: Bootstrap) -> tuple[float, float]:
    """(lower, upper) percentile interval of the mean of ``values`` (one per prompt)."""
    n = len(values)
    rng = random.Random(boot.seed)
    means = sorted(fmean(values[rng.randrange(n)] for _ in range(n))
                   for _ in range(boot.resamples))
    tail = (1 - boot.confidence) / 2
    lo = means[min(int(tail * boot.resamples), boot.resamples - 1)]
    hi = means[max(min(int((1 - tail) * boot.resamples), boot.resamples - 1), 0)]
    return lo, hi


def per_prompt(values: Sequence[float], k: int) -> list[float]:
    """Means of consecutive groups of ``k`` (the samples of one prompt, prompt-major)."""
    if k < 1 or len(values) % k:
        raise ValueError(f"{len(values)} values do not split into groups of {k}")
    return [fmean(values[i:i + k]) for i in range(0, len(values), k)]


def pair_outcome(c: float, l_: float) -> float:
    """1 candidate better, 0.5 tie (within TIE_TOLERANCE), 0 live better."""
    return 0.5 if abs(c - l_) <= TIE_TOLERANCE else float(c > l_)


# -- the gates: pure functions of the measurements ----------------------------------------

def design_of(settings: GateSettings, prompts: int) -> Design:
    """The sequential plan of ``settings``: ``sequential_looks`` rounds (at most one per
    prompt), one-sided α = (1 − confidence) / 2 spent across them."""
    return Design(looks=max(1, min(settings.sequential_looks, prompts)),
                  alpha=(1 - settings.confidence) / 2, power=settings.power)


FIXED = Design(looks=1)
"""One look at a fixed number of prompts (α 0.05 one-sided): the unit tests' default."""


def _sequential(values: Sequence[float], threshold: float, design: Design, look: int,
                value: float, detail: dict[str, float], what: str, fmt: str
                ) -> GateResult:
    """A GateResult from the sequential test of the per-prompt ``values`` at ``look``."""
    t = decide(values, threshold, design, look)
    cover = 1 - 2 * t.level
    verdict = {"pass": "lower bound ≥", "fail": "cannot reach", "continue": "undecided vs"}
    reason = (f"{what}, {cover:.1%} interval [{t.lower:{fmt}}, {t.upper:{fmt}}] over {t.n} "
              f"prompts (look {t.look}/{t.looks}), {verdict[t.decision]} {threshold}; "
              f"detectable at this n: +{t.mde:{fmt.lstrip('+')}}")
    return GateResult(
        value=value, threshold=threshold, passed=t.decision == "pass", lower=t.lower,
        upper=t.upper, confidence=cover, reason=reason, detail=detail, n=t.n, look=t.look,
        looks=t.looks, min_detectable_effect=t.mde, decision=t.decision)


def reward_improvement_gate(cand: Sequence[float], live: Sequence[float], threshold: float,
                            samples_per_prompt: int = 1, design: Design = FIXED, look: int = 1,
                            label: str = "mean reward") -> GateResult:
    """Sequential test of mean_x[mean r(cand) − mean r(live)] ≥ threshold over prompts.

    ``cand``/``live``: rewards of the same prompts' paired samples, prompt-major, in order.
    """
    gains = per_prompt([c - l_ for c, l_ in zip(cand, live, strict=True)], samples_per_prompt)
    c, l_ = fmean(cand), fmean(live)
    return _sequential(gains, threshold, design, look, c - l_,
                       {"candidate_mean": c, "live_mean": l_},
                       f"{label} {c:.4f} vs live {l_:.4f}: improvement {c - l_:+.4f}", "+.4f")


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


def length_controlled(outcomes: Sequence[float], cand_lengths: Sequence[int],
                      live_lengths: Sequence[int]) -> tuple[list[float], float, float]:
    """Win outcomes with the length effect regressed out (AlpacaEval-LC style).

    Fits P(win) = σ(a + b·d) by (fractional) logistic regression, d = the standardised
    length difference candidate − live, and returns (adjusted outcomes, σ(a), b): each
    outcome minus its length-explained part σ(a + b·d) − σ(a). Their mean is σ(a), the win
    rate a candidate as long as live would have; no spread in length: no adjustment.
    """
    import numpy as np

    o = np.asarray(outcomes, dtype=float)
    d = np.asarray(cand_lengths, dtype=float) - np.asarray(live_lengths, dtype=float)
    if len(o) < 3 or float(d.std()) == 0.0:
        return list(outcomes), float(o.mean()), 0.0
    x = np.stack([np.ones_like(d), (d - 0.0) / d.std()], axis=1)
    w = np.zeros(2)
    ridge = 1e-3  # keeps a separable sample (all wins longer) finite
    for _ in range(50):  # Newton–Raphson on the fractional log-likelihood
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (o - p) - ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w += step
        if float(np.abs(step).max()) < 1e-10:
            break
    base = float(1 / (1 + np.exp(-w[0])))
    adjusted = o - (1 / (1 + np.exp(-(x @ w))) - base)
    return adjusted.tolist(), base, float(w[1])


def win_rate_gate(cand: Sequence[float], live: Sequence[float], threshold: float,
                  samples_per_prompt: int = 1, design: Design = FIXED, look: int = 1,
                  cand_lengths: Sequence[int] | None = None,
                  live_lengths: Sequence[int] | None = None) -> GateResult:
    """Sequential test of the share of paired samples where the reward model prefers the
    candidate (ties half) ≥ threshold, over prompts. With the answers' lengths it tests
    the length-controlled win rate (:func:`length_controlled`); the raw one is the value."""
    outcomes = [pair_outcome(c, l_) for c, l_ in zip(cand, live, strict=True)]
    wins, ties = outcomes.count(1.0), outcomes.count(0.5)
    n = len(outcomes)
    value = (wins + 0.5 * ties) / n
    detail: dict[str, float] = {"wins": wins, "ties": ties, "losses": n - wins - ties}
    tested, what = outcomes, f"win rate {value:.1%} ({wins} wins, {ties} ties, " \
                             f"{n - wins - ties} losses of {n})"
    if cand_lengths is not None and live_lengths is not None:
        tested, lc, slope = length_controlled(outcomes, cand_lengths, live_lengths)
        detail |= {"length_controlled": lc, "length_slope": slope}
        what += f", length-controlled {lc:.1%}"
    return _sequential(per_prompt(tested, samples_per_prompt), threshold, design, look, value,
                       detail, what, ".1%")


_WORD = re.compile(r"\w+")


def diversity(texts: Sequence[str]) -> tuple[float, float]:
    """(distinct-2, repetition) of a set of answers: unique word bigrams over all bigrams,
    and the share of answers in which some word 3-gram occurs more than once."""
    bigrams: list[tuple[str, ...]] = []
    repeating = 0
    for text in texts:
        words = _WORD.findall(text.lower())
        bigrams += zip(words, words[1:], strict=False)
        trigrams = list(zip(words, words[1:], words[2:], strict=False))
        repeating += len(set(trigrams)) < len(trigrams)
    distinct = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
    return distinct, repeating / max(len(texts), 1)


def diversity_gate(cand_texts: Sequence[str], ref_texts: Sequence[str], max_drop: float,
                   max_repetition_increase: float) -> GateResult:
    """Distinct-2 of the candidate's answers not below the reference's (the SFT) by more
    than ``max_drop`` (relative), and its share of self-repeating answers not above the
    reference's by more than ``max_repetition_increase`` (absolute)."""
    c_d, c_r = diversity(cand_texts)
    r_d, r_r = diversity(ref_texts)
    drop = 1 - c_d / r_d if r_d > 0 else 0.0
    rise = c_r - r_r
    passed = drop <= max_drop and rise <= max_repetition_increase
    return GateResult(
        value=drop, threshold=max_drop, passed=passed,
        reason=f"distinct-2 {c_d:.3f} vs reference {r_d:.3f} (drop {drop:+.1%}, budget "
               f"{max_drop:.0%}); repeating answers {c_r:.0%} vs {r_r:.0%} (rise {rise:+.0%}, "
               f"budget {max_repetition_increase:.0%})",
        detail={"candidate_distinct2": c_d, "reference_distinct2": r_d,
                "candidate_repetition": c_r, "reference_repetition": r_r})


def overoptimisation_gate(optimised: tuple[Sequence[float], Sequence[float]],
                          judge: tuple[Sequence[float], Sequence[float]], min_ratio: float
                          ) -> GateResult:
    """The held-out judge must see a fair share of the gain the optimised RM sees: judge
    win-rate excess over ½ ≥ ``min_ratio`` × the optimised RM's (win rates are free of the
    RMs' scales). A candidate the optimised RM does not prefer passes (other gates decide);
    ``detail.disagreement`` = optimised − judge win rate, the ensemble's disagreement."""
    def rate(c: Sequence[float], li: Sequence[float]) -> float:
        return fmean(pair_outcome(a, b) for a, b in zip(c, li, strict=True))

    o, j = rate(*optimised), rate(*judge)
    ratio = (j - 0.5) / (o - 0.5) if o > 0.5 else 1.0
    passed = ratio >= min_ratio
    return GateResult(
        value=ratio, threshold=min_ratio, passed=passed,
        reason=f"win rate {o:.1%} under the optimised RM vs {j:.1%} under the held-out "
               f"judge: the judge sees {ratio:.0%} of the gain "
               f"({'≥' if passed else '<'} {min_ratio:.0%}"
               f"{'' if passed else ', over-optimised'})",
        detail={"optimised_win_rate": o, "judge_win_rate": j, "disagreement": o - j})


def alignment_tax_gate(cand_loss: float, ref_loss: float, budget: float) -> GateResult:
    """LM loss on the capability texts: (candidate − reference) / reference ≤ budget."""
    tax = (cand_loss - ref_loss) / ref_loss if ref_loss > 0 else 0.0
    passed = tax <= budget
    return GateResult(
        value=tax, threshold=budget, passed=passed,
        reason=f"capability LM loss {cand_loss:.4f} vs SFT reference {ref_loss:.4f} "
               f"nats/token: tax {tax:+.1%} {'≤' if passed else '>'} {budget:.0%}",
        detail={"candidate_loss": cand_loss, "reference_loss": ref_loss})


def capability_texts(settings: GateSettings) -> list[str]:
    """The alignment tax's texts: the operator's file, else the packaged corpus's held-out
    capability slice."""
    if settings.capability_file is not None:
        if not Path(settings.capability_file).is_file():
            raise GateError(f"capability_file {settings.capability_file} does not exist")
        lines = Path(settings.capability_file).read_text().splitlines()
        return [ln.strip() for ln in lines if ln.strip()]
    from training.datasets import split_corpus
    from training.tiny_model import CORPUS

    return split_corpus(CORPUS.read_text().splitlines())[1]


def make_report(version: str, gates: dict[str, GateResult], **context: Any) -> GateReport:
    """The report of a set of gate results: passed iff every gate passed. ``failed`` names
    the gates that failed; a sequential gate left undecided because another one stopped
    the evaluation is listed under ``undecided`` instead."""
    undecided = [n for n, g in gates.items() if not g.passed and g.decision == "continue"]
    failed = [n for n, g in gates.items() if not g.passed and n not in undecided]
    return GateReport(version=version, status="failed" if failed or undecided else "passed",
                      failed=failed, undecided=undecided,
                      reasons=[f"{n}: {gates[n].reason}" for n in failed],
                      gates=gates, **context)


# -- what to compare: prompts and versions ------------------------------------------------

def eval_file_prompts(path: Path | None) -> list[str]:
    """The operator's eval prompts, one a line (blank lines skipped); [] without a file."""
    if path is None:
        return []
    if not Path(path).is_file():
        raise GateError(f"eval_prompt_file {path} does not exist")
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def held_out_prompts(store, settings: GateSettings) -> tuple[list[str], dict[str, int]]:
    """``num_prompts`` prompts PPO never trained on, and where they came from.

    First the operator's ``eval_prompt_file``, then the newest distinct traffic prompts of
    the gate slice (``holdout_share`` by hash; PPO excludes the same slice), then the
    fallback list (repeated if short). Near-duplicates (same normalised text) count once.
    ``store`` may be None; a store that cannot be read counts as no traffic, with a warning.
    """
    n = settings.num_prompts
    chosen: list[str] = []
    seen: set[str] = set()

    def take(prompts: Sequence[str]) -> int:
        before = len(chosen)
        for p in prompts:
            key = normalise_prompt(p)
            if len(chosen) < n and key and key not in seen:
                seen.add(key)
                chosen.append(p)
        return len(chosen) - before

    from_file = take(eval_file_prompts(settings.eval_prompt_file))
    traffic: list[str] = []
    if store is not None and len(chosen) < n:
        try:
            traffic = [p for p in store.recent_prompts(settings.traffic_scan)
                       if is_gate_prompt(p, settings.holdout_share)]
        except SQLAlchemyError as e:
            log.warning("gates: feedback store unreadable (%s); using fallback prompts", e)
    from_traffic = take(traffic)
    fallback = [FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(n - len(chosen))]
    chosen += fallback
    return chosen, {"total": len(chosen), "traffic": from_traffic, "eval_file": from_file,
                    "fallback": len(fallback)}


def reward_model_for(registry: Registry, settings: GateSettings,
                     manifest: Manifest | None = None) -> str:
    """The optimised RM: the setting, else the one the candidate was trained against, else
    the accepted reward version (``training.lineage.accepted_reward``); GateError when
    there is none."""
    chosen = settings.reward_model or (manifest.config.get("reward_model") if manifest else None)
    if chosen:
        if registry.get(chosen).kind != "reward":
            raise GateError(f"{chosen} is not a reward model")
        return str(chosen)
    newest = accepted_reward(registry)
    if newest is None:
        raise GateError("no reward model in the registry to judge the gates")
    return newest.version


def judge_model_for(registry: Registry, settings: GateSettings, optimised: str) -> str | None:
    """The held-out judge: ``judge_model`` (a version; ``previous`` = the reward version
    before ``optimised``; ``none`` = no judge), by default the newest reward version
    trained with ``role: judge``; never the optimised RM itself."""
    setting = settings.judge_model
    if setting == "none":
        return None
    rewards = registry.list("reward")
    if setting == "previous":
        older = [m.version for m in rewards if m.version < optimised]
        return older[-1] if older else None
    if setting:
        if registry.get(setting).kind != "reward":
            raise GateError(f"judge_model {setting} is not a reward model")
        return None if setting == optimised else setting
    judges = [m.version for m in rewards if m.config.get("role") == "judge"
              and m.version != optimised]
    return judges[-1] if judges else None


def reference_for(registry: Registry, manifest: Manifest, settings: GateSettings,
                  live: str) -> str:
    """KL reference: the setting, else the SFT version of the candidate's lineage (the
    manifest's ``reference``, or its parent chain for older PPO manifests); a non-PPO
    candidate is its own reference. ``live`` only when the lineage cannot be read."""
    if settings.reference:
        return settings.reference
    try:
        return reference_of(registry, manifest.version)
    except RegistryError as e:
        log.warning("gates: lineage of %s unreadable (%s); KL against %s", manifest.version,
                    e, live)
        return live


def answer_budget(manifest: Manifest, settings: GateSettings) -> int:
    """Tokens per gate answer: the setting, else the candidate's own ``max_new_tokens``
    (long enough to see length hacking), else 48."""
    return int(settings.max_new_tokens or manifest.config.get("max_new_tokens") or 48)


def baseline_for(registry: Registry, manifest: Manifest) -> str:
    """The live policy; before any is live, the candidate's parent. GateError if neither."""
    live = registry.live_policy() or manifest.parent
    if live is None:
        raise GateError(f"{manifest.version}: no live policy and no parent to compare with; "
                        "promote it with force to bootstrap")
    return live


# -- one evaluation ------------------------------------------------------------------------

def judge_gates(m: Measurements, version: str, settings: GateSettings, k: int,
                design: Design, look: int, prefix: str = "") -> dict[str, GateResult]:
    """reward_improvement and win_rate (length-controlled) of one reward model's scores."""
    label = "judge mean reward" if prefix else "mean reward"
    cand, live = m.rewards[version]
    return {f"{prefix}reward_improvement": reward_improvement_gate(
                cand, live, settings.min_reward_improvement, k, design, look, label),
            f"{prefix}win_rate": win_rate_gate(
                cand, live, settings.min_win_rate, k, design, look,
                m.cand_lengths if settings.length_controlled else None,
                m.live_lengths if settings.length_controlled else None)}


def sequential_gates(m: Measurements, look: int, *, settings: GateSettings, k: int,
                     design: Design, reward: str, judge: str | None
                     ) -> dict[str, GateResult]:
    """The sequential gates at ``look``: the optimised RM's, and the judge's if any."""
    gates = judge_gates(m, reward, settings, k, design, look)
    if judge:
        gates.update(judge_gates(m, judge, settings, k, design, look, prefix="judge_"))
    return gates


def in_rounds(prompts: list[str], looks: int) -> list[list[str]]:
    """``prompts`` cut into ``looks`` consecutive rounds of (nearly) equal size."""
    n = len(prompts)
    return [prompts[j * n // looks:(j + 1) * n // looks] for j in range(looks)]


def run_looks(rounds: Sequence[list[str]], measure_round: Callable[[list[str]], Measurements],
              decide_look: Callable[[Measurements, int], dict[str, GateResult]]
              ) -> tuple[Measurements, dict[str, GateResult]]:
    """Measure round after round, deciding the sequential gates after each, until every one
    passed, one failed (the candidate cannot be promoted: stop spending time), or the cap.
    Returns the measurements so far and the last look's gates."""
    acc: Measurements | None = None
    gates: dict[str, GateResult] = {}
    for look, chunk in enumerate(rounds, start=1):
        m = measure_round(chunk)
        acc = m if acc is None else acc + m
        gates = decide_look(acc, look)
        decisions = {g.decision for g in gates.values()}
        if "fail" in decisions or decisions <= {"pass"}:
            break
    if acc is None:
        raise GateError("no held-out prompts to evaluate on")
    return acc, gates


def evaluate(registry: Registry, version: str, settings: GateSettings,
             store=None) -> GateReport:
    """Run every gate for candidate ``version``; does not record anything.

    Reward gain and win rate are sequential (:mod:`deploy.sequential`): rounds of held-out
    prompts until they are decided or ``num_prompts`` are used; KL, length drift and
    diversity are measured on every answer sampled by then.

    Raises RegistryError for an unknown version and GateError when gates cannot run.
    """
    from deploy.measure import measure

    manifest = registry.get(version)
    if manifest.kind != "policy":
        raise RegistryError(f"{version} is not a policy")
    if manifest.config.get("recipe") == "sft":
        return evaluate_sft(registry, manifest, settings, store)
    live = baseline_for(registry, manifest)
    reference = reference_for(registry, manifest, settings, live)
    reward = reward_model_for(registry, settings, manifest)
    judge = judge_model_for(registry, settings, reward)
    share = manifest.config.get("gate_holdout_share")
    if share is not None and share != settings.holdout_share:
        log.warning("gates: %s was trained with gate_holdout_share %s but the gates use %s; "
                    "some gate prompts may have been trained on", version, share,
                    settings.holdout_share)
    prompts, sources = held_out_prompts(store, settings)
    k = settings.samples_per_prompt
    design = design_of(settings, len(prompts))
    penalty = unfinished_penalty(manifest, settings)
    started = time.perf_counter()

    def measure_round(chunk: list[str]) -> Measurements:
        return measure(registry, settings, chunk, candidate=version, live=live,
                       reference=reference, reward_models=[r for r in (reward, judge) if r],
                       samples_per_prompt=k, max_new_tokens=answer_budget(manifest, settings),
                       unfinished_penalty=penalty, sample_reference=True)

    m, gates = run_looks(in_rounds(prompts, design.looks), measure_round,
                         partial(sequential_gates, settings=settings, k=k, design=design,
                                 reward=reward, judge=judge))
    gates["kl"] = kl_gate(m.cand_logprobs, m.ref_logprobs, settings.max_kl)
    gates["length_drift"] = length_drift_gate(m.cand_lengths, m.live_lengths,
                                              settings.max_length_drift)
    gates["length_drift"].detail |= {
        "candidate_unfinished": unfinished_share(m.candidate.finished),
        "live_unfinished": unfinished_share(m.live.finished)}
    if judge:
        gates["overoptimisation"] = overoptimisation_gate(m.rewards[reward], m.rewards[judge],
                                                          settings.min_judge_ratio)
    gates["diversity"] = diversity_gate(m.candidate.responses, m.reference_answers.responses,
                                        settings.max_diversity_drop,
                                        settings.max_repetition_increase)
    if reference != version:
        from deploy.measure import text_lm_loss

        texts = capability_texts(settings)
        gates["alignment_tax"] = alignment_tax_gate(
            text_lm_loss(registry, version, texts, settings, 128),
            text_lm_loss(registry, reference, texts, settings, 128),
            settings.max_alignment_tax)
    gates.update(human_eval_gates(version, live, settings, store))
    used = len(m.candidate.prompts) // k
    return make_report(
        version, gates, against=live, reference=reference, reward_model=reward,
        judge_model=judge, samples_per_prompt=k,
        prompts={**sources, "used": used},
        settings=settings.model_dump(mode="json"), seconds=time.perf_counter() - started)


def unfinished_penalty(manifest: Manifest, settings: GateSettings) -> float:
    """What an unfinished answer loses in the gates: the setting, else what the candidate's
    PPO run subtracted (``truncation: penalty``, its ``truncation_penalty``), else 1."""
    if settings.unfinished_penalty is not None:
        return settings.unfinished_penalty
    cfg = manifest.config
    if cfg.get("truncation", "penalty") != "penalty":
        return 0.0
    return float(cfg.get("truncation_penalty", 1.0))


def unfinished_share(finished: Sequence[bool]) -> float:
    return 1 - fmean(finished) if finished else 0.0


# -- SFT gates: is a new SFT version a better lineage base than the current one? ------------

def current_sft(registry: Registry, manifest: Manifest) -> str:
    """What SFT candidate ``manifest`` must not be worse than: the newest older SFT version
    that passed its gates (or was promoted by force), else its parent (the pretrained base
    it was fine-tuned from). GateError when there is neither."""
    from training.cycle import is_sft, sft_usable

    older = [m.version for m in registry.list("policy") if is_sft(m)
             and m.version < manifest.version and sft_usable(registry, m)]
    if older:
        return older[-1]
    if manifest.parent is None:
        raise GateError(f"{manifest.version}: no SFT version and no parent to compare with")
    return manifest.parent


def heldout_demonstrations(store, manifest: Manifest) -> list:
    """The candidate's held-out demonstrations: those that may train (its config's
    ``train_on_user_feedback``) up to its data mark, in the held-out hash slice."""
    from training.recipes.sft import split_demonstrations, trainable

    cfg = manifest.config
    demos = trainable(store.demonstrations(until=manifest.data_mark),
                      bool(cfg.get("train_on_user_feedback", False)),
                      float(cfg.get("gate_holdout_share", 0.0)))
    return split_demonstrations(demos, float(cfg.get("eval_fraction", 0.1)),
                                int(cfg.get("seed", 0)))[1]


def lm_loss_gate(cand_loss: float, current_loss: float, strict: bool) -> GateResult:
    """Held-out LM loss: candidate ≤ current (``strict``: < , against a pretrained base)."""
    value = cand_loss - current_loss
    passed = value < 0 if strict else value <= 0
    rule = "<" if strict else "≤"
    return GateResult(
        value=value, threshold=0.0, passed=passed,
        reason=f"held-out LM loss {cand_loss:.4f} vs current {current_loss:.4f} nats/token "
               f"(change {value:+.4f}; needs {rule} 0)",
        detail={"candidate_loss": cand_loss, "current_loss": current_loss})


def sft_reward_gate(cand: Sequence[float], current: Sequence[float],
                    samples_per_prompt: int = 1, boot: Bootstrap | None = None) -> GateResult:
    """Reward not worse: the upper bootstrap bound of mean_x[r(cand) − r(current)] ≥ 0."""
    boot = boot or Bootstrap()
    gains = per_prompt([c - b for c, b in zip(cand, current, strict=True)],
                       samples_per_prompt)
    c, b = fmean(cand), fmean(current)
    lower, upper = bootstrap_interval(gains, boot)
    passed = upper >= 0
    return GateResult(
        value=c - b, threshold=0.0, passed=passed, lower=lower, upper=upper,
        confidence=boot.confidence,
        reason=f"mean reward {c:.4f} vs current SFT {b:.4f}: change {c - b:+.4f}, "
               f"{boot.confidence:.0%} interval [{lower:+.4f}, {upper:+.4f}], upper bound "
               f"{'≥' if passed else '<'} 0",
        detail={"candidate_mean": c, "current_mean": b})


def evaluate_sft(registry: Registry, manifest: Manifest, settings: GateSettings,
                 store=None) -> GateReport:
    """The SFT gates of SFT candidate ``manifest`` (see the module docstring).

    Needs the feedback store (the held-out demonstrations); GateError without one or when
    the candidate has no held-out demonstrations.
    """
    from deploy.measure import heldout_lm_loss, measure

    version = manifest.version
    if store is None:
        raise GateError(f"{version}: the SFT gates need the feedback store "
                        "(held-out demonstrations)")
    current = current_sft(registry, manifest)
    strict = registry.get(current).config.get("recipe") != "sft"
    started = time.perf_counter()
    demos = heldout_demonstrations(store, manifest)
    if not demos:
        raise GateError(f"{version}: no held-out demonstrations up to mark "
                        f"{manifest.data_mark} (eval_fraction 0?)")
    max_len = int(manifest.config.get("max_len", 512))
    gates = {"lm_loss": lm_loss_gate(heldout_lm_loss(registry, version, demos, settings, max_len),
                                     heldout_lm_loss(registry, current, demos, settings, max_len),
                                     strict)}
    newest = accepted_reward(registry)
    reward = settings.reward_model or (newest.version if newest else None)
    k = settings.samples_per_prompt
    sources = {"total": 0, "traffic": 0, "eval_file": 0, "fallback": 0}
    if reward:
        prompts, sources = held_out_prompts(store, settings)
        m = measure(registry, settings, prompts, candidate=version, live=current,
                    reference=current, reward_models=[reward], samples_per_prompt=k,
                    max_new_tokens=answer_budget(manifest, settings))
        boot = Bootstrap(settings.confidence, settings.bootstrap_resamples, settings.seed)
        gates["reward_not_worse"] = sft_reward_gate(*m.rewards[reward], k, boot)
    return make_report(
        version, gates, against=current, reference=current, reward_model=reward,
        judge_model=None, samples_per_prompt=k,
        prompts={**sources, "heldout_demonstrations": len(demos)},
        settings=settings.model_dump(mode="json"), seconds=time.perf_counter() - started)


# -- human evaluation: the labeling workbench's blind A/B queues ---------------------------

def human_eval_gates(version: str, live: str, settings: GateSettings,
                     store=None) -> dict[str, GateResult]:
    """``human_win_rate`` when ``settings.human_eval.required``, else nothing.

    Labelers' verdicts on the candidate-vs-live queues of ``version`` (labeling/human_eval.py):
    passes iff at least ``min_items`` judgments reached the store and the Wilson lower
    bound of the win rate (ties half) is ≥ ``min_lower_bound``. No store: fails.
    """
    from labeling.human_eval import human_eval_gate

    human = settings.human_eval
    if not human.required:
        return {}
    if store is None:
        return {"human_win_rate": GateResult(
            value=0.0, threshold=human.min_lower_bound, passed=False,
            reason="no feedback store to read human judgments from")}
    verdict = human_eval_gate(store.engine, version, live, human)
    assert verdict is not None
    return {"human_win_rate": GateResult(**verdict.as_dict())}


def record(registry: Registry, report: GateReport) -> Manifest:
    """Write ``report`` as the version's gates.json (replacing an earlier evaluation)."""
    return registry.update_gates(report.version, report.model_dump(mode="json"))


def evaluate_and_record(registry: Registry, version: str, settings: GateSettings,
                        store=None) -> GateReport:
    """:func:`evaluate`, then :func:`record`; the controller's one call."""
    report = evaluate(registry, version, settings, store)
    record(registry, report)
    return report
