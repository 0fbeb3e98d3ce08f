"""The demo's synthetic instruction set and its simulated labelers' hidden preference.

Prompts are instructions about everyday topics, in the vocabulary of the corpus the tiny
tokenizer was trained on. The topics are split once, deterministically: prompts about
*held-out* topics are never sent to the server, so the demo can measure each policy on
instructions the platform has never seen.

The labelers' preference is :func:`training.synthetic.hidden_score` (more occurrences of
the word "good" is better). Only the labelers (this module and ``rlhf.demo``) know it; the
platform sees nothing but rankings of its own samples and some demonstrations. The
demonstrations say "good" exactly once, so imitating them (SFT) reaches a score of about
1, and anything above that has to come from the rankings (reward model + PPO).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training.synthetic import hidden_score, ranks_of

TASKS = ("Write a short sentence about", "Describe", "Tell me about", "Explain",
         "Summarize", "Give an example of", "What is", "How does")
TOPICS = ("the weather", "learning to swim", "a rainy day", "the ocean", "friendship",
          "music", "a busy market", "the stars", "gardening", "reading books",
          "a mountain trip", "cooking rice", "the colors of autumn", "a kind neighbor",
          "numbers", "counting to ten", "the alphabet", "a sunny morning", "a happy song",
          "the city")
HELD_OUT_EVERY = 4
"""Every fourth topic is held out: 5 of 20 topics, 40 of 160 prompts."""
ADJECTIVES = ("happy", "calm", "bright", "quick", "gentle", "kind", "brave", "clever",
              "warm", "quiet", "soft", "strong")


@dataclass(frozen=True)
class InstructionSet:
    """Train prompts (sent as traffic) and held-out prompts (only used to measure)."""

    train: list[str]
    held_out: list[str]


def instruction_set() -> InstructionSet:
    """The fixed split: prompts about every ``HELD_OUT_EVERY``-th topic are held out."""
    train: list[str] = []
    held_out: list[str] = []
    for i, topic in enumerate(TOPICS):
        bucket = held_out if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train
        bucket += [f"{task} {topic}." for task in TASKS]
    return InstructionSet(train, held_out)


def gate_prompts(seed: int = 0) -> list[str]:
    """Prompts for the promotion gates: the training topics and tasks, phrased as no
    labeler sends them (so PPO never trains on them), shuffled so that every sequential
    round of the gates covers many topics; the report's held-out topics stay unseen."""
    tasks = instruction_set()
    prompts = [f"{p[:-1]}, in a few words." for p in tasks.train]
    random.Random(seed).shuffle(prompts)
    return prompts


def topic_of(prompt: str) -> str:
    """The topic an instruction is about (the text after its task words)."""
    for task in TASKS:
        if prompt.startswith(task + " "):
            return prompt[len(task) + 1:].rstrip(".")
    return prompt.rstrip(".")


def ideal_response(prompt: str, rng: random.Random) -> str:
    """A labeler's demonstration: on topic, and saying "good" exactly once."""
    a, b, c = rng.sample(ADJECTIVES, 3)
    return f"The {a} {topic_of(prompt)} is {b} and {c}. Yes, it is good."


def rank(responses: list[str]) -> list[int]:
    """The labeler's ranking of K responses: 1 = best by the hidden rule; ties share."""
    return ranks_of([hidden_score(r) for r in responses])
