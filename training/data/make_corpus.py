"""Regenerate ``corpus.txt``: the small English text the tiny tokenizer is trained on.

The corpus is generated (not downloaded) so that it can ship with the repo and be rebuilt
byte-for-byte: ``python training/data/make_corpus.py > training/data/corpus.txt``.
It mixes short instructions and answers about everyday topics, which is also the shape
of the synthetic instruction set used by the local demo.
"""

import random

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the river", "a bird",
            "the city", "the old man", "a young girl", "the farmer", "the ship", "the sun",
            "the moon", "a small robot", "the library", "the garden", "the market"]
VERBS = ["walks", "sings", "reads", "waits", "runs", "shines", "grows", "sleeps", "writes",
         "listens", "builds", "travels", "smiles", "works", "plays", "rests"]
PLACES = ["in the park", "near the sea", "at home", "by the window", "under the tree",
          "in the morning", "at night", "after lunch", "on the hill", "in the kitchen",
          "before dinner", "across the bridge", "in the quiet room"]
ADJ = ["happy", "calm", "bright", "quick", "gentle", "kind", "brave", "clever", "warm",
       "quiet", "green", "blue", "red", "yellow", "soft", "strong"]
TASKS = ["Write a short sentence about", "Describe", "Tell me about", "Explain", "Summarize",
         "List three facts about", "Give an example of", "What is", "Why is", "How does"]
TOPICS = ["the weather", "a good breakfast", "learning to swim", "a rainy day", "the ocean",
          "friendship", "music", "a busy market", "the stars", "gardening", "reading books",
          "a mountain trip", "cooking rice", "the colors of autumn", "a kind neighbor",
          "numbers", "counting to ten", "the alphabet", "a sunny morning", "a happy song"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def sentence(rng: random.Random) -> str:
    return (f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} "
            f"{rng.choice(PLACES)} and feels {rng.choice(ADJ)}.")


def main(lines: int = 1200, seed: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(lines):
        kind = i % 4
        if kind == 0:
            print(f"{rng.choice(TASKS)} {rng.choice(TOPICS)}.")
            print(" ".join(sentence(rng) for _ in range(rng.randint(1, 3))))
        elif kind == 1:
            print(sentence(rng))
        elif kind == 2:
            k = rng.randint(2, 6)
            print("Count: " + ", ".join(NUMBERS[:k]) + ".")
        else:
            print(f"The {rng.choice(ADJ)} {rng.choice(TOPICS)} is {rng.choice(ADJ)} "
                  f"and {rng.choice(ADJ)}. Yes, it is good.")


if __name__ == "__main__":
    main()
