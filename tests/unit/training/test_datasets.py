"""The K-way group collator, the prompt split and SFT label masking."""

import torch

from training.datasets import RankedGroup, collate_groups, split_by_prompt


def test_collate_groups_scores_each_response_once_and_keeps_groups():
    g1 = RankedGroup("p1", [[5, 6, 7], [8], [9, 9]], [1, 2, 2])  # K=3 with a tie
    g2 = RankedGroup("p2", [[4, 4, 4, 4], [3]], [2, 1])  # a comparison: K=2
    batch = collate_groups([g1, g2], pad_id=0)
    # 5 responses in one flat (N, T) tensor, right-padded to the longest (4 tokens)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [9, 9, 0, 0],
                                           [4, 4, 4, 4], [3, 0, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 1, 2, 4, 1]
    # (G, K_max) structure: group 2's third slot is padding
    assert batch["index"].tolist() == [[0, 1, 2], [3, 4, 0]]
    assert batch["ranks"].tolist() == [[1, 2, 2], [2, 1, 0]]
    assert batch["group_mask"].tolist() == [[True, True, True], [True, True, False]]
    # gathering the flat scores gives each group its own responses' scores
    scores = torch.tensor([10.0, 11.0, 12.0, 13.0, 14.0])
    grouped = scores[batch["index"]]
    assert grouped[batch["group_mask"]].tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    items = [(f"p{i % 7}", i) for i in range(40)]
    train, held_out = split_by_prompt(items, lambda x: x[0], eval_fraction=0.3, seed=0)
    assert len(train) + len(held_out) == 40
    assert {p for p, _ in train}.isdisjoint({p for p, _ in held_out})
    assert len({p for p, _ in held_out}) == 2  # round(7 · 0.3) = 2 prompts
    assert split_by_prompt(items, lambda x: x[0], 0.3, seed=0) == (train, held_out)
    # at least one prompt is held out whenever there are two
    _, tiny = split_by_prompt([("a", 1), ("b", 2)], lambda x: x[0], 0.1, seed=0)
    assert len(tiny) == 1
