"""Answers of a policy to held-out prompts, and their log-probabilities under any policy.

The gates compare two policies on the *same* prompts with the *same* sampling seed, so a
copy of the live policy produces exactly the live policy's answers and every difference
the gates see comes from the weights. Sampling uses the policy's own distribution
(``top_k=0``, ``top_p=1``) so that the candidate's samples are draws from π_cand, which
the KL estimate needs.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.formatting import render_prompt, stop_token_ids
from training.reward_model import pad_batch


@dataclass(frozen=True)
class Samples:
    """One answer per prompt, as text and as token ids."""

    prompts: list[str]
    responses: list[str]  # decoded answers, special tokens removed
    prompt_ids: list[list[int]]  # the rendered prompt's ids (cut to max_prompt_tokens)
    response_ids: list[list[int]]  # sampled ids, EOS included when it was sampled
    finished: list[bool] = field(default_factory=list)  # a stop id was sampled (not cut)

    def __add__(self, other: Samples) -> Samples:
        return Samples(self.prompts + other.prompts, self.responses + other.responses,
                       self.prompt_ids + other.prompt_ids,
                       self.response_ids + other.response_ids, self.finished + other.finished)

    @property
    def lengths(self) -> list[int]:
        """Answer lengths in tokens (EOS included)."""
        return [len(r) for r in self.response_ids]


@dataclass
class Policy:
    """A causal LM and its tokenizer, loaded for evaluation."""

    name: str
    model: Any  # a transformers PreTrainedModel (its stubs are too loose for mypy)
    tokenizer: Any  # a transformers tokenizer
    stop_ids: list[int] = field(default_factory=list)  # generation config's EOS ids

    @classmethod
    def load(cls, path: Path, name: str, device: str = "cpu") -> Policy:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = model.to(device)  # type: ignore[arg-type]
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(name, model.eval(), tokenizer, stop_token_ids(path, tokenizer))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def release(self) -> None:
        """Free the weights now; the gates load up to four models one after another."""
        self.model = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def same_vocabulary(a: Policy, b: Policy) -> bool:
    """Log-probs of one policy's token ids under another only mean something if True."""
    return a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int) -> list[list[int]]:
    """Rendered prompt ids, keeping the last ``max_prompt_tokens`` (nearest the answer)."""
    ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
           for p in prompts]
    return [i[-max_prompt_tokens:] for i in ids]


def left_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and mask, padded on the left so every row's answer starts at column T."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def cut_at_eos(ids: list[int], stop_ids: int | Sequence[int]) -> list[int]:
    """The answer up to and including its first stop id; padding after it is dropped."""
    stops = {stop_ids} if isinstance(stop_ids, int) else set(stop_ids)
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    return ids


@torch.no_grad()
def sample(policy: Policy, prompts: Sequence[str], *, max_new_tokens: int, temperature: float,
           seed: int, batch_size: int, max_prompt_tokens: int) -> Samples:
    """One seeded answer per prompt; batch ``b`` is sampled after ``manual_seed(seed + b)``."""
    tok = policy.tokenizer
    stops = policy.stop_ids or [tok.eos_token_id]
    prompt_ids = encode_prompts(tok, prompts, max_prompt_tokens)
    answers: list[list[int]] = []
    for b, start in enumerate(range(0, len(prompt_ids), batch_size)):
        ids, mask = left_pad(prompt_ids[start: start + batch_size], tok.pad_token_id)
        torch.manual_seed(seed + b)
        out = policy.model.generate(
            input_ids=ids.to(policy.device), attention_mask=mask.to(policy.device),
            do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
            eos_token_id=stops)  # (B, T + new)
        answers += [cut_at_eos(row, stops) for row in out[:, ids.size(1):].tolist()]
    texts = [tok.decode(a, skip_special_tokens=True) for a in answers]
    finished = [bool(a) and a[-1] in stops for a in answers]
    return Samples(list(prompts), texts, prompt_ids, answers, finished)


@torch.no_grad()
def answer_logprobs(policy: Policy, samples: Samples, batch_size: int) -> torch.Tensor:
    """(N,) Σ_t log π(y_t | x, y_<t) over each answer's tokens, at temperature 1."""
    seqs = [p + r for p, r in zip(samples.prompt_ids, samples.response_ids, strict=True)]
    totals = torch.zeros(len(seqs), dtype=torch.float64)
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start: start + batch_size]
        ids, mask = pad_batch(batch, policy.tokenizer.pad_token_id)  # (B, T)
        logits = policy.model(input_ids=ids.to(policy.device),
                              attention_mask=mask.to(policy.device)).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V) predicts ids[:, 1:]
        token_logp = logp.gather(-1, ids[:, 1:, None].to(policy.device)).squeeze(-1)  # (B, T-1)
        for row, i in enumerate(range(start, start + len(batch))):
            first, last = len(samples.prompt_ids[i]), len(seqs[i])  # answer = ids[first:last]
            totals[i] = token_logp[row, first - 1: last - 1].double().sum().cpu()
    return totals
