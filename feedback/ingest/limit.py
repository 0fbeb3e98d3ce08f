"""A limit on dead-lettering, like arroyo's ``DlqLimit``: a bad deploy stops, not drains.

When a producer ships a broken schema or the store starts refusing everything, every
record would go to the dead-letter topic and the topic would be "consumed" into it. The
limiter watches the outcome of each record and trips when

- more than ``max_ratio`` of the last ``window`` records were dead-lettered (checked only
  once ``min_records`` records are in the window, so a few early bad records don't
  trip it), or
- more than ``max_consecutive`` records in a row were dead-lettered.

The ingester then stops without committing the batch, so nothing is lost and ``rlhf
ingest`` exits non-zero for someone to look at.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


class DlqLimitExceeded(RuntimeError):
    """Too many records were dead-lettered; the message names the limit and its setting."""


@dataclass(frozen=True)
class DlqLimit:
    """``max_ratio`` 1.0 and ``max_consecutive`` 0 turn the respective check off."""

    max_ratio: float = 0.5
    window: int = 1000
    min_records: int = 100
    max_consecutive: int = 500


class DlqLimiter:
    """Counts outcomes over a sliding window; ``observe`` raises when a limit is exceeded."""

    def __init__(self, limit: DlqLimit):
        self.limit = limit
        self._window: deque[bool] = deque(maxlen=limit.window)
        self._dead_in_window = 0
        self.consecutive = 0

    @property
    def ratio(self) -> float:
        return self._dead_in_window / len(self._window) if self._window else 0.0

    def observe(self, outcomes: Iterable[bool]) -> None:
        """Record each outcome (True = dead-lettered) in order; raise at the first breach."""
        for dead in outcomes:
            self._record(dead)
            self._check()

    def _record(self, dead: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._dead_in_window -= 1
        self._window.append(dead)
        self._dead_in_window += dead
        self.consecutive = self.consecutive + 1 if dead else 0

    def _check(self) -> None:
        lim = self.limit
        if lim.max_consecutive and self.consecutive > lim.max_consecutive:
            raise DlqLimitExceeded(
                f"dlq_max_consecutive exceeded: {self.consecutive} records in a row were "
                f"dead-lettered (limit {lim.max_consecutive})")
        if (lim.max_ratio < 1.0 and len(self._window) >= lim.min_records
                and self.ratio > lim.max_ratio):
            raise DlqLimitExceeded(
                f"dlq_max_ratio exceeded: {self._dead_in_window} of the last "
                f"{len(self._window)} records were dead-lettered ({self.ratio:.0%}, limit "
                f"{lim.max_ratio:.0%})")
