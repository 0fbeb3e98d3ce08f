"""From a labeler's submission to feedback events, and the two ways they leave.

Events are built in canonical answer order (answer i of the item is position i), under the
``event_id`` minted when the item was assigned, so a resubmission after a 503 is stored
once. Items from traffic or the serving API reference their completion
(``request_id`` + choice indices; the ingester joins texts and policy version); items a
candidate queue generated carry their own texts.

Sinks (``submit_via``): :class:`BrokerSink` publishes with ``core.producer``'s
FeedbackPublisher, stamping ``source`` and ``submitted_by`` from the labeler's key exactly
as the serving API would; :class:`ServingSink` POSTs to the serving API's
``/v1/feedback/batch`` with the labeler's own key, so the serving API stamps them. Neither
writes to the store: the ingester does.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from core.auth import Caller
from core.errors import ApiError, ServiceUnavailable, UnprocessableEntity
from core.events import Comparison, Demonstration, EventBase, Ranking, Rating
from core.producer import FeedbackPublisher


def _by_reference(item: Any) -> list[int] | None:
    """The items' choice indices when every answer is a choice of ``item.request_id``."""
    choices = [a.get("choice") for a in item.answers]
    if item.request_id and all(isinstance(c, int) for c in choices):
        return choices
    return None


def ranking_event(item: Any, event_id: str, ranks: list[int]) -> Ranking:
    choices = _by_reference(item)
    if choices is not None:
        return Ranking(event_id=event_id, request_id=item.request_id, choices=choices,
                       ranks=ranks)
    return Ranking(event_id=event_id, prompt=item.prompt,
                   responses=[a["text"] for a in item.answers], ranks=ranks)


def comparison_event(item: Any, event_id: str, preferred: str) -> Comparison:
    """``preferred`` in canonical terms: a = answer 0, b = answer 1, tie."""
    choices = _by_reference(item)
    if choices is not None:
        return Comparison(event_id=event_id, request_id=item.request_id, choice_a=choices[0],
                          choice_b=choices[1], preferred=preferred)
    return Comparison(event_id=event_id, prompt=item.prompt, text_a=item.answers[0]["text"],
                      text_b=item.answers[1]["text"], preferred=preferred)


def rating_events(item: Any, event_id: str, scores: list[float],
                  comment: str | None) -> list[Rating]:
    """One Rating per answer (canonical order); ids ``<event_id>-<answer>``."""
    choices = _by_reference(item)
    out = []
    for i, (answer, score) in enumerate(zip(item.answers, scores, strict=True)):
        common: dict[str, Any] = {"event_id": f"{event_id}-{i}", "score": score,
                                  "comment": comment}
        if choices is not None:
            out.append(Rating(request_id=item.request_id, choice=choices[i], **common))
        else:
            out.append(Rating(prompt=item.prompt, response=answer["text"], **common))
    return out


def demonstration_event(item: Any, event_id: str, response: str) -> Demonstration:
    return Demonstration(event_id=event_id, prompt=item.prompt, response=response,
                         request_id=item.request_id)


class FeedbackSink(Protocol):
    async def submit(self, events: list[EventBase], caller: Caller, key: str | None) -> None:
        """Hand the events to the feedback path; ServiceUnavailable when it cannot."""


class BrokerSink:
    """Publish to the feedback topic, identity from the labeler's key."""

    def __init__(self, publisher: FeedbackPublisher, topic: str):
        self.publisher, self.topic = publisher, topic

    async def submit(self, events: list[EventBase], caller: Caller, key: str | None) -> None:
        stamped = [e.model_copy(update={"source": caller.feedback_source,
                                        "submitted_by": caller.name}) for e in events]
        await self.publisher.publish_batch(self.topic, stamped)

    def close(self) -> None:
        self.publisher.close()


class ServingSink:
    """POST to the serving API's /v1/feedback/batch with the labeler's own key."""

    def __init__(self, url: str, timeout_s: float):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    async def submit(self, events: list[EventBase], caller: Caller, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"items": [e.model_dump(mode="json", exclude={"source", "submitted_by"})
                          for e in events]}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                r = await client.post(self.url + "/v1/feedback/batch", json=body,
                                      headers=headers)
        except httpx.HTTPError as e:
            raise ServiceUnavailable(f"serving API at {self.url} unreachable: {e}") from e
        if r.status_code == 202:
            return
        message = _error_message(r)
        if r.status_code >= 500:
            raise ServiceUnavailable(f"serving API: {message}")
        err = (UnprocessableEntity if r.status_code in (400, 422) else ApiError)(
            f"serving API: {message}")
        err.status = r.status_code
        raise err

    def close(self) -> None:
        pass


def _error_message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}"
