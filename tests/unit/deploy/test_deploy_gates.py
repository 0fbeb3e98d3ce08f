"""The four promotion gates as pure functions, prompt selection and the settings."""

import pytest
from pydantic import ValidationError

from deploy.gates import (
    FALLBACK_PROMPTS,
    held_out_prompts,
    kl_gate,
    length_drift_gate,
    make_report,
    reward_improvement_gate,
    win_rate_gate,
)
from deploy.settings import DeploySettings


def test_reward_improvement_is_difference_of_means_and_threshold_inclusive():
    # mean(1, 3) = 2, mean(0, 1) = 0.5 → improvement 1.5
    g = reward_improvement_gate([1.0, 3.0], [0.0, 1.0], threshold=1.5)
    assert g.value == pytest.approx(1.5) and g.passed
    assert not reward_improvement_gate([1.0, 3.0], [0.0, 1.0], threshold=1.6).passed
    assert not reward_improvement_gate([1.0], [1.0], threshold=0.01).passed  # a copy


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


def test_win_rate_counts_ties_half():
    # win, tie, loss, win → (2 + 0.5) / 4
    g = win_rate_gate([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 1.0, 4.0], threshold=0.625)
    assert g.value == pytest.approx(0.625) and g.passed
    assert g.detail == {"wins": 2, "ties": 1, "losses": 1}
    assert not win_rate_gate([0.0], [1.0], threshold=0.5).passed


def test_report_fails_when_any_gate_fails_and_lists_reasons():
    gates = {"reward_improvement": reward_improvement_gate([1.0], [1.0], 0.01),
             "win_rate": win_rate_gate([1.0], [1.0], 0.5)}
    report = make_report("policy-0002", gates, against="policy-0001", reference="policy-0001",
                         reward_model="reward-0001", prompts={}, settings={}, seconds=0.0)
    assert report.status == "failed" and report.failed == ["reward_improvement"]
    assert report.reasons[0].startswith("reward_improvement: mean reward")


class Prompts:
    def __init__(self, prompts):
        self.prompts = prompts

    def recent_prompts(self, limit):
        return self.prompts[:limit]


def test_held_out_prompts_prefer_traffic_then_fallback():
    prompts, from_traffic = held_out_prompts(Prompts(["a", " ", "b"]), 4)
    assert prompts == ["a", "b", *FALLBACK_PROMPTS[:2]] and from_traffic == 2
    prompts, from_traffic = held_out_prompts(None, len(FALLBACK_PROMPTS) + 1)
    assert prompts[-1] == FALLBACK_PROMPTS[0] and from_traffic == 0


def test_gate_settings_from_environment(monkeypatch):
    monkeypatch.setenv("RLHF_GATES__MAX_KL", "2.5")
    monkeypatch.setenv("RLHF_GATES__MIN_WIN_RATE", "0.6")
    monkeypatch.setenv("RLHF_AUTO_PROMOTE", "true")
    s = DeploySettings()
    assert (s.gates.max_kl, s.gates.min_win_rate, s.auto_promote) == (2.5, 0.6, True)
    monkeypatch.setenv("RLHF_GATES__MIN_WIN_RATE", "1.5")
    with pytest.raises(ValidationError, match="min_win_rate"):
        DeploySettings()
