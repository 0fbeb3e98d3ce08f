"""docs/schemas/*.json are the events' JSON Schemas; every encoded event validates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from core.events import (
    Comparison,
    CompletionChoice,
    CompletionRecord,
    Demonstration,
    Ranking,
    Rating,
    decode_event,
    encode_event,
    event_headers,
)
from core.registry import PolicyEvent
from core.schemas import PUBLISHED, json_schemas, schema_file_for_type, stale_files

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"

EVENTS = [
    CompletionRecord(request_id="req-1", policy_version="policy-0001", model="tiny",
                     endpoint="chat.completions", prompt="user: hi",
                     messages=[{"role": "user", "content": "hi"}],
                     choices=[CompletionChoice(index=0, text="hello", finish_reason="stop",
                                               completion_tokens=1)]),
    Ranking(request_id="req-1", choices=[0, 1, 2], ranks=[2, 1, 3], source="labeler"),
    Ranking(prompt="p", responses=["a", "b"], ranks=[1, 1]),
    Comparison(request_id="req-1", choice_a=0, choice_b=1, preferred="a"),
    Comparison(prompt="p", text_a="a", text_b="b", preferred="tie"),
    Rating(request_id="req-1", choice=0, score=4.5, comment="good"),
    Demonstration(messages=[{"role": "user", "content": "hi"}], response="hello"),
    PolicyEvent(type="promote", version="policy-0002", reason="gates passed"),
    PolicyEvent(type="swapped", version="policy-0002", replica="serving-7f9c"),
]


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schemas_are_up_to_date() -> None:
    assert stale_files(SCHEMAS) == [], "run: python -m core.schemas"


def test_every_schema_is_valid_draft_2020_12() -> None:
    assert set(json_schemas()) == {p.name for p in SCHEMAS.glob("*.json")}
    for name in json_schemas():
        _validator(name)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{type(e).__name__}-{e.type}")
def test_encoded_events_validate_against_the_schema_their_header_names(event) -> None:
    headers = dict(event_headers(event))
    assert headers == {"rlhf-event-type": event.type.encode(),
                       "rlhf-schema-version": b"1", "content-type": b"application/json"}
    body = json.loads(encode_event(event))
    _validator(schema_file_for_type(headers["rlhf-event-type"].decode())).validate(body)
    if event.type in ("ranking", "comparison", "rating", "demonstration"):
        _validator("feedback.json").validate(body)


@pytest.mark.parametrize(("name", "body", "why"), [
    ("ranking.json", {"type": "ranking", "ranks": [1, 2], "extra": 1}, "Additional properties"),
    ("rating.json", {"type": "rating", "score": "high"}, "is not of type 'number'"),
    ("comparison.json", {"type": "comparison", "preferred": "c"}, "is not one of"),
    ("completion.json", {"type": "completion", "request_id": "r", "policy_version": "p",
                         "model": "m", "endpoint": "completions", "prompt": "p",
                         "choices": []}, "should be non-empty"),
    ("policy.json", {"type": "deleted", "version": "v"}, "is not one of"),
    ("feedback.json", {"type": "completion"}, "is not valid under any of"),
])
def test_schemas_reject_what_the_decoder_rejects(name: str, body: dict, why: str) -> None:
    errors = [e.message for e in _validator(name).iter_errors(body)]
    assert any(why in m for m in errors), errors


def test_every_event_type_has_exactly_one_schema() -> None:
    types = [t for p in PUBLISHED if p.file != "feedback.json" for t in p.types]
    assert len(types) == len(set(types))
    assert {"completion", "ranking", "comparison", "rating", "demonstration", "candidate",
            "promote", "rollback", "swapped", "swap_failed"} <= set(types)
    with pytest.raises(KeyError):
        schema_file_for_type("unknown")


def _doc_examples() -> list[dict]:
    text = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_every_example_in_events_md_is_valid_and_decodes() -> None:
    examples = _doc_examples()
    assert {e["type"] for e in examples} == {"completion", "ranking", "comparison", "rating",
                                              "demonstration", "promote"}
    for example in examples:
        _validator(schema_file_for_type(example["type"])).validate(example)
        as_type = PolicyEvent if example["type"] == "promote" else None
        decoded = decode_event(json.dumps(example).encode(), as_type)
        assert decoded.event_id == example["event_id"]
