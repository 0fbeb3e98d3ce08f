"""The dead-letter limiter as a pure class: sliding-window ratio and consecutive count."""

from __future__ import annotations

import pytest

from feedback.ingest.limit import DlqLimit, DlqLimiter, DlqLimitExceeded
from feedback.settings import IngestSettings


def test_consecutive_dead_letters_trip_just_past_the_limit():
    limiter = DlqLimiter(DlqLimit(max_ratio=1.0, max_consecutive=3))
    limiter.observe([True, True, True, False] * 5)  # runs of 3 are allowed
    with pytest.raises(DlqLimitExceeded, match="dlq_max_consecutive exceeded: 4 "):
        limiter.observe([True] * 4)


def test_a_good_record_resets_the_run():
    limiter = DlqLimiter(DlqLimit(max_ratio=1.0, max_consecutive=2))
    limiter.observe([True, True, False, True, True, False])
    assert limiter.consecutive == 0


def test_the_ratio_is_enforced_only_after_the_minimum_count():
    limiter = DlqLimiter(DlqLimit(max_ratio=0.5, window=100, min_records=10,
                                  max_consecutive=0))
    limiter.observe([True] * 9)  # 100% but below min_records
    with pytest.raises(DlqLimitExceeded, match="dlq_max_ratio exceeded: 10 of the last 10"):
        limiter.observe([True])


def test_the_ratio_slides_over_the_last_window_records():
    limiter = DlqLimiter(DlqLimit(max_ratio=0.5, window=10, min_records=10,
                                  max_consecutive=0))
    limiter.observe([False] * 10 + [True] * 5)  # window: 5 good, 5 dead = 50%: allowed
    assert limiter.ratio == 0.5
    limiter.observe([False] * 10)  # the dead ones slide out
    assert limiter.ratio == 0.0
    limiter.observe([True] * 5)
    with pytest.raises(DlqLimitExceeded, match="6 of the last 10"):
        limiter.observe([True])


def test_turned_off_limits_never_trip():
    limiter = DlqLimiter(DlqLimit(max_ratio=1.0, window=10, min_records=1, max_consecutive=0))
    limiter.observe([True] * 10_000)


def test_the_default_settings_tolerate_a_few_bad_records():
    s = IngestSettings()
    limiter = DlqLimiter(DlqLimit(s.dlq_max_ratio, s.dlq_ratio_window,
                                  s.dlq_ratio_min_records, s.dlq_max_consecutive))
    limiter.observe([True] * 50 + [False] * 50)  # 50% of 100: at the limit, not past it
    limiter.observe([False, True] * 1000)  # half of every window, never more
