"""Property: the decoder turns ANY bytes into an event or an InvalidEvent, nothing else,
and whatever it accepts fits the store's bounds and survives the wire unchanged."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.events import (
    MAX_INT,
    MAX_NAME_CHARS,
    InvalidEvent,
    decode_event,
    encode_event,
)
from tests.unit.feedback.strategies import json_values, records_payloads


def _check(raw: bytes) -> None:
    try:
        event = decode_event(raw)
    except InvalidEvent as e:
        assert e.reason  # always says why
        return
    assert decode_event(encode_event(event)) == event
    data = json.loads(raw)
    assert "event_id" in data  # never minted for a message
    for name in ("request_id", "submitted_by", "policy_version", "model", "user"):
        v = getattr(event, name, None)
        assert v is None or (len(v) <= MAX_NAME_CHARS and "\x00" not in v)
    for n in (getattr(event, "ranks", None) or []):
        assert 1 <= n <= MAX_INT


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records_payloads())
def test_any_event_shaped_payload_decodes_or_is_invalid(payload: tuple[str, bytes]):
    _check(payload[1])


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(
    lambda v: json.dumps(v, allow_nan=True).encode())))
def test_arbitrary_bytes_and_json_decode_or_are_invalid(raw: bytes):
    _check(raw)
