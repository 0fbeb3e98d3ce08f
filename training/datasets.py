"""Feedback-store rows → tokenised training examples and batches.

Two batch shapes:

* SFT: one demonstration per row, labels = token ids with the prompt masked by −100.
* Reward model: one *prompt group* per batch element (InstructGPT). The collator below
  flattens the K responses of every group into one (N, T) tensor, so each response is
  scored once, and returns the (G, K) index/ranks/mask the K-way loss needs to reuse each
  score in all C(K,2) pairs of its group. No library ships this; it is written here.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from training.formatting import encode_pair
from training.reward_model import pad_batch

T = TypeVar("T")


class TrainingDataError(ValueError):
    """The store holds no usable data for this recipe; the message says what is missing."""


def split_by_prompt(items: Sequence[T], prompt_of: Callable[[T], str], eval_fraction: float,
                    seed: int) -> tuple[list[T], list[T]]:
    """Train/eval split by distinct prompt, so no prompt is in both.

    With ``eval_fraction > 0`` and at least two prompts, at least one prompt is held out.
    """
    prompts = sorted({prompt_of(x) for x in items})
    random.Random(seed).shuffle(prompts)
    n_eval = round(len(prompts) * eval_fraction)
    if eval_fraction > 0 and len(prompts) >= 2:
        n_eval = min(max(n_eval, 1), len(prompts) - 1)
    held_out = set(prompts[:n_eval])
    train = [x for x in items if prompt_of(x) not in held_out]
    return train, [x for x in items if prompt_of(x) in held_out]


# -- SFT -----------------------------------------------------------------------------------

def sft_example(tokenizer, prompt: str, response: str, max_len: int) -> dict[str, list[int]]:
    """input_ids and labels, the loss only on response tokens (prompt labels are −100)."""
    enc = encode_pair(tokenizer, prompt, response, max_len)
    labels = [-100] * enc.prompt_len + enc.input_ids[enc.prompt_len:]
    return {"input_ids": enc.input_ids, "attention_mask": [1] * len(enc.input_ids),
            "labels": labels}


# -- reward model --------------------------------------------------------------------------

@dataclass(frozen=True)
class RankedGroup:
    """One prompt's K tokenised responses and their ranks (1 = best, equal = tie)."""

    prompt: str
    input_ids: list[list[int]]
    ranks: list[int]

    @property
    def k(self) -> int:
        return len(self.ranks)


def ranked_group(tokenizer, prompt: str, responses: Sequence[str], ranks: Sequence[int],
                 max_len: int) -> RankedGroup | None:
    """Tokenise a preference group; None when it has no untied pair (nothing to learn)."""
    if len(responses) != len(ranks):
        raise TrainingDataError(
            f"group of prompt {prompt[:40]!r}: {len(responses)} responses, {len(ranks)} ranks")
    if len(set(ranks)) < 2:
        return None
    ids = [encode_pair(tokenizer, prompt, r, max_len).input_ids for r in responses]
    return RankedGroup(prompt, ids, list(ranks))


def collate_groups(groups: Sequence[RankedGroup], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of G prompt groups → every response once, plus the (G, K) pair structure.

    Returns:
        input_ids, attention_mask: (N, T), N = Σ K_g responses, right-padded.
        index: (G, K_max) row of each group's k-th response in the N axis (0 on padding).
        ranks: (G, K_max) ranks; group_mask: (G, K_max) true on real responses.
    """
    k_max = max(g.k for g in groups)
    index = torch.zeros((len(groups), k_max), dtype=torch.long)
    ranks = torch.zeros((len(groups), k_max), dtype=torch.long)
    group_mask = torch.zeros((len(groups), k_max), dtype=torch.bool)
    seqs: list[list[int]] = []
    for g, group in enumerate(groups):
        index[g, : group.k] = torch.arange(len(seqs), len(seqs) + group.k)
        ranks[g, : group.k] = torch.tensor(group.ranks)
        group_mask[g, : group.k] = True
        seqs.extend(group.input_ids)
    input_ids, attention_mask = pad_batch(seqs, pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "index": index,
            "ranks": ranks, "group_mask": group_mask}


class GroupCollator:
    """``collate_fn`` for a DataLoader over RankedGroups (picklable for worker processes)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, groups: Sequence[RankedGroup]) -> dict[str, torch.Tensor]:
        return collate_groups(groups, self.pad_id)


# -- prompt identity: near-duplicates and the fixed gate slice -------------------------------

def normalise_prompt(prompt: str) -> str:
    """Case-folded, whitespace-collapsed text: prompts equal under it are near-duplicates."""
    return " ".join(prompt.casefold().split())


def in_slice(prompt: str, share: float, salt: str) -> bool:
    """Whether ``prompt`` falls in the ``share`` of prompts picked by a hash of its
    normalised text (salted per purpose), the same on every machine and in every run."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{salt}\0{normalise_prompt(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


GATE_SALT = "gate"
"""Salt of the gate-prompt slice: PPO never trains on it; the deploy gates judge on it."""

GOLD_SALT = "gold"
CAPABILITY_SALT = "capability"
CAPABILITY_SHARE = 0.1
"""Share of the packaged corpus's lines held out from every recipe and every synthetic
answer: the capability text the alignment-tax gate measures LM loss on."""
"""Salt of the gold rankings: no reward model trains on them; they measure its accuracy."""

JUDGE_SALT = "judge"
"""Salt of the judge's rankings: only the held-out judge reward model trains on them."""


def is_gate_prompt(prompt: str, share: float) -> bool:
    """True for prompts of the held-out gate slice (``share`` of all prompts)."""
    return in_slice(prompt, share, GATE_SALT)


def is_capability_text(line: str) -> bool:
    """Whether a corpus line belongs to the held-out capability slice."""
    return in_slice(line, CAPABILITY_SHARE, CAPABILITY_SALT)


def split_corpus(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """(training lines, capability lines) of a corpus: the capability slice never trains."""
    kept = [ln for ln in lines if ln.strip()]
    return ([ln for ln in kept if not is_capability_text(ln)],
            [ln for ln in kept if is_capability_text(ln)])
