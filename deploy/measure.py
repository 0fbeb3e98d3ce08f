"""The measurements behind the gates: sample both policies, score, take log-probs.

Models are loaded one at a time and released before the next, so evaluating a large
policy needs memory for one policy (plus the reward model) rather than four.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.registry import Registry
from deploy.errors import GateError
from deploy.sampling import Policy, Samples, answer_logprobs, same_vocabulary, sample
from deploy.settings import GateSettings
from training.reward_model import RewardScorer


class VocabularyMismatch(GateError):
    """KL between policies with different tokenizers is meaningless."""


@dataclass(frozen=True)
class Measurements:
    """Per-sample numbers, all lists prompt-major: prompt 0's k samples, then prompt 1's …"""

    rewards: dict[str, tuple[list[float], list[float]]]  # RM version → (candidate, live)
    cand_logprobs: list[float]  # Σ_t log π_cand of the candidate's own answers
    ref_logprobs: list[float]  # Σ_t log π_ref of the same answers
    cand_lengths: list[int]
    live_lengths: list[int]
    candidate: Samples
    live: Samples
    reference: Samples | None = None  # the reference's own answers; None = it is live

    def __add__(self, other: Measurements) -> Measurements:
        """Two rounds of the same comparison, one after the other (a sequential gate)."""
        ref = None if self.reference is None or other.reference is None else (
            self.reference + other.reference)
        return Measurements(
            {v: (c + other.rewards[v][0], li + other.rewards[v][1])
             for v, (c, li) in self.rewards.items()},
            self.cand_logprobs + other.cand_logprobs, self.ref_logprobs + other.ref_logprobs,
            self.cand_lengths + other.cand_lengths, self.live_lengths + other.live_lengths,
            self.candidate + other.candidate, self.live + other.live, ref)

    @property
    def reference_answers(self) -> Samples:
        return self.live if self.reference is None else self.reference


def _sample(policy: Policy, prompts: list[str], s: GateSettings, max_new_tokens: int
            ) -> Samples:
    return sample(policy, prompts, max_new_tokens=max_new_tokens, temperature=s.temperature,
                  seed=s.seed, batch_size=s.batch_size, max_prompt_tokens=s.max_prompt_tokens)


def _load(registry: Registry, version: str, s: GateSettings) -> Policy:
    return Policy.load(registry.path(version), version, s.device)


def measure(registry: Registry, s: GateSettings, prompts: list[str], *, candidate: str,
            live: str, reference: str, reward_models: list[str], samples_per_prompt: int = 1,
            max_new_tokens: int = 48, unfinished_penalty: float = 0.0,
            sample_reference: bool = False) -> Measurements:
    """``samples_per_prompt`` answers of candidate and live to each prompt (sample j of a
    prompt is drawn with the same seed for both), the reference's log-probs of the
    candidate's answers, and every reward model's score of every answer.

    An answer cut at ``max_new_tokens`` (no stop id sampled) is scored as unfinished, as
    PPO's default ``truncation: penalty`` scores it: the reward model's score minus
    ``unfinished_penalty``. ``sample_reference``: the reference (when it is not live)
    answers too, for the diversity gate."""
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    # 1. the candidate answers, and its own log-probs of those answers
    cand = _load(registry, candidate, s)
    cand_samples = _sample(cand, repeated, s, max_new_tokens)
    cand_logp = answer_logprobs(cand, cand_samples, s.batch_size)
    # 2. the live policy answers the same prompts with the same seed
    live_policy = _load(registry, live, s)
    live_samples = _sample(live_policy, repeated, s, max_new_tokens)
    # 3. the reference's log-probs of the candidate's answers (often the live model itself)
    ref = live_policy if reference == live else _load(registry, reference, s)
    if not same_vocabulary(cand, ref):
        raise VocabularyMismatch(f"{candidate} and {reference} use different tokenizers")
    ref_logp = answer_logprobs(ref, cand_samples, s.batch_size)
    ref_samples = (_sample(ref, repeated, s, max_new_tokens)
                   if sample_reference and ref is not live_policy else None)
    for p in {id(cand): cand, id(live_policy): live_policy, id(ref): ref}.values():
        p.release()
    # 4. every reward model judges every answer
    rewards = {}
    for version in reward_models:
        scorer = RewardScorer.from_registry(registry, version, device=s.device,
                                            batch_size=s.batch_size)
        rewards[version] = (
            unfinished_scored(scorer.score(list(zip(repeated, cand_samples.responses,
                                                    strict=True))),
                              cand_samples, unfinished_penalty),
            unfinished_scored(scorer.score(list(zip(repeated, live_samples.responses,
                                                    strict=True))),
                              live_samples, unfinished_penalty))
    return Measurements(rewards, cand_logp.tolist(), ref_logp.tolist(), cand_samples.lengths,
                        live_samples.lengths, cand_samples, live_samples, ref_samples)


def unfinished_scored(rewards: list[float], samples: Samples, penalty: float) -> list[float]:
    """``rewards`` with ``penalty`` subtracted from answers that did not finish."""
    if not samples.finished:
        return rewards
    return [r if done else r - penalty
            for r, done in zip(rewards, samples.finished, strict=True)]


def _lm_loss(registry: Registry, version: str, s: GateSettings,
             make_examples: Callable[[Any], list[dict]], empty: str) -> float:
    """Token-weighted LM loss (nats/token) of ``version`` on the examples (``input_ids``
    and ``labels``, -100 = not scored) that ``make_examples(tokenizer)`` builds. The model
    is loaded, used and released here (one model in memory at a time)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    path = registry.path(version)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = model.to(s.device)  # type: ignore[arg-type]
    model.eval()
    examples = make_examples(tokenizer)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), s.batch_size):
            batch = {k: v.to(s.device)
                     for k, v in collate(examples[start:start + s.batch_size]).items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += model(**batch).loss.item() * n
            tokens += n
    del model
    if tokens == 0:
        raise GateError(f"{version}: {empty}")
    return total / tokens


def text_lm_loss(registry: Registry, version: str, texts: list[str], s: GateSettings,
                 max_len: int) -> float:
    """LM loss of ``version`` on plain ``texts`` (every token scored, each closed by EOS)."""
    from training.recipes.ppo import lm_examples

    return _lm_loss(registry, version, s, lambda tok: lm_examples(tok, texts, max_len),
                    "the capability texts have no tokens")


def heldout_lm_loss(registry: Registry, version: str, demos: list, s: GateSettings,
                    max_len: int) -> float:
    """LM loss of ``version`` on the response tokens of ``demos`` (prompt tokens are not
    scored), as the SFT recipe measures its eval loss."""
    from training.datasets import sft_example

    return _lm_loss(registry, version, s,
                    lambda tok: [sft_example(tok, d.prompt, d.response, max_len)
                                 for d in demos],
                    f"the held-out demonstrations have no response tokens within max_len "
                    f"{max_len}")
