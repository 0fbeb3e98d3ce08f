"""Turning a feedback event into rows: resolve choice indices to texts, or reject the event.

Pure functions, no session: given the completion a piece of feedback refers to (or
``None`` when it carries its own texts), build the plain rows of the ``feedback`` table and
its kind's table (:class:`FeedbackRows`, ready for one bulk insert per table), or raise
:class:`InvalidEvent` when the feedback does not fit the completion (a choice index beyond
its ``n``) or may not judge it (a user judging a completion that another user requested).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.events import (
    Comparison,
    CompletionRecord,
    Demonstration,
    InvalidEvent,
    Ranking,
    Rating,
)
from feedback.store.models import (
    Base,
    ComparisonTable,
    DemonstrationTable,
    RankingTable,
    RatingTable,
)

Feedback = Ranking | Comparison | Rating | Demonstration
Row = dict[str, Any]
"""Column values of one row, keyed by column name."""


@dataclass(frozen=True)
class CompletionView:
    """What feedback needs from its completion: the prompt, the choice texts, the version,
    and who requested it (``None`` on an open API)."""

    request_id: str
    prompt: str
    policy_version: str
    texts: dict[int, str]
    user: str | None = None

    @classmethod
    def of_event(cls, c: CompletionRecord) -> CompletionView:
        texts = {ch.index: ch.text for ch in c.choices}
        return cls(c.request_id, c.prompt, c.policy_version, texts, c.user)

    def text(self, index: int, field: str) -> str:
        """The text of choice ``index``; InvalidEvent naming ``field`` if there is none."""
        if index not in self.texts:
            raise InvalidEvent(f"{field}: choice {index} does not exist in completion "
                               f"{self.request_id!r}, which has {len(self.texts)} choices")
        return self.texts[index]


@dataclass(frozen=True)
class FeedbackRows:
    """One piece of feedback as rows. ``feedback`` is the shared row (the database assigns
    its ``seq``); ``detail`` is the row of ``detail_table`` (the kind's table) and
    ``entries`` a ranking's ``ranking_entries`` rows, both still without that ``seq``."""

    feedback: Row
    detail_table: type[Base]
    detail: Row
    entries: tuple[Row, ...] = ()


def needs_completion(event: Feedback) -> bool:
    """Feedback that names choices by index cannot be stored until its completion is known."""
    return not isinstance(event, Demonstration) and event.request_id is not None


def check_may_judge(event: Feedback, completion: CompletionView) -> None:
    """A user may judge only the completions it requested; labelers and admins judge any.

    ``completion.user`` is the key name of the caller that requested it and
    ``event.submitted_by`` the key name of the caller that sent the feedback (serving sets
    both from the API key). A completion without a user (open API) anyone may judge.
    """
    if event.source != "user" or completion.user is None:
        return
    if event.submitted_by != completion.user:
        raise InvalidEvent(
            f"submitted_by: {event.submitted_by!r} may judge only its own completions; "
            f"completion {completion.request_id!r} was requested by another user")


def build_feedback_rows(event: Feedback, completion: CompletionView | None,
                        stored_at: datetime) -> FeedbackRows:
    """The rows for one piece of feedback, with resolved texts. Raises InvalidEvent."""
    if completion is not None and needs_completion(event):
        check_may_judge(event, completion)
    feedback = {
        "event_id": event.event_id, "kind": event.type, "source": event.source,
        "submitted_by": event.submitted_by, "request_id": event.request_id,
        "policy_version": completion.policy_version if completion else None,
        "created_at": event.created_at, "stored_at": stored_at}
    if isinstance(event, Ranking):
        detail, entries = _ranking(event, completion)
        return FeedbackRows(feedback, RankingTable, detail, entries)
    if isinstance(event, Comparison):
        return FeedbackRows(feedback, ComparisonTable, _comparison(event, completion))
    if isinstance(event, Rating):
        return FeedbackRows(feedback, RatingTable, _rating(event, completion))
    return FeedbackRows(feedback, DemonstrationTable, {
        "prompt": event.prompt_text(), "messages": event.messages, "response": event.response})


def _ranking(event: Ranking, completion: CompletionView | None) -> tuple[Row, tuple[Row, ...]]:
    if completion is not None and event.choices is not None:
        prompt = completion.prompt
        responses = [completion.text(i, "choices") for i in event.choices]
        indices: list[int | None] = list(event.choices)
    else:
        prompt, responses = event.prompt or "", list(event.responses or [])
        indices = [None] * len(responses)
    entries = tuple({"position": p, "choice_index": i, "response": r, "rank": k}
                    for p, (i, r, k) in enumerate(zip(indices, responses, event.ranks,
                                                      strict=True)))
    return {"prompt": prompt}, entries


def _comparison(event: Comparison, completion: CompletionView | None) -> Row:
    if completion is not None and event.choice_a is not None and event.choice_b is not None:
        return {"prompt": completion.prompt,
                "response_a": completion.text(event.choice_a, "choice_a"),
                "response_b": completion.text(event.choice_b, "choice_b"),
                "choice_a": event.choice_a, "choice_b": event.choice_b,
                "preferred": event.preferred}
    return {"prompt": event.prompt or "", "response_a": event.text_a or "",
            "response_b": event.text_b or "", "choice_a": None, "choice_b": None,
            "preferred": event.preferred}


def _rating(event: Rating, completion: CompletionView | None) -> Row:
    if completion is not None and event.choice is not None:
        return {"prompt": completion.prompt, "response": completion.text(event.choice, "choice"),
                "choice_index": event.choice, "score": event.score, "comment": event.comment}
    return {"prompt": event.prompt or "", "response": event.response or "",
            "choice_index": None, "score": event.score, "comment": event.comment}


def comparison_ranks(preferred: str) -> list[int]:
    """A comparison as a K=2 ranking of [a, b]: the preferred one gets rank 1, a tie 1 and 1."""
    return {"a": [1, 2], "b": [2, 1], "tie": [1, 1]}[preferred]
