"""Loss functions of the three InstructGPT steps, as small pure tensor functions.

Shapes: ``G`` prompt groups, ``K`` responses per group (padded), ``B`` sequences,
``T`` tokens, ``V`` vocabulary. Every function is differentiable and has no state.
The K-way ranking loss and the PPO-ptx term are written here by hand because no library
ships them; everything else defers to ``torch.nn.functional``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is true (padding excluded).

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``; bool or 0/1.
        dim: reduce over this dim only; ``None`` reduces over everything.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


class RankingLoss(NamedTuple):
    loss: torch.Tensor  # scalar
    accuracy: torch.Tensor  # scalar: fraction of untied pairs with r_w > r_l
    num_pairs: torch.Tensor  # scalar int: untied pairs that entered the loss


def pairwise_preferences(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(G, K, K) bool: ``[g, i, j]`` is true when response i is ranked strictly above j.

    Rank 1 is best, so i beats j when ``ranks[i] < ranks[j]``. Ties and padded responses
    give no pair.
    """
    valid = mask.bool()
    better = ranks.unsqueeze(2) < ranks.unsqueeze(1)  # (G, K, K)
    return better & valid.unsqueeze(2) & valid.unsqueeze(1)


def kway_ranking_loss(
    rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor
) -> RankingLoss:
    """InstructGPT reward-model loss with each prompt's K responses as one batch element.

    loss(θ) = -1/C(K,2) · E_(x, y_w, y_l)~D [ log σ( r_θ(x, y_w) − r_θ(x, y_l) ) ]

    (Ouyang et al. 2022, eq. 1). Each response is scored once and reused in every pair of
    its group. The per-group mean runs over the group's untied pairs (C(K,2) without
    ties), then groups are averaged; a group with no untied pair is skipped.

    Args:
        rewards: (G, K) scalar reward of each response.
        ranks: (G, K) integer rank, 1 = best; equal ranks are a tie.
        mask: (G, K) true for real responses, false for padding.

    Returns:
        ``RankingLoss(loss, accuracy, num_pairs)``; accuracy is the pairwise accuracy over
        all untied pairs of the batch.
    """
    pairs = pairwise_preferences(ranks, mask)  # (G, K, K)
    margin = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # (G, K, K): r_i − r_j
    per_pair = -F.logsigmoid(margin)  # (G, K, K)
    pairs_per_group = pairs.sum(dim=(1, 2))  # (G,)
    has_pairs = pairs_per_group > 0
    if not has_pairs.any():
        raise ValueError("kway_ranking_loss: batch has no untied pair (all ties or K<2)")
    group_loss = (per_pair * pairs).sum(dim=(1, 2)) / pairs_per_group.clamp(min=1)  # (G,)
    loss = group_loss[has_pairs].mean()
    with torch.no_grad():
        correct = ((margin > 0) & pairs).sum()
        num_pairs = pairs.sum()
        accuracy = correct.float() / num_pairs
    return RankingLoss(loss, accuracy, num_pairs)


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # scalar
    clip_fraction: torch.Tensor  # scalar: share of tokens where the clip was active
    approx_kl: torch.Tensor  # scalar: E[(ratio - 1) - log ratio] (Schulman's k3)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> PolicyLoss:
    """Clipped PPO surrogate (Schulman et al. 2017), clipped on both sides.

    L = −E_t[ min( ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t ) ],  ρ_t = π(a_t|s_t) / π_old(a_t|s_t)

    Args:
        logprobs: (B, T) log π of the taken tokens under the current policy.
        old_logprobs: (B, T) the same under the policy that generated the rollout.
        advantages: (B, T) per-token advantages (no gradient).
        mask: (B, T) true on response tokens.
        clip_eps: ε; InstructGPT uses 0.2.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = masked_mean(-torch.min(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped < unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> torch.Tensor:
    """Clipped value loss (PPO2 / OpenAI baselines): the worse of clipped and unclipped.

    L_V = ½ · E_t[ max( (V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε, ε) − R_t)² ) ]

    Args:
        values: (B, T) current value predictions.
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) GAE returns (targets).
        mask: (B, T) true on response tokens.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    worst = torch.max((values - returns) ** 2, (clipped - returns) ** 2)  # (B, T)
    return 0.5 * masked_mean(worst, mask)


def ptx_loss(logits: torch.Tensor, labels: torch.Tensor, ptx_coef: float) -> torch.Tensor:
    """PPO-ptx term: γ times the LM loss on pretraining or demonstration text.

    objective(φ) = … + γ · E_x~D_pretrain[ log π_φ^RL(x) ]; as a loss to minimise this is
    γ · CE(logits, next tokens). Hand-written composition of ``F.cross_entropy``.

    Args:
        logits: (B, T, V) policy logits.
        labels: (B, T) token ids; −100 marks positions without a loss. Shifted here:
            logits at t predict labels at t + 1.
        ptx_coef: γ (InstructGPT 27.8).
    """
    shift_logits = logits[:, :-1, :]  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    ce = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=-100,
    )
    return ptx_coef * ce


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = −Σ_v p_v log p_v of the softmax of ``logits``.

    Args:
        logits: (..., V). Returns (...).
    """
    return torch.distributions.Categorical(logits=logits).entropy()


# -- direct preference optimisation on stored rankings --------------------------------------

class PreferenceLoss(NamedTuple):
    loss: torch.Tensor  # scalar
    accuracy: torch.Tensor  # scalar: share of pairs whose implicit reward ranks them right
    margin: torch.Tensor  # scalar: mean β · (Δ_chosen − Δ_rejected)


def dpo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor,
             beta: float = 0.1, variant: str = "sigmoid") -> PreferenceLoss:
    """DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023) on (chosen, rejected) pairs.

    Δ = log π(y|x) − log π_ref(y|x), summed over the response's tokens, is the implicit
    reward / β. DPO: L = −log σ(β (Δ_w − Δ_l)); IPO: L = (Δ_w − Δ_l − 1/(2β))².

    Args:
        chosen_logratios, rejected_logratios: (P,) Δ of the preferred and the other answer.
        beta: β (TRL's default 0.1). variant: ``sigmoid`` (DPO) or ``ipo``.
    """
    diff = chosen_logratios - rejected_logratios  # (P,)
    if variant == "sigmoid":
        loss = -F.logsigmoid(beta * diff).mean()
    elif variant == "ipo":
        loss = ((diff - 1.0 / (2.0 * beta)) ** 2).mean()
    else:
        raise ValueError(f"dpo_loss: variant must be sigmoid or ipo, got {variant!r}")
    with torch.no_grad():
        accuracy = (diff > 0).float().mean()
        margin = (beta * diff).mean()
    return PreferenceLoss(loss, accuracy, margin)


def plackett_luce_loss(logratios: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor,
                       beta: float = 0.1) -> torch.Tensor:
    """Negative Plackett-Luce log-likelihood of K-way rankings under the implicit rewards
    β·Δ (DPO's K-way form, Rafailov et al. 2023 appendix A.3).

    The best answer is chosen among all, the next among the rest, and so on:
    −log P = −Σ_j [ β Δ_(j) − log Σ_{m: rank_m ≥ rank_(j)} exp(β Δ_m) ]. Tied answers stay in
    each other's denominators (Breslow's rule), so a tie is not a preference; the last
    stage (one answer left) adds nothing. Mean over groups of the sum over stages.

    Args:
        logratios: (G, K) Δ of each answer. ranks: (G, K), 1 = best. mask: (G, K) real.
    """
    valid = mask.bool()
    scores = beta * logratios
    # [g, j, m]: answer m is still in the choice set when answer j is chosen
    remaining = (ranks.unsqueeze(1) >= ranks.unsqueeze(2)) & valid.unsqueeze(1)
    denom = torch.logsumexp(scores.unsqueeze(1).masked_fill(~remaining, float("-inf")), dim=2)
    # a stage with only the chosen answer left is certain: log 1 = 0
    stage = (scores - denom).masked_fill(~valid | (remaining.sum(2) <= 1), 0.0)
    return -stage.sum(1).mean()
