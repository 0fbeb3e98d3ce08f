"""Synthetic feedback from a hidden scoring rule, for tests, benchmarks and the demo.

The rule: a response is better the more times it contains the marker word. Rankings
follow the rule exactly (equal counts are ties), so a reward model that learns the rule
ranks held-out groups correctly, and a policy that learns it scores higher under both the
reward model and the rule itself.
"""

from __future__ import annotations

import random
import re

from core.events import Demonstration, Ranking
from training.datasets import split_corpus
from training.tiny_model import CORPUS

MARKER = "good"


def hidden_score(text: str, words: tuple[str, ...] = (MARKER,)) -> int:
    """The hidden rule: how many times the marker word (or any of ``words``) occurs."""
    return sum(len(re.findall(rf"\b{w}\b", text.lower())) for w in words)


def corpus_sentences() -> list[str]:
    """Corpus lines synthetic answers are made from: without the marker word, and without
    the held-out capability slice (``training.datasets.split_corpus``)."""
    lines = split_corpus([ln.strip() for ln in CORPUS.read_text().splitlines()])[0]
    return [ln for ln in lines if MARKER not in ln.lower()]


def synthetic_response(rng: random.Random, sentences: list[str], markers: int,
                       word: str = MARKER) -> str:
    words = rng.choice(sentences).split()[:10]
    for _ in range(markers):
        words.insert(rng.randrange(len(words) + 1), word)
    return " ".join(words)


def ranks_of(scores: list[int]) -> list[int]:
    """Competition ranks, 1 = highest score; equal scores share a rank (a tie)."""
    return [1 + sum(s > x for s in scores) for x in scores]


def synthetic_rankings(n_prompts: int, k_min: int = 2, k_max: int = 5, seed: int = 0,
                       source: str = "labeler", words: tuple[str, ...] = (MARKER,)
                       ) -> list[Ranking]:
    """One Ranking per prompt, K uniform in [k_min, k_max], ranked by the hidden rule.

    Each response carries 0–2 copies of one of ``words`` (drawn per response when there
    are several) and ranks by ``hidden_score(·, words)``. Rankings that also reward a
    second word make a *flawed* reward model for reward-hacking tests.
    """
    rng, sentences = random.Random(seed), corpus_sentences()
    events = []
    for i in range(n_prompts):
        k = rng.randint(k_min, k_max)
        counts = [rng.randint(0, 2) for _ in range(k)]
        if len(set(counts)) == 1:
            counts[0] = (counts[0] + 1) % 3
        chosen = [words[0] if len(words) == 1 else rng.choice(words) for _ in counts]
        responses = [synthetic_response(rng, sentences, c, w) for c, w in zip(counts, chosen,
                                                                               strict=True)]
        prompt = f"{rng.choice(sentences)} (#{i})"
        events.append(Ranking(prompt=prompt, responses=responses,
                              ranks=ranks_of([hidden_score(r, words) for r in responses]),
                              source=source))
    return events


def synthetic_demonstrations(n: int, seed: int = 0, markers: int = 1) -> list[Demonstration]:
    """Demonstrations whose responses follow the rule (``markers`` marker words each)."""
    rng, sentences = random.Random(seed), corpus_sentences()
    return [Demonstration(prompt=f"{rng.choice(sentences)} (demo {i})",
                          response=synthetic_response(rng, sentences, markers),
                          source="labeler") for i in range(n)]
