"""The promotion gates as pure functions, bootstrap bounds, prompt selection, settings."""

import pytest
from pydantic import ValidationError

from core.registry import Registry
from deploy.gates import (
    FALLBACK_PROMPTS,
    Bootstrap,
    bootstrap_interval,
    held_out_prompts,
    judge_model_for,
    kl_gate,
    length_drift_gate,
    make_report,
    per_prompt,
    reward_improvement_gate,
    reward_model_for,
    win_rate_gate,
)
from deploy.settings import DeploySettings, GateSettings
from training.datasets import is_gate_prompt


def test_reward_improvement_gates_on_the_lower_bound_threshold_inclusive():
    # gains per prompt 1, 2, 3: mean 2, sd 1, se 1/√3; one fixed look at one-sided 5 %:
    # t(0.95, 2 df) = 2.92 → lower bound 2 − 2.92/√3 = 0.314
    g = reward_improvement_gate([1.0, 3.0, 5.0], [0.0, 1.0, 2.0], threshold=0.3)
    assert g.value == pytest.approx(2.0) and g.confidence == pytest.approx(0.9)
    assert g.lower == pytest.approx(0.314, abs=0.01) and g.upper == pytest.approx(3.686, abs=0.01)
    assert g.passed and g.n == 3 and g.decision == "pass"
    # a threshold above the lower bound fails although the mean is far above: could be luck
    assert not reward_improvement_gate([1.0, 3.0, 5.0], [0.0, 1.0, 2.0], threshold=0.5).passed
    assert not reward_improvement_gate([1.0], [1.0], threshold=0.01).passed  # a copy
    # identical gains on every prompt: a degenerate interval equal to the mean
    same = reward_improvement_gate([2.0] * 5, [1.0] * 5, threshold=1.0)
    assert (same.lower, same.upper) == (1.0, 1.0) and not same.passed  # not above 1.0
    assert reward_improvement_gate([2.0] * 5, [1.0] * 5, threshold=0.5).passed


def test_several_samples_per_prompt_are_averaged_before_the_test():
    # 2 prompts × 2 samples, prompt-major: gains (0, 2) → prompt mean 1; (2, 2) → 2
    assert per_prompt([0.0, 2.0, 2.0, 2.0], 2) == [1.0, 2.0]
    g = reward_improvement_gate([0.0, 2.0, 2.0, 2.0], [0.0] * 4, 1.0, samples_per_prompt=2)
    assert g.value == pytest.approx(1.5) and g.n == 2  # prompts, not samples, are the units
    with pytest.raises(ValueError, match="groups of 3"):
        per_prompt([1.0, 2.0], 3)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = [0.0, 1.0, 2.0, 3.0, 10.0]
    boot = Bootstrap(confidence=0.9, resamples=2000, seed=3)
    lo, hi = bootstrap_interval(values, boot)
    assert bootstrap_interval(values, boot) == (lo, hi)  # same seed, same interval
    assert 0.0 <= lo < 3.2 < hi <= 10.0  # mean 3.2 inside, never outside the data


def test_kl_is_mean_logprob_gap_of_candidate_samples():
    # gaps: (-2 - -5) = 3 and (-4 - -3) = -1 → mean 1.0
    g = kl_gate([-2.0, -4.0], [-5.0, -3.0], budget=1.0)
    assert g.value == pytest.approx(1.0) and g.passed
    assert not kl_gate([-2.0, -4.0], [-5.0, -3.0], budget=0.99).passed


def test_length_drift_is_relative_and_symmetric():
    # mean 15 vs 10 → +50%; mean 5 vs 10 → -50%, both drift 0.5
    assert length_drift_gate([10, 20], [10, 10], bound=0.5).value == pytest.approx(0.5)
    assert length_drift_gate([5, 5], [10, 10], bound=0.5).passed
    assert not length_drift_gate([5, 5], [10, 10], bound=0.49).passed


def test_win_rate_counts_ties_half_and_gates_on_the_lower_bound():
    # win, tie, loss, win → (2 + 0.5) / 4
    g = win_rate_gate([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 1.0, 4.0], threshold=0.5)
    assert g.value == pytest.approx(0.625)
    assert g.detail == {"wins": 2, "ties": 1, "losses": 1}
    # per prompt 1, ½, 0, 1: a 90 % bootstrap interval reaches well below ½
    assert g.lower < 0.5 < g.upper and not g.passed
    assert not win_rate_gate([0.0], [1.0], threshold=0.5).passed
    # 2 samples per prompt, all wins: the interval is [1, 1]
    sure = win_rate_gate([1.0] * 4, [0.0] * 4, threshold=0.9, samples_per_prompt=2)
    assert (sure.value, sure.lower, sure.passed) == (1.0, 1.0, True)


def test_report_fails_when_any_gate_fails_and_lists_reasons():
    gates = {"reward_improvement": reward_improvement_gate([1.0], [1.0], 0.01),
             "win_rate": win_rate_gate([2.0] * 3, [1.0] * 3, 0.5)}
    report = make_report("policy-0002", gates, against="policy-0001", reference="policy-0001",
                         reward_model="reward-0001", prompts={}, settings={}, seconds=0.0)
    assert report.status == "failed" and report.failed == ["reward_improvement"]
    assert report.reasons[0].startswith("reward_improvement: mean reward")


class Prompts:
    def __init__(self, prompts):
        self.prompts = prompts

    def recent_prompts(self, limit):
        return self.prompts[:limit]


def test_held_out_prompts_eval_file_then_gate_slice_of_traffic_then_fallback(tmp_path):
    traffic = [f"prompt number {i}" for i in range(200)]
    in_slice = [p for p in traffic if is_gate_prompt(p, 0.1)]
    # a 10 % hash slice of 200 prompts: about 20 (binomial: 95 % within 12…28)
    assert 10 <= len(in_slice) <= 30
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("Operator prompt.\n\n  operator   PROMPT. \n")  # a near-duplicate
    s = GateSettings(num_prompts=len(in_slice) + 3, holdout_share=0.1,
                     eval_prompt_file=eval_file)
    prompts, sources = held_out_prompts(Prompts([" ", *traffic, in_slice[0].upper()]), s)
    assert prompts == ["Operator prompt.", *in_slice, *FALLBACK_PROMPTS[:2]]
    assert sources == {"total": len(in_slice) + 3, "traffic": len(in_slice), "eval_file": 1,
                       "fallback": 2}
    prompts, sources = held_out_prompts(None, GateSettings(num_prompts=len(FALLBACK_PROMPTS) + 1))
    assert prompts[-1] == FALLBACK_PROMPTS[0] and sources["traffic"] == 0


def test_gate_slice_is_a_stable_hash_of_the_normalised_prompt():
    p = "Explain   the TIDES to me"
    assert is_gate_prompt(p, 1.0) and not is_gate_prompt(p, 0.0)
    assert is_gate_prompt(p, 0.5) == is_gate_prompt("explain the tides to me", 0.5)
    # monotone in the share: a prompt in the 10 % slice is in the 20 % slice
    hits = [q for q in (f"q{i}" for i in range(300)) if is_gate_prompt(q, 0.1)]
    assert all(is_gate_prompt(q, 0.2) for q in hits)


def reward_registry(tmp_path) -> Registry:
    registry = Registry(tmp_path / "registry")
    src = tmp_path / "w"
    src.mkdir()
    (src / "w.bin").write_bytes(b"x")
    for config in [{"role": "optimised"}, {"role": "judge"}, {"role": "optimised"}]:
        registry.create_version("reward", src, {"config": config})
    registry.create_version("policy", src, {"config": {"reward_model": "reward-0001"}},
                            number=0)
    return registry


def test_the_optimised_rm_is_the_candidates_and_the_judge_is_held_out(tmp_path):
    registry = reward_registry(tmp_path)
    cand = registry.get("policy-0000")
    assert reward_model_for(registry, GateSettings(), cand) == "reward-0001"
    assert reward_model_for(registry, GateSettings()) == "reward-0003"  # newest
    # default judge: the newest role=judge version; never the optimised one
    assert judge_model_for(registry, GateSettings(), "reward-0001") == "reward-0002"
    assert judge_model_for(registry, GateSettings(), "reward-0002") is None
    assert judge_model_for(registry, GateSettings(judge_model="previous"), "reward-0003") \
        == "reward-0002"
    assert judge_model_for(registry, GateSettings(judge_model="none"), "reward-0001") is None


def test_gate_settings_from_environment(monkeypatch):
    monkeypatch.setenv("RLHF_GATES__MAX_KL", "2.5")
    monkeypatch.setenv("RLHF_GATES__MIN_WIN_RATE", "0.6")
    monkeypatch.setenv("RLHF_DEPLOY__AUTO_PROMOTE", "true")
    s = DeploySettings()
    assert (s.gates.max_kl, s.gates.min_win_rate, s.auto_promote) == (2.5, 0.6, True)
    monkeypatch.setenv("RLHF_GATES__MIN_WIN_RATE", "1.5")
    with pytest.raises(ValidationError, match="min_win_rate"):
        DeploySettings()
