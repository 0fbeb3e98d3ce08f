"""Event definitions: every validator, field names in errors, and the one wire encoding."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from core.events import (
    Comparison,
    CompletionRecord,
    Demonstration,
    InvalidEvent,
    Ranking,
    Rating,
    decode_event,
    encode_event,
    event_key,
    feedback_adapter,
)
from tests.fixtures.events import completion


def _error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def test_every_event_round_trips_through_the_wire_encoding():
    events = [
        completion(),
        Ranking(request_id="r", choices=[2, 0, 1], ranks=[1, 2, 2], submitted_by="lab-1"),
        Ranking(prompt="p", responses=["x", "y"], ranks=[2, 1]),
        Comparison(request_id="r", choice_a=0, choice_b=1, preferred="tie"),
        Comparison(prompt="p", text_a="x", text_b="y", preferred="b"),
        Rating(request_id="r", choice=1, score=6.5, comment="ok"),
        Rating(prompt="p", response="x", score=-1),
        Demonstration(prompt="p", response="ideal"),
        Demonstration(messages=[{"role": "user", "content": "hi"}], response="hello"),
    ]
    for e in events:
        assert decode_event(encode_event(e)) == e


def test_defaults_give_each_event_an_id_a_version_and_an_aware_timestamp():
    a, b = Rating(prompt="p", response="x", score=1), Rating(prompt="p", response="x", score=1)
    assert a.event_id != b.event_id and len(a.event_id) == 32
    assert a.schema_version == 1
    assert a.created_at.utcoffset().total_seconds() == 0
    assert a.source == "user"


def test_naive_timestamps_are_taken_as_utc():
    e = Rating(prompt="p", response="x", score=1, created_at="2024-01-01T00:00:00")
    assert e.created_at.tzinfo is not None


def test_the_server_overrides_source_from_the_api_key():
    body = {"type": "ranking", "request_id": "r", "choices": [0, 1], "ranks": [1, 2]}
    event = feedback_adapter.validate_python(body).model_copy(update={"source": "labeler"})
    assert event.source == "labeler"


def test_key_is_the_request_id_else_the_event_id():
    assert event_key(completion("req-9")) == b"req-9"
    demo = Demonstration(prompt="p", response="r")
    assert event_key(demo) == demo.event_id.encode()


@pytest.mark.parametrize("kwargs, field", [
    ({"request_id": "r", "choices": [0, 1], "ranks": [1]}, "ranks"),  # too short
    ({"request_id": "r", "choices": [0, 1, 2], "ranks": [1, 2]}, "ranks"),  # mismatch
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2]}, "ranks"),
    ({"request_id": "r", "choices": [0, 1], "ranks": [0, 1]}, "ranks"),  # rank < 1
    ({"request_id": "r", "choices": [0, 0], "ranks": [1, 2]}, "choices"),  # duplicate
    ({"request_id": "r", "choices": [-1, 0], "ranks": [1, 2]}, "choices"),  # negative
    ({"request_id": "r", "choices": [0], "ranks": [1]}, "choices"),  # K < 2
    ({"prompt": "p", "responses": ["a"], "ranks": [1]}, "responses"),
])
def test_ranking_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        Ranking(**kwargs)
    assert field in _error_fields(exc.value)


@pytest.mark.parametrize("kwargs", [
    {"choices": [0, 1], "ranks": [1, 2]},  # no request_id
    {"request_id": "r", "prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]},  # both forms
    {"prompt": "p", "ranks": [1, 2]},  # no responses
])
def test_ranking_needs_exactly_one_form(kwargs):
    with pytest.raises(ValidationError, match="request_id and choices, or prompt and responses"):
        Ranking(**kwargs)


def test_ties_are_allowed_in_rankings():
    assert Ranking(request_id="r", choices=[0, 1, 2, 3], ranks=[1, 1, 2, 2]).ranks == [1, 1, 2, 2]


@pytest.mark.parametrize("kwargs, field", [
    ({"request_id": "r", "choice_a": 1, "choice_b": 1, "preferred": "a"}, "choice_b"),
    ({"request_id": "r", "choice_a": -1, "choice_b": 1, "preferred": "a"}, "choice_a"),
    ({"request_id": "r", "choice_a": 0, "choice_b": 1, "preferred": "c"}, "preferred"),
])
def test_comparison_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        Comparison(**kwargs)
    assert field in _error_fields(exc.value)


def test_comparison_needs_exactly_one_form():
    with pytest.raises(ValidationError, match="prompt, text_a and text_b"):
        Comparison(request_id="r", choice_a=0, preferred="a")


@pytest.mark.parametrize("kwargs, field", [
    ({"request_id": "r", "choice": -2, "score": 1}, "choice"),
    ({"request_id": "r", "choice": 0, "score": float("nan")}, "score"),
    ({"request_id": "r", "choice": 0, "score": "high"}, "score"),
])
def test_rating_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as exc:
        Rating(**kwargs)
    assert field in _error_fields(exc.value)


def test_rating_needs_exactly_one_form():
    with pytest.raises(ValidationError, match="request_id and choice, or prompt and response"):
        Rating(prompt="p", score=1)


def test_demonstration_needs_a_prompt_and_a_response():
    with pytest.raises(ValidationError, match="give prompt or messages"):
        Demonstration(response="r")
    with pytest.raises(ValidationError) as exc:
        Demonstration(prompt="p", response="")
    assert "response" in _error_fields(exc.value)


def test_demonstration_renders_messages_as_its_prompt_text():
    demo = Demonstration(messages=[{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "hi"}], response="hello")
    assert demo.prompt_text() == "system: be brief\nuser: hi"


def test_completion_choice_indices_are_unique():
    data = completion().model_dump()
    data["choices"][1]["index"] = 0
    with pytest.raises(ValidationError) as exc:
        CompletionRecord(**data)
    assert "choices" in _error_fields(exc.value)


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError) as exc:
        Rating(prompt="p", response="x", score=1, sorce="admin")
    assert "sorce" in _error_fields(exc.value)


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"type": "vote", "x": 1}', "type"),
    (b'{"type": "rating", "prompt": "p", "response": "x"}', "rating.score"),
    (b'{"type": "rating", "schema_version": 2, "prompt": "p", "response": "x", "score": 1}',
     "unsupported schema_version 2"),
    (b"\xff\xfe", "not JSON"),
])
def test_decode_raises_one_exception_type_with_the_reason(raw, reason):
    with pytest.raises(InvalidEvent) as exc:
        decode_event(raw)
    assert reason in exc.value.reason


def test_encoding_is_plain_json_with_the_type_discriminator():
    data = json.loads(encode_event(Demonstration(prompt="p", response="r")))
    assert data["type"] == "demonstration" and data["schema_version"] == 1


def test_every_field_is_documented():
    for model in (CompletionRecord, Ranking, Comparison, Rating, Demonstration):
        undocumented = [n for n, f in model.model_fields.items() if not f.description]
        assert undocumented == [], f"{model.__name__}: {undocumented}"
