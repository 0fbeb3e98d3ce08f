"""Event definitions: one pydantic model per event type, and the one place that encodes them.

Every event carries ``event_id`` (the idempotency key the store deduplicates on),
``schema_version`` and ``created_at``. The ``type`` field is the discriminator, so a
consumer can decode any event from raw bytes with :func:`decode_event`, and anything it
cannot decode raises :class:`InvalidEvent`, the single exception that routes a message
to the dead-letter topic.

The feedback models double as the API's request bodies: ``source`` defaults to
``"user"`` and the server overwrites it from the caller's API key
(``event.model_copy(update={"source": role})``); it is never trusted from the body.

Every value is bounded to what the feedback store can hold (see "Bounds" below), so an
event that validates always fits its columns: the API answers 422 naming the field, and
the ingester dead-letters instead of failing a database write.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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

# ---------------------------------------------------------------------------------------
# Bounds: the one definition of what the store can hold. feedback/store/models.py sizes its
# columns from these constants, and a unit test compares every column with its field.
# ---------------------------------------------------------------------------------------

MAX_INT = 2**31 - 1
"""Integer columns are 32-bit on PostgreSQL: token counts and every other stored int."""
MAX_EVENT_ID_CHARS = 128
"""``event_id`` (the deduplication key)."""
MAX_NAME_CHARS = 256
"""request_id, policy_version, model, user and submitted_by."""
MAX_FINISH_REASON_CHARS = 32
MAX_TEXT_CHARS = 1_000_000
"""Each prompt, response, choice text: one million characters (Text columns)."""
MAX_COMMENT_CHARS = 10_000
MAX_CHOICES = 1024
"""Most choices in a completion or entries in a ranking; indices are below it, ranks at
most it (OpenAI's ``n`` is at most 128, so this is a sanity bound, not a product limit)."""
MAX_RANK = MAX_CHOICES
MAX_JSON_CHARS = 1_000_000
"""``messages`` and ``sampling_params``: at most this many characters as JSON."""
MAX_JSON_DEPTH = 32


def _no_nul(v: str) -> str:
    """PostgreSQL cannot store NUL in text; reject it at validation, naming the field."""
    if "\x00" in v:
        raise ValueError("must not contain NUL characters (\\x00)")
    return v


UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")
"""What no field can carry: NUL (PostgreSQL text and JSON cannot hold it) and lone
surrogates (not UTF-8 at all; pydantic refuses them as ``string_unicode``)."""
REPLACEMENT_CHAR = "\ufffd"


def storable(value: Any) -> Any:
    """``value`` with every character in UNSTORABLE_CHARS replaced by U+FFFD.

    Strings, dict keys and values, and lists are walked; anything else is returned as it
    is. The server applies this to what it logs itself (engine output, and the prompt it
    already served), where refusing the event would lose a completion the client has;
    input from outside (feedback, events on the topics) is still validated and refused.
    """
    if isinstance(value, str):
        return UNSTORABLE_CHARS.sub(REPLACEMENT_CHAR, value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


def _json_safe(value: Any, depth: int = 0) -> None:
    """Plain JSON that both stores can hold: no NUL, finite floats, bounded nesting."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or infinity)")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("object keys must be strings")
            _no_nul(k)
            _json_safe(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _json_safe(v, depth + 1)
    elif value is not None and not isinstance(value, (bool, int)):
        raise ValueError(f"{type(value).__name__} is not a JSON value")


def _bounded_json(value: Any) -> Any:
    if value is not None:
        _json_safe(value)
        if len(json.dumps(value, ensure_ascii=False)) > MAX_JSON_CHARS:
            raise ValueError(f"must be at most {MAX_JSON_CHARS} characters as JSON")
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_no_nul)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_no_nul)]
RequestId = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS),
                      AfterValidator(_no_nul)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
ChoiceIndex = Annotated[int, Field(ge=0, lt=MAX_CHOICES)]
Rank = Annotated[int, Field(ge=1, le=MAX_RANK)]
JsonMessages = Annotated[list[dict[str, Any]], AfterValidator(_bounded_json)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded_json)]


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

    event_id: Annotated[str, AfterValidator(_no_nul)] = Field(
        default_factory=_new_event_id, min_length=1, max_length=MAX_EVENT_ID_CHARS,
        description="Idempotency key: resubmitting the same event_id is stored once.")
    schema_version: int = Field(
        SCHEMA_VERSION, ge=1, le=MAX_INT, description="Version of this event's schema.")
    created_at: datetime = Field(
        default_factory=_utc_now, description="When the event was created (UTC).")

    @field_validator("created_at")
    @classmethod
    def _aware_utc(cls, v: datetime) -> datetime:
        """Naive timestamps are taken as UTC so that stored times compare correctly."""
        try:
            return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range once converted to UTC") from None


# ---------------------------------------------------------------------------------------
# Completions
# ---------------------------------------------------------------------------------------

class CompletionChoice(BaseModel):
    """One of the ``n`` generations of a completion."""

    index: ChoiceIndex = Field(description="Position of this choice in the response.")
    text: Text = Field(description="The generated text.")
    finish_reason: Annotated[str, Field(max_length=MAX_FINISH_REASON_CHARS),
                             AfterValidator(_no_nul)] | None = Field(
        None, description="Why generation stopped.")
    completion_tokens: Count = Field(0, description="Tokens generated for this choice.")


class CompletionRecord(EventBase):
    """Every served generation, logged with the policy version that produced it."""

    type: Literal["completion"] = Field("completion", description="Event type.")
    request_id: RequestId = Field(description="Id returned to the client.")
    policy_version: RequestId = Field(description="Policy version that answered.")
    model: Name = Field(description="Model name the client asked for.")
    endpoint: Literal["completions", "chat.completions"] = Field(
        description="Which OpenAI-compatible endpoint served the request.")
    prompt: Text = Field(description="The rendered prompt text (chat requests too).")
    messages: JsonMessages | None = Field(
        None, description="Chat messages as sent, for chat requests.")
    choices: list[CompletionChoice] = Field(
        min_length=1, max_length=MAX_CHOICES, description="All n choices of the response.")
    sampling_params: JsonObject = Field(
        default_factory=dict, description="Sampling parameters used for generation.")
    prompt_tokens: Count = Field(0, description="Tokens in the prompt.")
    completion_tokens: Count = Field(0, description="Tokens generated over all choices.")
    user: Name | None = Field(None, description="Identity of the caller.")
    purpose: Literal["train", "eval"] = Field(
        "train", description="train: may become PPO prompts and labeling data; eval: "
        "evaluation traffic, never trained on")
    client_request_id: Name | None = Field(
        None, description="The caller's own X-Request-Id (a correlation id; never a key).")

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
    submitted_by: Name | None = Field(
        None, description="Identity of the submitter, if known.")


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
    request_id: RequestId | None = Field(
        None, description="Completion whose choices are ranked.")
    choices: list[ChoiceIndex] | None = Field(
        None, min_length=2, max_length=MAX_CHOICES,
        description="Indices of the ranked choices of that completion.")
    prompt: Text | None = Field(None, description="The prompt, when ranking own texts.")
    responses: list[Text] | None = Field(
        None, min_length=2, max_length=MAX_CHOICES,
        description="The ranked responses, when ranking own texts.")
    ranks: list[Rank] = Field(
        min_length=2, max_length=MAX_CHOICES,
        description=f"Rank of each choice/response, same order; 1 = best, at most {MAX_RANK}.")

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
    request_id: RequestId | None = Field(
        None, description="Completion whose choices are compared.")
    choice_a: ChoiceIndex | None = Field(None, description="Index of choice A.")
    choice_b: ChoiceIndex | None = Field(None, description="Index of choice B.")
    prompt: Text | None = Field(None, description="The prompt, when comparing own texts.")
    text_a: Text | None = Field(None, description="Response A, when comparing own texts.")
    text_b: Text | None = Field(None, description="Response B, when comparing own texts.")
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
    request_id: RequestId | None = Field(
        None, description="Completion whose choice is rated.")
    choice: ChoiceIndex | None = Field(None, description="Index of the rated choice.")
    prompt: Text | None = Field(None, description="The prompt, when rating an own text.")
    response: Text | None = Field(None, description="The response, when rating an own text.")
    score: float = Field(description="The score (finite); the scale is the deployment's "
                         "convention.")
    comment: Annotated[str, Field(max_length=MAX_COMMENT_CHARS),
                       AfterValidator(_no_nul)] | None = Field(
        None, description="Free-text comment.")

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
    prompt: Text | None = Field(None, description="The prompt text.")
    messages: JsonMessages | None = Field(
        None, min_length=1, description="The prompt as chat messages, instead of prompt.")
    response: Text = Field(min_length=1, description="The ideal response.")
    request_id: RequestId | None = Field(
        None, description="Completion this demonstration answers, if any.")

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


def event_headers(event: EventBase) -> list[tuple[str, bytes]]:
    """Kafka headers that let a consumer route a message without parsing it.

    ``rlhf-event-type`` is the event's ``type`` (``ranking``, ``completion``, ``promote``
    …; docs/events.md maps each to its schema), ``rlhf-schema-version`` its
    ``schema_version``, and ``content-type`` is ``application/json``. The body stays the
    contract: a consumer that ignores headers loses nothing.
    """
    return [("rlhf-event-type", str(getattr(event, "type", "")).encode()),
            ("rlhf-schema-version", str(event.schema_version).encode()),
            ("content-type", b"application/json")]


def decode_event(raw: bytes, as_type: Any = None) -> Any:
    """Decode an event, or raise InvalidEvent saying why (bad JSON, type, fields, version).

    Without ``as_type`` any completion or feedback event; with it, that model (e.g.
    ``core.registry.PolicyEvent`` on ``rlhf.policy``). The one decoder of every topic.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidEvent(f"not JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise InvalidEvent("event must be a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        shown = version if isinstance(version, int) else repr(str(version)[:40])
        raise InvalidEvent(f"unsupported schema_version {shown}; "
                           f"this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)}")
    # A completion or feedback message must carry its idempotency key: minting one here
    # would store a producer's retry twice. (Python constructors still default it.)
    missing_id = as_type is None and "event_id" not in data
    try:
        event = (as_type.model_validate(data) if as_type is not None
                 else _event_adapter.validate_python(data))
    except ValidationError as e:
        reason = describe_validation_error(e)
        raise InvalidEvent(f"missing event_id; {reason}" if missing_id else reason) from None
    if missing_id:
        raise InvalidEvent("missing event_id")
    return event


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field (``ranks: ranks has 3 entries …``)."""
    parts = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
