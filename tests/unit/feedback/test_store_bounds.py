"""Every value validation lets through fits the store, on SQLite and PostgreSQL.

Events AT every bound (longest strings, largest ints, 4-byte unicode, a million-character
text) are stored and read back unchanged; one past any bound is refused by validation,
naming the field, before it could reach a column. The bounds live in ``core.events`` and
the columns are compared with them here.
"""

from __future__ import annotations

import json
import sys

import pytest
from pydantic import ValidationError
from sqlalchemy import String, select

from core.events import (
    MAX_CHOICES,
    MAX_COMMENT_CHARS,
    MAX_EVENT_ID_CHARS,
    MAX_FINISH_REASON_CHARS,
    MAX_INT,
    MAX_NAME_CHARS,
    MAX_RANK,
    MAX_TEXT_CHARS,
    Comparison,
    CompletionChoice,
    CompletionRecord,
    Demonstration,
    Ranking,
    Rating,
)
from feedback.store.models import (
    Base,
    ComparisonTable,
    RankingEntryTable,
    RatingTable,
)

CLEF = "\U0001d11e"  # 4 bytes in UTF-8: a column that counted bytes would overflow


def _s(n: int, ch: str = CLEF) -> str:
    return ch * n


def _at_bound_completion(rid: str) -> CompletionRecord:
    return CompletionRecord(
        event_id=_s(MAX_EVENT_ID_CHARS - len(rid), "e") + rid,
        request_id=rid + _s(MAX_NAME_CHARS - len(rid)),
        policy_version=_s(MAX_NAME_CHARS), model=_s(MAX_NAME_CHARS), user=_s(MAX_NAME_CHARS),
        endpoint="chat.completions", purpose="eval",
        prompt=_s(MAX_TEXT_CHARS, "é"),
        messages=[{"role": "user", "content": _s(10_000), "n": sys.maxsize, "x": -1.5e308}],
        choices=[CompletionChoice(index=i, text=_s(8), finish_reason=_s(MAX_FINISH_REASON_CHARS),
                                  completion_tokens=MAX_INT) for i in range(MAX_CHOICES)],
        sampling_params={"temperature": 1.7976931348623157e308, "seed": 2**63 - 1},
        prompt_tokens=MAX_INT, completion_tokens=MAX_INT)


def test_events_at_every_bound_are_stored_and_read_back(feedback_store):
    c = _at_bound_completion("rid")
    ranking = Ranking(event_id=_s(MAX_EVENT_ID_CHARS, "r"), request_id=c.request_id,
                      choices=[MAX_CHOICES - 1, 0], ranks=[MAX_RANK, 1],
                      source="user", submitted_by=c.user)
    comparison = Comparison(prompt=_s(MAX_TEXT_CHARS), text_a=_s(MAX_TEXT_CHARS, "a"),
                            text_b=_s(MAX_TEXT_CHARS, "b"), preferred="tie",
                            submitted_by=_s(MAX_NAME_CHARS))
    rating = Rating(request_id=c.request_id, choice=MAX_CHOICES - 1, score=-1.7976931348623157e308,
                    comment=_s(MAX_COMMENT_CHARS), source="labeler")
    demo = Demonstration(messages=[{"role": "user", "content": _s(MAX_TEXT_CHARS // 8)}],
                         response=_s(MAX_TEXT_CHARS))
    result = feedback_store.persist([c, ranking, comparison, rating, demo])
    assert result.rejected == [] and (result.completions, result.feedback) == (1, 4)

    assert feedback_store.get_completion(c.request_id) == c
    groups = feedback_store.preference_groups()
    assert [g.ranks for g in groups] == [[MAX_RANK, 1], [1, 1]]
    assert groups[1].responses == [comparison.text_a, comparison.text_b]
    with feedback_store.engine.connect() as conn:
        assert conn.scalar(select(RatingTable.score)) == rating.score
        assert conn.scalar(select(RatingTable.comment)) == rating.comment
        assert set(conn.scalars(select(RankingEntryTable.choice_index))) == {MAX_CHOICES - 1, 0}
        assert conn.scalar(select(ComparisonTable.prompt)) == comparison.prompt
    [d] = feedback_store.demonstrations()
    assert d.response == demo.response


PAST = [
    (Ranking, {"prompt": "p", "responses": ["a", "b"], "ranks": [MAX_RANK + 1, 1]}, "ranks"),
    (Ranking, {"prompt": "p", "responses": ["a"] * (MAX_CHOICES + 1),
               "ranks": [1] * (MAX_CHOICES + 1)}, "responses"),
    (Ranking, {"request_id": "r", "choices": [MAX_CHOICES, 0], "ranks": [1, 2]}, "choices"),
    (Rating, {"prompt": "p", "response": "r", "score": 1, "comment": "c" * 10_001}, "comment"),
    (Rating, {"prompt": "p", "response": "r", "score": float("nan")}, "score"),
    (Rating, {"prompt": "p", "response": "r", "score": 1, "event_id": "e" * 129}, "event_id"),
    (Comparison, {"prompt": "p" * (MAX_TEXT_CHARS + 1), "text_a": "a", "text_b": "b",
                  "preferred": "a"}, "prompt"),
    (Comparison, {"request_id": "r" * (MAX_NAME_CHARS + 1), "choice_a": 0, "choice_b": 1,
                  "preferred": "a"}, "request_id"),
    (Demonstration, {"prompt": "p", "response": "r", "submitted_by": "s" * 257},
     "submitted_by"),
    (Demonstration, {"prompt": "p", "response": "r\x00"}, "response"),
    (Demonstration, {"messages": [{"content": "x" * 1_000_001}], "response": "r"}, "messages"),
]


@pytest.mark.parametrize("model, kwargs, field", PAST,
                         ids=[f"{m.__name__}-{f}" for m, _, f in PAST])
def test_one_past_any_bound_is_refused_by_validation_naming_the_field(model, kwargs, field):
    with pytest.raises(ValidationError) as exc:
        model(**kwargs)
    assert field in {str(e["loc"][0]) for e in exc.value.errors()}


@pytest.mark.parametrize("override, field", [
    ({"prompt_tokens": MAX_INT + 1}, "prompt_tokens"),
    ({"model": "m" * (MAX_NAME_CHARS + 1)}, "model"),
    ({"user": "u" * (MAX_NAME_CHARS + 1)}, "user"),
    ({"policy_version": "v\x00"}, "policy_version"),
    ({"sampling_params": {"temperature": float("inf")}}, "sampling_params"),
    ({"choices": [{"index": 0, "text": "t", "finish_reason": "f" * 33}]}, "choices"),
    ({"choices": [{"index": i, "text": "t"} for i in range(MAX_CHOICES + 1)]}, "choices"),
])
def test_completions_past_a_bound_are_refused(override, field):
    base = json.loads(_small_completion().model_dump_json())
    with pytest.raises(ValidationError) as exc:
        CompletionRecord.model_validate({**base, **override})
    assert field in {str(e["loc"][0]) for e in exc.value.errors()}


def _small_completion() -> CompletionRecord:
    return CompletionRecord(request_id="r", policy_version="v", model="m",
                            endpoint="completions", prompt="p",
                            choices=[CompletionChoice(index=0, text="t")])


# Every String column, and the bound (in core.events) or literal values it must hold.
COLUMN_BOUNDS = {
    "event_id": MAX_EVENT_ID_CHARS, "request_id": MAX_NAME_CHARS,
    "policy_version": MAX_NAME_CHARS, "model": MAX_NAME_CHARS, "user": MAX_NAME_CHARS,
    "submitted_by": MAX_NAME_CHARS, "finish_reason": MAX_FINISH_REASON_CHARS,
    "endpoint": CompletionRecord, "purpose": CompletionRecord, "kind": Ranking,
    "source": Ranking, "preferred": Comparison,
}


EVENT_TABLES = {"completions", "completion_choices", "feedback", "rankings", "ranking_entries",
                "comparisons", "ratings", "demonstrations", "pending_feedback",
                "processed_events"}


def _literal_values(model: type, name: str) -> list[str]:
    if name == "kind":
        return ["ranking", "comparison", "rating", "demonstration"]
    return list(model.model_fields[name].annotation.__args__)  # type: ignore[union-attr]


def test_every_string_column_holds_its_fields_bound():
    checked = 0
    for table in Base.metadata.tables.values():
        if table.name not in EVENT_TABLES:
            continue
        for col in table.columns:
            if not isinstance(col.type, String) or type(col.type).__name__ in ("Text", "JSON"):
                continue
            assert col.name in COLUMN_BOUNDS, f"{table.name}.{col.name} has no bound"
            bound = COLUMN_BOUNDS[col.name]
            if isinstance(bound, int):
                assert col.type.length == bound, f"{table.name}.{col.name}"
            else:
                longest = max(len(v) for v in _literal_values(bound, col.name))
                assert longest <= col.type.length, f"{table.name}.{col.name}"
            checked += 1
    assert checked >= 15
