"""Agreement maths against hand-computed values and Krippendorff's published example."""

from __future__ import annotations

import pytest

from labeling.agreement import (
    agreement_report,
    borda_consensus,
    borda_scores,
    krippendorff_alpha_ordinal,
    pairwise_agreement,
)


def test_pairwise_agreement_counts_pairs_ordered_the_same_way():
    assert pairwise_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    # pairs (0,1), (0,2) agree; (1,2) is swapped
    assert pairwise_agreement([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 3)
    assert pairwise_agreement([1, 2], [2, 1]) == 0.0


def test_a_tie_agrees_only_with_a_tie():
    # (0,1): tie vs above → differ; (0,2): above vs above; (1,2): above vs tie → differ
    assert pairwise_agreement([1, 1, 2], [1, 2, 2]) == pytest.approx(1 / 3)
    assert pairwise_agreement([1, 1], [3, 3]) == 1.0


def test_pairwise_agreement_refuses_rankings_of_different_items():
    with pytest.raises(ValueError):
        pairwise_agreement([1, 2], [1, 2, 3])


def test_krippendorff_alpha_hand_computed():
    assert krippendorff_alpha_ordinal([[1, 1], [2, 2]]) == 1.0
    # o12 = o21 = 2, n1 = n2 = 2, δ²(1,2) = (4 − 2)² = 4: α = 1 − 3·16/32
    assert krippendorff_alpha_ordinal([[1, 2], [2, 1]]) == pytest.approx(-0.5)
    assert krippendorff_alpha_ordinal([[1, None], [None]]) is None  # nothing pairable
    assert krippendorff_alpha_ordinal([[1, 1], [1, 1]]) is None  # one value: undefined


def test_krippendorff_alpha_matches_the_published_example():
    """Krippendorff (2011), 'Computing Krippendorff's alpha-reliability': ordinal α = 0.815."""
    n = None
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
              [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [list(col) for col in zip(*coders, strict=True)]
    assert krippendorff_alpha_ordinal(units) == pytest.approx(0.815, abs=1e-3)


def test_borda_consensus_with_ties():
    # answer 0: 2 + 1.5 = 3.5; answer 1: 1 + 1.5 = 2.5; answer 2: 0 + 0 = 0
    rankings = [[1, 2, 3], [1, 1, 2]]
    assert borda_scores(rankings) == [3.5, 2.5, 0.0]
    assert borda_consensus(rankings) == [1, 2, 3]
    assert borda_consensus([[1, 2], [2, 1]]) == [1, 1]


def test_report_flags_the_labeler_far_below_the_others():
    items = {}
    for i in range(4):
        items[str(i)] = {"ann": [1, 2, 3, 4], "bob": [1, 2, 3, 4], "cy": [1, 2, 4, 3],
                         "odd": [4, 3, 2, 1]}
    report = agreement_report(items, flag_margin=0.15, flag_min_items=3)
    by = {x.labeler: x for x in report.labelers}
    assert by["odd"].flagged and not by["ann"].flagged and not by["cy"].flagged
    # ann: with bob 1, with cy 5/6, with odd 0 → 11/18
    assert by["ann"].agreement == pytest.approx(11 / 18)
    assert by["odd"].agreement == pytest.approx((0 + 0 + 1 / 6) / 3)
    assert report.items_with_overlap == 4
    # Borda points: 3+3+3+0 = 9, 2+2+2+1 = 7, 1+1+0+2 = 4, 0+0+1+3 = 4 → the last two tie
    assert report.consensus["0"] == [1, 2, 3, 3]
    assert report.as_dict()["consensus_method"] == "borda"


def test_report_of_items_without_overlap_has_no_agreement():
    report = agreement_report({"1": {"ann": [1, 2]}, "2": {"bob": [2, 1]}})
    assert report.pairwise_agreement is None and report.krippendorff_alpha is None
    assert report.items_with_overlap == 0
    assert not any(x.flagged for x in report.labelers)
