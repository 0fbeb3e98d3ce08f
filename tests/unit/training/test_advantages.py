"""Rewards, GAE and KL controllers against hand-computed values."""

import pytest
import torch

from training.advantages import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalized_rewards,
    whiten,
)


def test_kl_penalized_rewards_score_at_last_real_token():
    score = torch.tensor([1.0, 2.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, -5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = kl_penalized_rewards(score, logprobs, ref, mask, kl_coef=0.1)
    # row 0: log π − log π_SFT = [0.5, 0, −1] → −0.1·kl = [−0.05, 0, 0.1]; +1 at t=2
    # row 1: kl = [0, 0, (padding)] → score 2 at t=1 (last real), padding stays 0
    assert out.flatten().tolist() == pytest.approx([-0.05, 0.0, 1.1, 0.0, 2.0, 0.0])


def test_gae_gamma_one():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # t2: δ = 1 + 0 − 0.4 = 0.6;          A = 0.6
    # t1: δ = 0 + 0.4 − 0.2 = 0.2;        A = 0.2 + 0.5·0.6 = 0.5
    # t0: δ = 0 + 0.2 − 0.5 = −0.3;       A = −0.3 + 0.5·0.5 = −0.05
    # returns = A + V = [0.45, 0.7, 1.0]
    assert adv.flatten().tolist() == pytest.approx([-0.05, 0.5, 0.6])
    assert ret.flatten().tolist() == pytest.approx([0.45, 0.7, 1.0])
    # λ = 1, γ = 1: A_t = Σ_{s≥t} R_s − V_t = 1 − V_t
    adv1, _ = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert adv1.flatten().tolist() == pytest.approx([0.5, 0.8, 0.6])


def test_gae_masks_padding():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 9.9]])  # 9.9 sits on padding and must not leak
    adv, ret = gae(rewards, values, torch.tensor([[1, 1, 0]]), gamma=1.0, lam=0.5)
    # t1 (last real): δ = 1 + 0 − 0.4 = 0.6; A = 0.6
    # t0: δ = 0 + 0.4 − 0.5 = −0.1; A = −0.1 + 0.5·0.6 = 0.2; returns [0.7, 1.0, 0]
    assert adv.flatten().tolist() == pytest.approx([0.2, 0.6, 0.0])
    assert ret.flatten().tolist() == pytest.approx([0.7, 1.0, 0.0])


def test_whiten_over_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    out = whiten(x, torch.tensor([[1, 1, 1, 0]]))
    # mean 2, var (1 + 0 + 1) / 3 = 2/3, std 0.816497 → ±1/0.816497 = ±1.224745
    assert out.flatten().tolist() == pytest.approx([-1.224745, 0.0, 1.224745, 0.0], abs=1e-5)


def test_adaptive_kl_controller_moves_towards_target():
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 12: e = clip(12/6 − 1) = 0.2 → β = 0.1·(1 + 0.2·256/10000) = 0.100512
    assert up.update(12.0, n_steps=256) == pytest.approx(0.100512)
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 3: e = clip(−0.5) = −0.2 → β = 0.1·(1 − 0.00512) = 0.099488
    assert down.update(3.0, n_steps=256) == pytest.approx(0.099488)
    assert FixedKLController(0.02).update(100.0, 256) == 0.02
