"""The critic-free baselines and the direct-preference losses, against hand-derived values
(issue 29's first pieces; the recipes that use them are not built yet)."""

import math

import pytest
import torch

from training.advantages import grpo_advantages, kl_k3, rloo_advantages
from training.losses import dpo_loss, plackett_luce_loss

SCORES = torch.tensor([[1.0, 2.0, 3.0, 6.0]])


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    # A_0 = 1 − mean(2, 3, 6) = 1 − 11/3 = −8/3; A_3 = 6 − mean(1, 2, 3) = 4
    assert rloo_advantages(SCORES).tolist()[0] == pytest.approx([-8 / 3, -4 / 3, 0.0, 4.0])
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.ones(3, 1))


def test_grpo_divides_by_the_group_std_and_dr_grpo_does_not():
    # mean 3, deviations −2, −1, 0, 3; sample variance (4 + 1 + 0 + 9) / 3 = 14/3
    std = math.sqrt(14 / 3)
    assert grpo_advantages(SCORES, eps=0.0).tolist()[0] == pytest.approx(
        [-2 / std, -1 / std, 0.0, 3 / std])
    assert grpo_advantages(SCORES, scale=False).tolist()[0] == pytest.approx(
        [-2.0, -1.0, 0.0, 3.0])
    # a group whose samples all score the same teaches nothing, and is not a NaN
    assert grpo_advantages(torch.full((1, 3), 5.0)).tolist() == [[0.0, 0.0, 0.0]]


def test_k3_is_zero_on_agreement_and_matches_the_formula():
    lp = torch.tensor([[-1.0, -2.0]])
    assert kl_k3(lp, lp).tolist() == [[0.0, 0.0]]
    # d = ref − lp = 0.5: e^0.5 − 0.5 − 1 = 0.148721
    assert kl_k3(torch.tensor([[-1.5]]), torch.tensor([[-1.0]])).item() == pytest.approx(
        math.exp(0.5) - 1.5)


def test_dpo_and_ipo_on_one_pair():
    chosen, rejected = torch.tensor([1.0]), torch.tensor([-1.0])
    out = dpo_loss(chosen, rejected, beta=0.1)
    # −log σ(0.1 · 2) = log(1 + e^−0.2) = 0.598139
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.2)))
    assert out.accuracy.item() == 1.0 and out.margin.item() == pytest.approx(0.2)
    # IPO: (2 − 1/(2 · 0.1))² = (2 − 5)² = 9
    assert dpo_loss(chosen, rejected, beta=0.1, variant="ipo").loss.item() == pytest.approx(9.0)
    with pytest.raises(ValueError, match="variant"):
        dpo_loss(chosen, rejected, variant="hinge")


def test_plackett_luce_on_a_three_way_ranking():
    logratios = torch.tensor([[2.0, 1.0, 0.0]])
    ranks, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)
    # β = 1: −[2 − log(e² + e + 1)] − [1 − log(e + 1)] − 0 (the last answer is certain)
    expected = -(2 - math.log(math.e ** 2 + math.e + 1)) - (1 - math.log(math.e + 1))
    assert plackett_luce_loss(logratios, ranks, mask, beta=1.0).item() == pytest.approx(
        expected)  # 0.72093


def test_plackett_luce_with_two_answers_is_the_dpo_loss():
    chosen, rejected = torch.tensor([0.7]), torch.tensor([-0.4])
    pl = plackett_luce_loss(torch.stack([chosen, rejected], 1), torch.tensor([[1, 2]]),
                            torch.ones(1, 2, dtype=torch.bool), beta=0.1)
    assert pl.item() == pytest.approx(dpo_loss(chosen, rejected, beta=0.1).loss.item())


def test_plackett_luce_ignores_padding_and_keeps_ties_in_each_others_choice_sets():
    # answers 0 and 1 tie for first, 2 is worse, slot 3 is padding
    logratios = torch.tensor([[1.0, 0.0, -1.0, 99.0]])
    ranks = torch.tensor([[1, 1, 3, 0]])
    mask = torch.tensor([[True, True, True, False]])
    all3 = math.log(math.e + 1 + math.exp(-1))
    # stage of 0: 1 − log(e¹ + e⁰ + e⁻¹); of 1: 0 − the same; of 2: alone, certain
    expected = -((1 - all3) + (0 - all3))
    assert plackett_luce_loss(logratios, ranks, mask, beta=1.0).item() == pytest.approx(
        expected)


def test_critic_free_configs_need_whole_groups_in_a_batch():
    from pydantic import ValidationError

    from training.recipes.ppo import PPOConfig, group_advantages

    assert PPOConfig(algorithm="rloo", samples_per_prompt=4, batch_size=16).critic_free
    assert not PPOConfig().critic_free
    with pytest.raises(ValidationError, match="must divide by samples_per_prompt"):
        PPOConfig(algorithm="grpo", samples_per_prompt=3, batch_size=16, minibatch_size=8)
    # the algorithm names pick the baselines above
    assert group_advantages(SCORES, "rloo").tolist() == rloo_advantages(SCORES).tolist()
    assert group_advantages(SCORES, "dr_grpo").tolist() == [[-2.0, -1.0, 0.0, 3.0]]
