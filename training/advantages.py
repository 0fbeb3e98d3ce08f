"""Per-token rewards, advantages and the KL coefficient of InstructGPT's PPO step.

The environment is a bandit: one prompt, one response, one reward at the end. The reward
seen by PPO is the reward model's score at the final response token minus a per-token KL
penalty against the frozen SFT policy; advantages come from GAE with γ = 1.
Shapes: ``B`` sequences, ``T`` response tokens (right-padded, ``mask`` marks real ones).
"""

from __future__ import annotations

import torch

from training.losses import masked_mean


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last true position of each row of a (B, T) mask."""
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


def kl_penalized_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token reward R_t = 1[t = last] · r(x, y) − β · (log π_RL(y_t) − log π_SFT(y_t)).

    InstructGPT's objective E[r(x,y) − β log(π_RL(y|x) / π_SFT(y|x))] with the KL term
    spread over the tokens, so each token pays for its own divergence.

    Args:
        score: (B,) reward-model score of each full response (bias already applied).
        logprobs: (B, T) log π_RL of each response token.
        ref_logprobs: (B, T) log π_SFT of the same tokens.
        mask: (B, T) true on real response tokens.
        kl_coef: β (InstructGPT 0.02).

    Returns:
        (B, T) rewards; zero on padding.
    """
    m = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * m  # (B, T)
    last = last_token_index(mask)  # (B,)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded rows.

    δ_t = R_t + γ V_{t+1} − V_t,  A_t = δ_t + γ λ A_{t+1},  returns_t = A_t + V_t,
    with V and A after the last real token taken as 0 (the episode ends there).

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value predictions.
        mask: (B, T) true on real tokens.
        gamma: discount; 1.0 for InstructGPT's bandit.
        lam: GAE λ.

    Returns:
        ``(advantages, returns)``, both (B, T) and zero on padding.
    """
    m = mask.to(values.dtype)
    values = values * m
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean if ``shift_mean``) over ``mask``."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


class FixedKLController:
    """A constant β."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Adaptive β of Ziegler et al. (2019): steer the observed KL towards ``target``.

    e = clip(KL / target − 1, −0.2, 0.2),  β ← β · (1 + e · n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController: target and horizon must be positive")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
                       ) -> torch.Tensor:
    """How much of the returns' variance the value function explains, over ``mask``.

    EV = 1 − Var[R − V] / Var[R]: 1 is a perfect critic, 0 no better than a constant,
    negative worse than one. Returns NaN-free 0 when the returns are constant.

    Args:
        values, returns, mask: (B, T).
    """
    def var(x: torch.Tensor) -> torch.Tensor:
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)

    var_returns = var(returns)
    if var_returns <= 0:
        return torch.zeros((), dtype=returns.dtype)
    return 1.0 - var(returns - values) / var_returns


# -- critic-free baselines (RLOO, GRPO): k samples of one prompt are each other's baseline --

def rloo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): each sample's
    baseline is the mean score of the prompt's other k − 1 samples.

    A_i = r_i − 1/(k−1) Σ_{j≠i} r_j = k/(k−1) · (r_i − mean(r))

    Args:
        scores: (G, k) sequence scores of k ≥ 2 samples for each of G prompts.
    Returns:
        (G, k) advantages, one per sequence (broadcast over its tokens by the caller).
    """
    k = scores.size(1)
    if k < 2:
        raise ValueError("rloo_advantages: needs k >= 2 samples per prompt")
    return (scores - scores.mean(dim=1, keepdim=True)) * (k / (k - 1))


def grpo_advantages(scores: torch.Tensor, scale: bool = True, eps: float = 1e-6
                    ) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024): the prompt's mean subtracted and,
    with ``scale``, divided by its sample standard deviation; ``scale=False`` is Dr. GRPO
    (Liu et al. 2025), which drops the division (it up-weights prompts whose samples barely
    differ).

    Args:
        scores: (G, k) sequence scores, k ≥ 2. Returns (G, k).
    """
    if scores.size(1) < 2:
        raise ValueError("grpo_advantages: needs k >= 2 samples per prompt")
    centred = scores - scores.mean(dim=1, keepdim=True)
    return centred / (scores.std(dim=1, keepdim=True) + eps) if scale else centred


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1
    (Schulman 2020), ≥ 0 and unbiased under samples of π: GRPO's KL loss term.

    Args:
        logprobs, ref_logprobs: (B, T) log-probs of the sampled tokens. Returns (B, T).
    """
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0
