"""The measurements behind the gates: sample both policies, score, take log-probs.

Models are loaded one at a time and released before the next, so evaluating a large
policy needs memory for one policy (plus the reward model) rather than four.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.registry import Registry
from deploy.errors import GateError
from deploy.sampling import Policy, Samples, answer_logprobs, same_vocabulary, sample
from deploy.settings import GateSettings
from training.reward_model import RewardScorer


class VocabularyMismatch(GateError):
    """KL between policies with different tokenizers is meaningless."""


@dataclass(frozen=True)
class Measurements:
    """Per-prompt numbers, all lists in prompt order."""

    cand_rewards: list[float]
    live_rewards: list[float]
    cand_logprobs: list[float]  # Σ_t log π_cand of the candidate's own answers
    ref_logprobs: list[float]  # Σ_t log π_ref of the same answers
    cand_lengths: list[int]
    live_lengths: list[int]
    candidate: Samples
    live: Samples


def _sample(policy: Policy, prompts: list[str], s: GateSettings) -> Samples:
    return sample(policy, prompts, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                  seed=s.seed, batch_size=s.batch_size, max_prompt_tokens=s.max_prompt_tokens)


def _load(registry: Registry, version: str, s: GateSettings) -> Policy:
    return Policy.load(registry.path(version), version, s.device)


def measure(registry: Registry, s: GateSettings, prompts: list[str], *, candidate: str,
            live: str, reference: str, reward_model: str) -> Measurements:
    """Answers of candidate and live, the reference's log-probs, and every reward."""
    # 1. the candidate answers, and its own log-probs of those answers
    cand = _load(registry, candidate, s)
    cand_samples = _sample(cand, prompts, s)
    cand_logp = answer_logprobs(cand, cand_samples, s.batch_size)
    # 2. the live policy answers the same prompts with the same seed
    live_policy = _load(registry, live, s)
    live_samples = _sample(live_policy, prompts, s)
    # 3. the reference's log-probs of the candidate's answers (often the live model itself)
    ref = live_policy if reference == live else _load(registry, reference, s)
    if not same_vocabulary(cand, ref):
        raise VocabularyMismatch(f"{candidate} and {reference} use different tokenizers")
    ref_logp = answer_logprobs(ref, cand_samples, s.batch_size)
    for p in {id(cand): cand, id(live_policy): live_policy, id(ref): ref}.values():
        p.release()
    # 4. the reward model judges every answer
    scorer = RewardScorer.from_registry(registry, reward_model, device=s.device,
                                        batch_size=s.batch_size)
    cand_rewards = scorer.score(list(zip(prompts, cand_samples.responses, strict=True)))
    live_rewards = scorer.score(list(zip(prompts, live_samples.responses, strict=True)))
    return Measurements(cand_rewards, live_rewards, cand_logp.tolist(), ref_logp.tolist(),
                        cand_samples.lengths, live_samples.lengths, cand_samples, live_samples)
