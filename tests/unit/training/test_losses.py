"""Losses against hand-computed values; the arithmetic is in the comments."""

import math

import pytest
import torch

from training.losses import (
    entropy_from_logits,
    kway_ranking_loss,
    masked_mean,
    ppo_policy_loss,
    ptx_loss,
    value_loss,
)

NEG_LOGSIG_1 = math.log(1 + math.exp(-1))  # −log σ(1)  = log 1.367879 = 0.313262
NEG_LOGSIG_2 = math.log(1 + math.exp(-2))  # −log σ(2)  = log 1.135335 = 0.126928
NEG_LOGSIG_M1 = math.log(1 + math.e)  # −log σ(−1) = log 3.718282 = 1.313262


def test_masked_mean_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1 + 2 + 4) / 3 = 2.3333; per row: (1 + 2) / 2 = 1.5 and 4 / 1 = 4
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_kway_loss_k3_with_tie_plus_k2_and_all_tied_group():
    rewards = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 7.0], [5.0, 3.0, 0.0]])
    ranks = torch.tensor([[1, 2, 2], [1, 2, 0], [1, 1, 1]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    out = kway_ranking_loss(rewards, ranks, mask)
    # group 0 (K=3, responses 1 and 2 tied): pairs (0>1) margin 1, (0>2) margin 2
    #   (0.313262 + 0.126928) / 2 = 0.220095
    # group 1 (K=2, third slot is padding): pair (0>1) margin 0 − 1 = −1 → 1.313262
    # group 2: every response tied → no pair → skipped
    # loss = (0.220095 + 1.313262) / 2 = 0.766679
    g0 = (NEG_LOGSIG_1 + NEG_LOGSIG_2) / 2
    assert out.loss.item() == pytest.approx((g0 + NEG_LOGSIG_M1) / 2, abs=1e-6)
    # 3 untied pairs, margins 1, 2, −1 → 2 correct → 2/3
    assert out.num_pairs.item() == 3
    assert out.accuracy.item() == pytest.approx(2 / 3)


def test_kway_loss_weights_groups_not_pairs():
    rewards = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    ranks = torch.tensor([[1, 2, 3], [1, 2, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # group 0 (K=3, no ties) margins 2−1 = 1, 2−0 = 2, 1−0 = 1
    #   → (0.313262·2 + 0.126928) / 3 = 0.251151
    # group 1 (K=2) margin −1 → 1.313262
    # per-group average (0.251151 + 1.313262) / 2 = 0.782206; flattening the 4 pairs
    # would weight group 0 three times: (3·0.251151 + 1.313262) / 4 = 0.516679 instead
    g0 = (2 * NEG_LOGSIG_1 + NEG_LOGSIG_2) / 3
    out = kway_ranking_loss(rewards, ranks, mask)
    assert out.loss.item() == pytest.approx((g0 + NEG_LOGSIG_M1) / 2, abs=1e-6)


def test_kway_loss_gradient_reaches_every_scored_response():
    rewards = torch.zeros(1, 3, requires_grad=True)
    kway_ranking_loss(rewards, torch.tensor([[1, 2, 3]]), torch.ones(1, 3)).loss.backward()
    # d/dr of mean over pairs of −log σ(r_w − r_l) at 0: each pair contributes ∓0.5/3;
    # best is winner twice: −1/3; middle wins once and loses once: 0; worst: +1/3
    assert rewards.grad.flatten().tolist() == pytest.approx([-1 / 3, 0.0, 1 / 3])


def test_kway_loss_all_ties_is_a_clear_error():
    with pytest.raises(ValueError, match="no untied pair"):
        kway_ranking_loss(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2))


def test_ppo_policy_loss_clips_both_sides():
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 9.0]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    out = ppo_policy_loss(ratio.log(), torch.zeros_like(ratio), adv, mask, clip_eps=0.2)
    # ρ=1.5, A=+1: min(1.5, 1.2) = 1.2   → −1.2  (clipped above)
    # ρ=0.5, A=−1: min(−0.5, −0.8) = −0.8 → +0.8  (clipped below)
    # ρ=1.5, A=−1: min(−1.5, −1.2) = −1.5 → +1.5  (pessimistic side, not clipped)
    # ρ=0.5, A=+1: min(0.5, 0.8) = 0.5   → −0.5
    # mean over 4 real tokens: (−1.2 + 0.8 + 1.5 − 0.5) / 4 = 0.15; padding ignored
    assert out.loss.item() == pytest.approx(0.15, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    # k3 = (ρ−1) − log ρ: 1.5 → 0.5 − 0.405465 = 0.094535; 0.5 → −0.5 + 0.693147 = 0.193147
    assert out.approx_kl.item() == pytest.approx((0.094535 + 0.193147) / 2, abs=1e-5)


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    values = torch.tensor([[1.0, 1.0, 5.0]])
    old = torch.zeros(1, 3)
    returns = torch.tensor([[0.5, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: unclipped (1 − 0.5)² = 0.25, clipped V = 0.2: (0.2 − 0.5)² = 0.09 → 0.25
    # token 1: unclipped (1 − 2)² = 1,     clipped (0.2 − 2)² = 3.24            → 3.24
    # ½ · (0.25 + 3.24) / 2 = 0.8725
    assert value_loss(values, old, returns, mask, clip_eps=0.2).item() == pytest.approx(0.8725)


def test_ptx_loss_is_coef_times_shifted_lm_loss():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = math.log(3)  # softmax = [1/6, 3/6, 1/6, 1/6]
    labels = torch.tensor([[-100, 1, -100]])
    # only position 0 predicts a label (token 1): −log 0.5 = 0.693147; × γ = 2 → 1.386294
    assert ptx_loss(logits, labels, ptx_coef=2.0).item() == pytest.approx(2 * math.log(2))


def test_entropy_from_logits():
    logits = torch.zeros(2, 4)
    logits[1, 1] = math.log(3)
    # uniform over 4: ln 4 = 1.386294
    # [1/6, 1/2, 1/6, 1/6]: 3·(1/6)·ln 6 + ½·ln 2 = 0.895880 + 0.346574 = 1.242453
    expected = [math.log(4), 0.5 * math.log(6) + 0.5 * math.log(2)]
    assert entropy_from_logits(logits).tolist() == pytest.approx(expected, abs=1e-6)
