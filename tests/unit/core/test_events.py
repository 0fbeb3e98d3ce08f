"""Event definitions: every validator, field names in errors, and the one wire encoding."""

from __future__ import annotations

import json
import math

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
    """Each error's location, and its field alone (``ranks.0`` names ``ranks`` too)."""
    locs = {".".join(str(p) for p in e["loc"]) for e in exc.errors()}
    return locs | {str(e["loc"][0]) for e in exc.errors() if e["loc"]}


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


# -- bounds: what validation lets through always fits the store ---------------------------

def _fields(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as exc:
        decode_event(raw)
    return exc.value.reason


def _ranking_json(**overrides) -> bytes:
    data = {"type": "ranking", "event_id": "e1", "prompt": "p", "responses": ["a", "b"],
            "ranks": [1, 2], **overrides}
    return json.dumps(data).encode()


def test_a_message_without_event_id_is_invalid_so_a_retry_is_not_stored_twice():
    assert _fields(b'{"type": "demonstration", "prompt": "p", "response": "r"}') == \
        "missing event_id"
    # other problems are named too
    reason = _fields(b'{"type": "ranking", "prompt": "p", "responses": ["a"], "ranks": [1]}')
    assert reason.startswith("missing event_id; ") and "responses" in reason


def test_python_constructors_still_mint_an_event_id():
    assert Demonstration(prompt="p", response="r").event_id


@pytest.mark.parametrize("raw, field", [
    (_ranking_json(ranks=[2**63, 1]), "ranks.0"),
    (_ranking_json(ranks=[2**31, 1]), "ranks.0"),
    (_ranking_json(ranks=[1025, 1]), "ranks.0"),  # past MAX_RANK
    (_ranking_json(prompt="nul\x00here"), "prompt"),
    (_ranking_json(responses=["a", "b\x00"]), "responses.1"),
    (_ranking_json(event_id="e\x00"), "event_id"),
    (_ranking_json(event_id="e" * 129), "event_id"),
    (_ranking_json(submitted_by="s" * 257), "submitted_by"),
    (_ranking_json(prompt=None, responses=None, request_id="r" * 300, choices=[0, 1]),
     "request_id"),
    (_ranking_json(prompt=None, responses=None, request_id="r", choices=[0, 2**31]),
     "choices.1"),
    (b'{"type": "rating", "event_id": "e", "prompt": "p", "response": "r", "score": NaN}',
     "score"),
    (b'{"type": "rating", "event_id": "e", "prompt": "p", "response": "r", '
     b'"score": Infinity}', "score"),
    (b'{"type": "rating", "event_id": "e", "prompt": "p", "response": "r", "score": 1e999}',
     "score"),
    (b'{"type": "demonstration", "event_id": "e", "response": "r", '
     b'"messages": [{"role": "user", "content": "a\\u0000b"}]}', "messages"),
    (b'{"type": "demonstration", "event_id": "e", "response": "r", '
     b'"messages": [{"role": "user", "content": NaN}]}', "messages"),
    (b'{"type": "demonstration", "event_id": "e", "response": "r", "prompt": "p", '
     b'"created_at": "9999-12-31T23:59:59-23:00"}', "created_at"),
])
def test_values_the_store_cannot_hold_are_invalid_naming_the_field(raw, field):
    reason = _fields(raw)
    assert f".{field}: " in reason or reason.startswith(f"{field}: "), reason


def test_nul_is_refused_with_a_message_that_says_so():
    with pytest.raises(ValidationError) as exc:
        Demonstration(prompt="a\x00", response="r")
    assert "NUL" in str(exc.value) and "prompt" in _error_fields(exc.value)


def test_nan_score_is_a_validation_error_not_a_crash():
    with pytest.raises(ValidationError) as exc:
        Rating(prompt="p", response="r", score=math.nan)
    assert "score" in _error_fields(exc.value)


def test_completion_counts_and_texts_are_bounded():
    c = completion("r", n=2)
    data = json.loads(encode_event(c))
    for path, value in [(("prompt_tokens",), 2**31), (("completion_tokens",), -1),
                        (("choices", 0, "completion_tokens"), 2**31),
                        (("choices", 0, "finish_reason"), "x" * 33),
                        (("choices", 0, "index"), 1024), (("model",), "m" * 257),
                        (("policy_version",), "v" * 257), (("user",), "u" * 257),
                        (("purpose",), "other")]:
        bad = json.loads(json.dumps(data))
        target = bad
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
        reason = _fields(json.dumps(bad).encode())
        assert ".".join(str(p) for p in path) in reason, (path, reason)


def test_deeply_nested_json_is_invalid_not_a_recursion_error():
    assert "not JSON" in _fields(b"[" * 100_000 + b"]" * 100_000)
    deep = {"type": "demonstration", "event_id": "e", "prompt": "p", "response": "r"}
    nested: dict = {}
    node = nested
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    raw = json.dumps({**deep, "messages": [nested]}).encode()
    assert "nested deeper" in _fields(raw)


def test_odd_schema_versions_are_invalid_not_a_type_error():
    assert "schema_version" in _fields(b'{"type": "rating", "schema_version": []}')


def test_storable_replaces_nul_and_lone_surrogates_everywhere_and_keeps_the_rest():
    from core.events import storable

    # 4 characters in, 4 out: each unstorable one becomes one U+FFFD; a valid astral
    # character (U+1F600, one code point) and non-strings are kept.
    assert storable("a\x00\ud800\U0001f600") == "a\ufffd\ufffd\U0001f600"
    value = {"k\x00": ["x\udfff", {"n": 1.5, "ok": True, "none": None}], "t": ("\x00",)}
    assert storable(value) == {"k\ufffd": ["x\ufffd", {"n": 1.5, "ok": True, "none": None}],
                               "t": ["\ufffd"]}
    clean = completion()
    assert CompletionRecord.model_validate(storable(clean.model_dump())) == clean
