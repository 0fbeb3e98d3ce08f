"""Hypothesis strategies of Kafka payloads: valid events, mutated ones, oversized values.

``records_payloads(prefix)`` draws ``(kind, bytes)`` where kind names the topic the
payload belongs on (``completion`` or ``feedback``); the bytes may be anything from a
valid event to garbage. Request ids come from a small per-prefix pool so that feedback
joins, waits for, or misses its completion.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from core.events import MAX_INT, MAX_NAME_CHARS

USERS = [None, "key-u1", "key-u2"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)

# Values chosen to sit at or just past what the store can hold.
edge_values = st.sampled_from([
    None, True, -1, 0, 1, 2, 1023, 1024, 1025, MAX_INT, MAX_INT + 1, 2**63, -(2**63) - 1,
    float("nan"), float("inf"), -0.0, 1e308, "", "a\x00b", "x" * MAX_NAME_CHARS,
    "x" * (MAX_NAME_CHARS + 1), "\U0001d11e" * MAX_NAME_CHARS, [], [0, 0], [1, 2**40], {},
    "poison",
])


def _texts() -> st.SearchStrategy[str]:
    return st.text(max_size=12) | st.sampled_from(["poison", "é\U0001d11e", "p"])


@st.composite
def completion_dict(draw: Any, rid: str, eid: str) -> dict:
    n = draw(st.integers(1, 3))
    return {"type": "completion", "event_id": eid, "request_id": rid, "policy_version": "v1",
            "model": "tiny", "endpoint": "completions", "prompt": draw(_texts()),
            "choices": [{"index": i, "text": draw(_texts()), "finish_reason": "stop",
                         "completion_tokens": draw(st.integers(0, 5))} for i in range(n)],
            "sampling_params": {"temperature": 1.0}, "prompt_tokens": 1,
            "completion_tokens": n, "user": draw(st.sampled_from(USERS)),
            "purpose": draw(st.sampled_from(["train", "eval"]))}


@st.composite
def feedback_dict(draw: Any, rids: list[str], eid: str) -> dict:
    who = {"event_id": eid, "source": draw(st.sampled_from(["user", "labeler"])),
           "submitted_by": draw(st.sampled_from(USERS))}
    by_ref = draw(st.booleans())
    rid = draw(st.sampled_from(rids))
    idx = st.integers(0, 4)  # completions have 1..3 choices: some indices do not exist
    kind = draw(st.sampled_from(["ranking", "comparison", "rating", "demonstration"]))
    if kind == "ranking":
        k = draw(st.integers(2, 3))
        form = ({"request_id": rid, "choices": draw(st.lists(idx, min_size=k, max_size=k,
                                                             unique=True))}
                if by_ref else {"prompt": "p", "responses": [draw(_texts()) for _ in range(k)]})
        return {"type": kind, **who, **form, "ranks": [draw(st.integers(1, k)) for _ in range(k)]}
    if kind == "comparison":
        a, b = draw(st.lists(idx, min_size=2, max_size=2, unique=True))
        form = ({"request_id": rid, "choice_a": a, "choice_b": b} if by_ref
                else {"prompt": "p", "text_a": draw(_texts()), "text_b": "b"})
        return {"type": kind, **who, **form, "preferred": draw(st.sampled_from("ab"))}
    if kind == "rating":
        form = ({"request_id": rid, "choice": draw(idx)} if by_ref
                else {"prompt": "p", "response": "r"})
        return {"type": kind, **who, **form, "score": draw(st.floats(-10, 10)),
                "comment": draw(st.none() | _texts())}
    return {"type": kind, **who, "prompt": draw(_texts()), "response": "ideal"}


@st.composite
def mutated(draw: Any, data: dict, index: int) -> dict:
    """Replace, drop or add one field; event_id mutations stay unique per record."""
    data = dict(data)
    key = draw(st.sampled_from(sorted(data) + ["unknown_field"]))
    action = draw(st.sampled_from(["replace", "edge", "drop"]))
    if key == "event_id":
        choice = draw(st.sampled_from(["drop", "int", "long", "nul", "empty"]))
        if choice == "drop":
            del data["event_id"]
        else:
            data["event_id"] = {"int": 10**6 + index, "long": f"{index}" + "x" * 128,
                                "nul": f"{data['event_id']}\x00", "empty": ""}[choice]
    elif action == "drop" and key in data:
        del data[key]
    else:
        data[key] = draw(edge_values if action == "edge" else json_values)
    return data


@st.composite
def records_payloads(draw: Any, prefix: str = "p", index: int = 0,
                     rids: list[str] | None = None) -> tuple[str, bytes]:
    """One payload: ``(kind, bytes)`` with kind ``completion`` or ``feedback``."""
    rids = rids or [f"{prefix}-r{i}" for i in range(3)]
    eid = f"{prefix}-e{index}"
    if draw(st.booleans()):
        kind, data = "completion", draw(completion_dict(draw(st.sampled_from(rids)), eid))
    else:
        kind, data = "feedback", draw(feedback_dict(rids, eid))
    shape = draw(st.sampled_from(["valid", "valid", "valid", "mutated", "garbage"]))
    if shape == "garbage":
        return kind, draw(st.binary(max_size=30))
    if shape == "mutated":
        data = draw(mutated(data, index))
    return kind, json.dumps(data, allow_nan=True).encode()
