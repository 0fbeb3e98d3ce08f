"""Who labels which item next, and the blind shuffle: pure functions, no I/O.

Rules (InstructGPT's overlap design): a labeler never sees the same item twice, and an item
is finished by ``overlap`` distinct labelers before a new item is started, so overlap
(and with it agreement) builds up item by item instead of thinly across the queue.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ItemLoad:
    """An item as the chooser sees it."""

    item_id: int
    taken: int
    """Labelers who finished it or hold an unexpired lease on it (skips do not count)."""
    seen: bool
    """Whether this labeler was ever given it (done, skipped or held)."""


def choose_item(loads: Sequence[ItemLoad], overlap: int) -> int | None:
    """The item to hand out next: unseen by this labeler, below ``overlap``, the most
    advanced first (then the oldest). None when the labeler has nothing left."""
    eligible = [x for x in loads if not x.seen and x.taken < overlap]
    if not eligible:
        return None
    return min(eligible, key=lambda x: (-x.taken, x.item_id)).item_id


def display_order(k: int, rng: random.Random | None = None) -> list[int]:
    """A random permutation of the K answers: slot s shows answer ``order[s]``."""
    order = list(range(k))
    (rng or random.Random()).shuffle(order)
    return order


def to_canonical(order: Sequence[int], per_slot: Sequence[T]) -> list[T]:
    """Values given per displayed slot, back in canonical answer order."""
    if sorted(order) != list(range(len(per_slot))):
        raise ValueError(f"display order {list(order)} does not match {len(per_slot)} values")
    out: list[T] = [per_slot[0]] * len(per_slot)
    for slot, answer in enumerate(order):
        out[answer] = per_slot[slot]
    return out


def normalise_ranks(ranks: Sequence[int]) -> list[int]:
    """Dense ranks 1, 2, … keeping ties: [1, 3, 3, 4] → [1, 2, 2, 3]."""
    distinct = sorted(set(ranks))
    return [distinct.index(r) + 1 for r in ranks]
