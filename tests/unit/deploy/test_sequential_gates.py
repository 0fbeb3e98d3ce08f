"""The sequential paired gates under a simulated judge: false promotions and power.

The policies are simulated, everything else is the gates' own code: ``run_looks`` measures
round after round and ``sequential_gates`` decides the reward-gain and (length-controlled)
win-rate gates after each, as ``deploy.gates.evaluate`` does with real models. A judge
scores answer j of prompt x as b_x + δ·[candidate] + ε with ε ~ N(0, σ²) per answer:
the prompt's difficulty b_x is shared by both policies (the pairing), δ is the
candidate's true improvement.
"""

from statistics import fmean

import numpy as np
import pytest

from deploy.gates import (
    diversity,
    diversity_gate,
    in_rounds,
    length_controlled,
    run_looks,
    sequential_gates,
    win_rate_gate,
)
from deploy.measure import Measurements
from deploy.sampling import Samples
from deploy.sequential import Design, decide, efficacy_bounds, obrien_fleming_spent
from deploy.settings import GateSettings

SETTINGS = GateSettings(num_prompts=48, samples_per_prompt=4, sequential_looks=4,
                        min_reward_improvement=0.0, min_win_rate=0.5)
K = SETTINGS.samples_per_prompt


def samples(prompts: list[str], lengths: list[int]) -> Samples:
    return Samples(prompts, ["answer"] * len(prompts), [[1]] * len(prompts),
                   [[2] * n for n in lengths], [True] * len(prompts))


class SimulatedJudge:
    """measure_round for ``run_looks``: paired rewards of one simulated comparison."""

    def __init__(self, delta: float, rng: np.random.Generator, noise: float = 1.0,
                 length_bias: float = 0.0):
        self.delta, self.rng, self.noise, self.length_bias = delta, rng, noise, length_bias
        self.prompts_used = 0

    def __call__(self, chunk: list[str]) -> Measurements:
        n = len(chunk) * K
        self.prompts_used += len(chunk)
        difficulty = np.repeat(self.rng.normal(0, 1, len(chunk)), K)
        cand_len = self.rng.integers(5, 40, n)
        live_len = self.rng.integers(5, 40, n)
        cand = (difficulty + self.delta + self.length_bias * cand_len
                + self.rng.normal(0, self.noise, n))
        live = difficulty + self.length_bias * live_len + self.rng.normal(0, self.noise, n)
        repeated = [p for p in chunk for _ in range(K)]
        return Measurements({"reward-0001": (cand.tolist(), live.tolist())}, [0.0] * n,
                            [0.0] * n, cand_len.tolist(), live_len.tolist(),
                            samples(repeated, cand_len.tolist()),
                            samples(repeated, live_len.tolist()))


def gate_run(delta: float, rng: np.random.Generator, settings: GateSettings = SETTINGS,
             **judge) -> tuple[bool, int]:
    """One gate evaluation of a candidate with true gain ``delta``: (promoted, prompts used)."""
    design = Design(looks=settings.sequential_looks, alpha=(1 - settings.confidence) / 2)
    sim = SimulatedJudge(delta, rng, **judge)
    prompts = [f"prompt {i}" for i in range(settings.num_prompts)]

    def decide_look(m, look):
        return sequential_gates(m, look, settings=settings, k=K, design=design,
                                reward="reward-0001", judge=None)

    _, gates = run_looks(in_rounds(prompts, design.looks), sim, decide_look)
    return all(g.passed for g in gates.values()), sim.prompts_used


def test_a_candidate_no_better_than_live_is_promoted_in_at_most_5_percent_of_400_runs():
    rng = np.random.default_rng(1)
    runs = [gate_run(0.0, rng) for _ in range(400)]
    promoted = sum(p for p, _ in runs)
    assert promoted / len(runs) <= 0.05, promoted
    # futility stops most null runs early: fewer prompts than the cap on average
    assert fmean(n for _, n in runs) < 0.8 * SETTINGS.num_prompts


def test_a_candidate_with_a_real_gain_is_promoted_in_at_least_80_percent_of_400_runs():
    # per-prompt paired gain sd = σ·√(2/K) = 0.71; at 48 prompts the reward gate detects
    # ≈ 0.26 and the win-rate gate ≈ +9 points with 80 % power; δ = 0.45 wins 62 % of pairs
    rng = np.random.default_rng(2)
    runs = [gate_run(0.45, rng) for _ in range(400)]
    assert sum(p for p, _ in runs) / len(runs) >= 0.8
    # clearly better candidates stop before the cap
    assert fmean(n for _, n in runs) < SETTINGS.num_prompts


def test_repeated_looks_without_spending_would_inflate_false_promotions():
    """The reason for α spending: testing each look at the fixed-n 5 % level promotes a
    null candidate more often than 5 %; the spent boundaries do not."""
    rng = np.random.default_rng(3)
    naive = Design(looks=1)
    spent = Design(looks=4)
    naive_hits = spent_hits = 0
    for _ in range(2000):
        gains = rng.normal(0, 1, 48).tolist()
        naive_hits += any(decide(gains[:12 * j], 0.0, naive, 1).decision == "pass"
                          for j in range(1, 5))
        spent_hits += any(decide(gains[:12 * j], 0.0, spent, j).decision == "pass"
                          for j in range(1, 5))
    assert naive_hits / 2000 > 0.07
    assert spent_hits / 2000 <= 0.055


def test_spending_boundaries_spend_alpha_and_end_near_the_fixed_sample_bound():
    assert obrien_fleming_spent(1.0, 0.05) == 0.05
    assert obrien_fleming_spent(0.25, 0.05) < 0.001  # an early look must be very clear
    bounds = efficacy_bounds((0.25, 0.5, 0.75, 1.0), 0.05)
    assert bounds == efficacy_bounds((0.25, 0.5, 0.75, 1.0), 0.05)  # seeded and cached
    assert bounds[0] > bounds[1] > bounds[2] > bounds[3] > 1.645
    assert bounds[3] < 1.8  # the cap keeps nearly the power of a single test


def test_a_copy_of_live_fails_at_the_first_look_and_quotes_what_it_could_detect():
    same = [0.0] * 12
    t = decide(same, 0.01, Design(looks=4), 1)
    assert (t.decision, t.lower, t.upper) == ("fail", 0.0, 0.0)
    # all ties at a 0.5 threshold: never a pass, however many prompts
    ties = decide([0.5] * 48, 0.5, Design(looks=4), 4)
    assert ties.decision == "fail"
    noisy = decide(list(np.random.default_rng(0).normal(0.2, 1, 24)), 0.0, Design(looks=4), 2)
    assert noisy.mde > 0 and noisy.lower < noisy.mean < noisy.upper


def test_gate_results_record_n_the_interval_and_the_detectable_effect():
    m = SimulatedJudge(0.45, np.random.default_rng(4))([f"p{i}" for i in range(12)])
    gates = sequential_gates(m, 1, settings=SETTINGS, k=K, design=Design(looks=4),
                             reward="reward-0001", judge=None)
    g = gates["reward_improvement"]
    assert (g.n, g.look, g.looks) == (12, 1, 4) and g.decision in ("pass", "continue", "fail")
    assert g.lower is not None and g.upper is not None and g.lower < g.upper
    assert g.min_detectable_effect is not None and g.min_detectable_effect > 0
    assert "look 1/4" in g.reason and "detectable at this n" in g.reason


def test_length_controlled_win_rate_removes_a_win_bought_by_length():
    rng = np.random.default_rng(5)
    d = rng.integers(-20, 21, 2000)
    # the judge prefers the longer answer, nothing else: raw win rate tracks length only
    outcomes = [1.0 if x > 0 else 0.0 if x < 0 else 0.5 for x in d + rng.normal(0, 5, 2000)]
    cand_len = (30 + np.maximum(d, -29)).tolist()
    adjusted, lc, slope = length_controlled(outcomes, cand_len, [30] * 2000)
    assert slope > 0 and abs(lc - 0.5) < 0.05 and fmean(adjusted) == pytest.approx(lc)
    # a candidate that is always 10 tokens longer and wins 80 % by it; others at random
    longer = [40] * 200 + [30] * 200
    wins = [1.0] * 160 + [0.0] * 40 + [1.0, 0.0] * 100
    g = win_rate_gate(wins, [1.0 - w for w in wins], 0.5, 1, Design(looks=1), 1, longer,
                      [30] * 400)
    assert g.value == pytest.approx(0.65)
    assert g.detail["length_controlled"] < 0.55 and not g.passed


def test_diversity_gate_catches_answers_that_repeat_themselves():
    sft = ["the cat sat on the mat", "a dog ran in the park", "tea is made with hot water"]
    varied = ["birds sing at dawn today", "rivers flow to the sea", "bread needs flour"]
    looping = ["good good good good good good", "great great great great great",
               "good good good good good good"]
    assert diversity(looping)[1] == 1.0 and diversity(sft)[1] == 0.0
    assert diversity_gate(varied, sft, 0.25, 0.25).passed
    hacked = diversity_gate(looping, sft, 0.25, 0.25)
    assert not hacked.passed and hacked.detail["candidate_repetition"] == 1.0


def test_alignment_tax_is_the_relative_capability_loss_rise_over_the_sft():
    from deploy.gates import alignment_tax_gate, capability_texts
    from training.datasets import is_capability_text, split_corpus
    from training.synthetic import corpus_sentences

    g = alignment_tax_gate(3.3, 3.0, 0.1)
    assert g.value == pytest.approx(0.1) and g.passed
    assert not alignment_tax_gate(3.31, 3.0, 0.1).passed
    assert alignment_tax_gate(2.5, 3.0, 0.1).value < 0  # better than the SFT: no tax
    # the packaged capability texts are held out from every synthetic answer and from ptx
    texts = capability_texts(GateSettings())
    assert len(texts) > 50 and all(is_capability_text(t) for t in texts)
    assert not set(texts) & set(corpus_sentences())
    train, held = split_corpus(["a line", "", *texts])
    assert held == texts and train == ["a line"]


def test_a_gain_the_held_out_judge_does_not_see_is_refused_as_over_optimised():
    from deploy.gates import overoptimisation_gate

    def scores(wins: int) -> tuple[list[float], list[float]]:  # (candidate, live) of 10 pairs
        return [1.0] * wins + [0.0] * (10 - wins), [0.0] * wins + [1.0] * (10 - wins)

    wins, even = scores(8), scores(5)
    # optimised RM: 80 % wins; the judge: 50 % → it sees none of the gain
    hacked = overoptimisation_gate(wins, even, 0.25)
    assert not hacked.passed and hacked.value == pytest.approx(0.0)
    assert hacked.detail["disagreement"] == pytest.approx(0.3) and "over-optimised" in hacked.reason
    honest = overoptimisation_gate(wins, scores(7), 0.25)
    assert honest.passed and honest.value == pytest.approx(2 / 3)
    # no gain under the optimised RM: nothing to over-optimise, other gates decide
    assert overoptimisation_gate(even, scores(2), 0.25).passed
