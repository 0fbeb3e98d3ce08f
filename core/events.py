"""Event definitions: one pydantic model per event type, and the one place that encodes them.

Every event carries ``event_id`` (the idempotency key the store deduplicates on),
``schema_version`` and ``created_at``. The ``type`` field is the discriminator, so a
consumer can decode any event from raw bytes with :func:`decode_event`, and anything it
cannot decode raises :class:`InvalidEvent`, the single exception that routes a message
to the dead-letter topic.

The feedback models double as the API's request bodies: ``source`` defaults to
``"user"`` and the server overwrites it from the caller's API key
(``event.model_copy(update={"source": role})``); it is never trusted from the body.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
"""The newest schema version this build writes; it reads every version in SUPPORTED."""
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

Source = Literal["user", "labeler", "admin"]


class InvalidEvent(Exception):
    """An event that cannot be decoded or validated. It goes to the dead-letter topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _new_event_id() -> str:
    return uuid.uuid4().hex


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EventBase(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(
        default_factory=_new_event_id, min_length=1, max_length=128,
        description="Idempotency key: resubmitting the same event_id is stored once.")
    schema_version: int = Field(
        SCHEMA_VERSION, ge=1, description="Version of this event's schema.")
    created_at: datetime = Field(
        default_factory=_utc_now, description="When the event was created (UTC).")

    @field_validator("created_at")
    @classmethod
    def _aware_utc(cls, v: datetime) -> datetime:
        """Naive timestamps are taken as UTC so that stored times compare correctly."""
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


# ---------------------------------------------------------------------------------------
# Completions
# ---------------------------------------------------------------------------------------

class CompletionChoice(BaseModel):
    """One of the ``n`` generations of a completion."""

    index: int = Field(ge=0, description="Position of this choice in the response.")
    text: str = Field(description="The generated text.")
    finish_reason: str | None = Field(None, description="Why generation stopped.")
    completion_tokens: int = Field(0, ge=0, description="Tokens generated for this choice.")


class CompletionRecord(EventBase):
    """Every served generation, logged with the policy version that produced it."""

    type: Literal["completion"] = Field("completion", description="Event type.")
    request_id: str = Field(min_length=1, description="Id returned to the client.")
    policy_version: str = Field(min_length=1, description="Policy version that answered.")
    model: str = Field(description="Model name the client asked for.")
    endpoint: Literal["completions", "chat.completions"] = Field(
        description="Which OpenAI-compatible endpoint served the request.")
    prompt: str = Field(description="The rendered prompt text (chat requests too).")
    messages: list[dict[str, Any]] | None = Field(
        None, description="Chat messages as sent, for chat requests.")
    choices: list[CompletionChoice] = Field(
        min_length=1, description="All n choices of the response.")
    sampling_params: dict[str, Any] = Field(
        default_factory=dict, description="Sampling parameters used for generation.")
    prompt_tokens: int = Field(0, ge=0, description="Tokens in the prompt.")
    completion_tokens: int = Field(0, ge=0, description="Tokens generated over all choices.")
    user: str | None = Field(None, description="Identity of the caller.")

    @field_validator("choices")
    @classmethod
    def _unique_indices(cls, v: list[CompletionChoice]) -> list[CompletionChoice]:
        indices = [c.index for c in v]
        if len(set(indices)) != len(indices):
            raise ValueError(f"choice indices must be unique, got {indices}")
        return v


# ---------------------------------------------------------------------------------------
# Feedback
# ---------------------------------------------------------------------------------------

class FeedbackBase(EventBase):
    """Who judged. ``source`` is filled by the server from the API key."""

    source: Source = Field(
        "user", description="Role of the submitter; set by the server from the API key.")
    submitted_by: str | None = Field(
        None, max_length=256, description="Identity of the submitter, if known.")


def _check_reference(request_id: str | None, by_ref: bool, by_text: bool,
                     ref_fields: str, text_fields: str) -> None:
    """A piece of feedback names a completion's choices, or carries its own texts; not both."""
    if request_id is not None and by_ref and not by_text:
        return
    if request_id is None and by_text and not by_ref:
        return
    raise ValueError(f"give either {ref_fields}, or {text_fields}")


class Ranking(FeedbackBase):
    """A ranking of K >= 2 responses to one prompt; rank 1 is best, equal ranks are ties."""

    type: Literal["ranking"] = Field("ranking", description="Event type.")
    request_id: str | None = Field(
        None, min_length=1, description="Completion whose choices are ranked.")
    choices: list[int] | None = Field(
        None, min_length=2, description="Indices of the ranked choices of that completion.")
    prompt: str | None = Field(None, description="The prompt, when ranking own texts.")
    responses: list[str] | None = Field(
        None, min_length=2, description="The ranked responses, when ranking own texts.")
    ranks: list[int] = Field(
        min_length=2, description="Rank of each choice/response, same order; 1 = best.")

    @field_validator("choices")
    @classmethod
    def _indices(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(i < 0 for i in v):
                raise ValueError("choice indices must be >= 0")
            if len(set(v)) != len(v):
                raise ValueError(f"choice indices must be unique, got {v}")
        return v

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, v: list[int], info: ValidationInfo) -> list[int]:
        if any(r < 1 for r in v):
            raise ValueError("ranks must be >= 1 (1 = best)")
        ranked = info.data.get("choices") or info.data.get("responses")
        if ranked is not None and len(ranked) != len(v):
            raise ValueError(f"ranks has {len(v)} entries but {len(ranked)} were ranked")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> Ranking:
        _check_reference(self.request_id, self.choices is not None,
                         self.prompt is not None and self.responses is not None,
                         "request_id and choices", "prompt and responses")
        return self


class Comparison(FeedbackBase):
    """A pairwise preference between two choices of one completion, or two own texts."""

    type: Literal["comparison"] = Field("comparison", description="Event type.")
    request_id: str | None = Field(
        None, min_length=1, description="Completion whose choices are compared.")
    choice_a: int | None = Field(None, ge=0, description="Index of choice A.")
    choice_b: int | None = Field(None, ge=0, description="Index of choice B.")
    prompt: str | None = Field(None, description="The prompt, when comparing own texts.")
    text_a: str | None = Field(None, description="Response A, when comparing own texts.")
    text_b: str | None = Field(None, description="Response B, when comparing own texts.")
    preferred: Literal["a", "b", "tie"] = Field(description="Which response is better.")

    @field_validator("choice_b")
    @classmethod
    def _distinct(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v == info.data.get("choice_a"):
            raise ValueError("choice_b must differ from choice_a")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> Comparison:
        by_ref = self.choice_a is not None and self.choice_b is not None
        by_text = None not in (self.prompt, self.text_a, self.text_b)
        _check_reference(self.request_id, by_ref, by_text,
                         "request_id, choice_a and choice_b", "prompt, text_a and text_b")
        return self


class Rating(FeedbackBase):
    """A scalar score of one response, with an optional comment."""

    type: Literal["rating"] = Field("rating", description="Event type.")
    request_id: str | None = Field(
        None, min_length=1, description="Completion whose choice is rated.")
    choice: int | None = Field(None, ge=0, description="Index of the rated choice.")
    prompt: str | None = Field(None, description="The prompt, when rating an own text.")
    response: str | None = Field(None, description="The response, when rating an own text.")
    score: float = Field(description="The score; the scale is the deployment's convention.")
    comment: str | None = Field(None, max_length=10_000, description="Free-text comment.")

    @field_validator("score")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("score must be a finite number")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> Rating:
        _check_reference(self.request_id, self.choice is not None,
                         self.prompt is not None and self.response is not None,
                         "request_id and choice", "prompt and response")
        return self


class Demonstration(FeedbackBase):
    """A prompt with the ideal response, written by a labeler (SFT and ptx data)."""

    type: Literal["demonstration"] = Field("demonstration", description="Event type.")
    prompt: str | None = Field(None, description="The prompt text.")
    messages: list[dict[str, Any]] | None = Field(
        None, min_length=1, description="The prompt as chat messages, instead of prompt.")
    response: str = Field(min_length=1, description="The ideal response.")
    request_id: str | None = Field(
        None, min_length=1, description="Completion this demonstration answers, if any.")

    @model_validator(mode="after")
    def _has_prompt(self) -> Demonstration:
        if self.prompt is None and self.messages is None:
            raise ValueError("give prompt or messages")
        return self

    def prompt_text(self) -> str:
        """The prompt as text: ``prompt`` if given, else the messages one per line."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}"
                         for m in self.messages or [])


FeedbackEvent = Annotated[Ranking | Comparison | Rating | Demonstration,
                          Field(discriminator="type")]
"""Any of the four feedback kinds; this is also the body of ``POST /v1/feedback``."""

Event = Annotated[CompletionRecord | Ranking | Comparison | Rating | Demonstration,
                  Field(discriminator="type")]
"""Anything on the completions or feedback topics."""

FEEDBACK_TYPES = (Ranking, Comparison, Rating, Demonstration)

_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)
feedback_adapter: TypeAdapter[FeedbackEvent] = TypeAdapter(FeedbackEvent)


# ---------------------------------------------------------------------------------------
# Encoding: the one place that decides what goes on the wire
# ---------------------------------------------------------------------------------------

def encode_event(event: EventBase) -> bytes:
    """The wire form of an event: UTF-8 JSON."""
    return event.model_dump_json().encode()


def event_key(event: EventBase) -> bytes:
    """Kafka key: the request id keeps a completion and its feedback on one partition."""
    return (getattr(event, "request_id", None) or event.event_id).encode()


def decode_event(raw: bytes, as_type: Any = None) -> Any:
    """Decode an event, or raise InvalidEvent saying why (bad JSON, type, fields, version).

    Without ``as_type`` any completion or feedback event; with it, that model (e.g.
    ``core.registry.PolicyEvent`` on ``rlhf.policy``). The one decoder of every topic.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidEvent(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("event must be a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise InvalidEvent(f"unsupported schema_version {version!r}; "
                           f"this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)}")
    try:
        if as_type is not None:
            return as_type.model_validate(data)
        return _event_adapter.validate_python(data)
    except ValidationError as e:
        raise InvalidEvent(describe_validation_error(e)) from None


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field (``ranks: ranks has 3 entries …``)."""
    parts = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
