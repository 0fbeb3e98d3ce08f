"""Which of a batch's events the ingester counts as accepted, and under which labels.

The store rejects an event_id's first occurrence in a batch (a repeat is then a
duplicate), or every occurrence when it falls back to one event at a time; rejections of
feedback parked earlier have no record in the batch.
"""

from __future__ import annotations

from core.events import Demonstration, Rating
from feedback.ingest.metrics import accepted, kind_and_source
from feedback.store.store import Rejection
from tests.fixtures.events import completion


def _rejected(event_id: str) -> Rejection:
    return Rejection(event_id, b"{}", None, "refused")


def test_one_occurrence_is_dropped_per_rejection():
    a, b = Rating(prompt="p", response="r", score=1), Rating(prompt="p", response="s", score=2)
    batch = [a, b, a]  # a replayed within the batch
    assert accepted(batch, [_rejected(a.event_id)]) == [b, a]  # the repeat: a duplicate
    assert accepted(batch, [_rejected(a.event_id)] * 2) == [b]  # one-by-one: both refused


def test_rejections_of_parked_feedback_drop_nothing_from_the_batch():
    batch = [completion("req-1"), Demonstration(prompt="p", response="r")]
    assert accepted(batch, [_rejected("parked-long-ago")]) == batch


def test_labels_are_the_event_type_and_the_sender():
    assert kind_and_source(completion("req-1")) == ("completion", "serving")
    assert kind_and_source(Rating(prompt="p", response="r", score=1,
                                  source="labeler")) == ("rating", "labeler")
    assert kind_and_source(Demonstration(prompt="p", response="r")) == ("demonstration",
                                                                        "user")
