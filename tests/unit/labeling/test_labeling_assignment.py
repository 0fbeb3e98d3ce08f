"""Pure parts of assignment (who gets what, the blind shuffle) and of the human win rate."""

from __future__ import annotations

import random

import pytest

from labeling.assignment import (
    ItemLoad,
    choose_item,
    display_order,
    normalise_ranks,
    to_canonical,
)
from labeling.settings import HumanEvalSettings
from labeling.winrate import check_human_win_rate, wilson_interval, win_rate


def test_items_reach_their_overlap_before_new_ones_start():
    loads = [ItemLoad(1, 0, False), ItemLoad(2, 1, False), ItemLoad(3, 2, False)]
    assert choose_item(loads, overlap=3) == 3  # the most advanced first
    assert choose_item(loads, overlap=2) == 2  # item 3 is full
    assert choose_item([ItemLoad(5, 0, False), ItemLoad(4, 0, False)], 1) == 4  # oldest


def test_a_labeler_never_gets_an_item_twice():
    loads = [ItemLoad(1, 1, True), ItemLoad(2, 0, False)]
    assert choose_item(loads, overlap=3) == 2
    assert choose_item([ItemLoad(1, 1, True)], overlap=3) is None


def test_display_order_round_trips_to_canonical():
    order = display_order(5, random.Random(3))
    assert sorted(order) == [0, 1, 2, 3, 4]
    shown = [f"answer{a}" for a in order]  # slot s shows answer order[s]
    assert to_canonical(order, shown) == [f"answer{i}" for i in range(5)]
    assert to_canonical([2, 0, 1], [10, 20, 30]) == [20, 30, 10]
    with pytest.raises(ValueError):
        to_canonical([0, 0], [1, 2])


def test_ranks_are_made_dense_keeping_ties():
    assert normalise_ranks([1, 3, 3, 4]) == [1, 2, 2, 3]
    assert normalise_ranks([2, 2]) == [1, 1]


def test_wilson_interval_of_8_of_10():
    lo, hi = wilson_interval(8, 10, 0.95)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


def test_win_rate_counts_ties_half():
    r = win_rate(["win", "win", "loss", "tie"])
    assert (r.wins, r.losses, r.ties, r.n) == (2, 1, 1, 4)
    assert r.rate == pytest.approx(2.5 / 4)
    assert r.lower is not None and r.lower < r.rate < (r.upper or 0)
    assert win_rate([]).rate is None


def test_gate_needs_enough_items_and_a_high_enough_lower_bound():
    settings = HumanEvalSettings(required=True, min_items=10, min_lower_bound=0.5)
    few = check_human_win_rate(win_rate(["win"] * 9), settings)
    assert not few.passed and "at least 10" in few.reason
    strong = check_human_win_rate(win_rate(["win"] * 18 + ["loss"] * 2), settings)
    assert strong.passed and strong.value >= 0.5
    # 8 of 10 is a win rate of 80%, but its lower bound 49% is below 50%
    weak = check_human_win_rate(win_rate(["win"] * 8 + ["loss"] * 2), settings)
    assert not weak.passed and weak.value == pytest.approx(0.4902, abs=1e-4)
