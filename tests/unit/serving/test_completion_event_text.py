"""The completion event is built from engine output with unstorable text replaced, and
published: a NUL the model generated is never a reason to lose a served completion."""

from __future__ import annotations

import pytest
from vllm.outputs import CompletionOutput, RequestOutput

from core.events import CompletionRecord, decode_event, encode_event
from serving import protocol as p
from serving.handlers.openai import CompletionLog, RequestContext, _Call, _Generation
from serving.metrics import ServingMetrics


class Sink:
    """Collects what the completion log hands over (the Kafka side is tested elsewhere)."""

    def __init__(self) -> None:
        self.events: list[CompletionRecord] = []

    def publish_nowait(self, event: CompletionRecord) -> None:
        self.events.append(event)


def _finished(call: _Call, prompt: str, texts: list[str]) -> _Generation:
    """One engine request of ``call`` that produced ``texts`` (one choice each) for ``prompt``."""
    gen = _Generation(len(call.generations), "engine-0", {"prompt": prompt}, delta=False)
    call.generations.append(gen)
    gen.add(RequestOutput(
        request_id="engine-0", prompt=prompt, prompt_token_ids=[1, 2, 3], prompt_logprobs=None,
        outputs=[CompletionOutput(index=i, text=t, token_ids=[7, 0], cumulative_logprob=None,
                                  logprobs=None, finish_reason="stop")
                 for i, t in enumerate(texts)],
        finished=True))
    return gen


def _log(request: object, endpoint: str = "completions") -> tuple[CompletionLog, Sink, _Call]:
    sink, metrics = Sink(), ServingMetrics()
    call = _Call(RequestContext(request_id="req-abc"), endpoint, request, "policy-v1",
                 "cmpl-abc")
    return CompletionLog(sink, metrics, "tiny", decode=lambda ids: ""), sink, call


def _unlogged(log: CompletionLog) -> float:
    return log.metrics.registry.get_sample_value(
        "rlhf:completions_unlogged_total", {"reason": "invalid"}) or 0.0


def test_a_generated_nul_is_replaced_and_the_completion_is_published():
    log, sink, call = _log(p.CompletionRequest(model="tiny", prompt="say x", n=2))
    gen = _finished(call, "say x", ["a\x00b", "clean"])

    log.log(call, gen)

    [record] = sink.events
    assert [c.text for c in record.choices] == ["a\ufffdb", "clean"]
    assert record.request_id == "cmpl-abc" and record.completion_tokens == 4
    assert _unlogged(log) == 0
    # what goes on the wire is what the ingester accepts
    assert decode_event(encode_event(record)) == record


def test_unstorable_prompt_messages_and_sampling_params_are_replaced_too():
    request = p.ChatCompletionRequest(
        model="tiny", messages=[{"role": "user", "content": "hi\x00 \ud800"}],
        stop=["\x00end"], user="u\x00")
    log, sink, call = _log(request, "chat.completions")
    gen = _finished(call, "<|user|>hi\x00 \ud800", ["ok\udfff"])

    log.log(call, gen)

    [record] = sink.events
    assert record.prompt == "<|user|>hi\ufffd \ufffd"
    assert record.messages is not None
    assert record.messages[0]["content"] == "hi\ufffd \ufffd"
    assert record.sampling_params["stop"] == ["\ufffdend"]
    assert record.user == "u\ufffd" and record.choices[0].text == "ok\ufffd"
    assert decode_event(encode_event(record)) == record


def test_store_false_is_not_logged():
    log, sink, call = _log(p.CompletionRequest(model="tiny", prompt="x", store=False))
    log.log(call, _finished(call, "x", ["y"]))
    assert sink.events == []


def test_a_record_over_the_event_limits_is_counted_not_published(caplog):
    # Sanitising replaces characters; a value over a bound (user: 256 characters) is
    # still refused, counted and logged with the completion id.
    log, sink, call = _log(p.CompletionRequest(model="tiny", prompt="x", user="u" * 300))
    log.log(call, _finished(call, "x", ["y"]))
    assert sink.events == []
    assert _unlogged(log) == 1
    assert "cmpl-abc" in caplog.text


@pytest.mark.parametrize("text", ["\x00", "a\x00b\x00", "\ud800x\udfff", "\x00\ud83d"])
def test_the_schema_still_refuses_what_storable_replaces(text):
    """Outside input keeps its validation: the same characters fail the event schema."""
    from pydantic import ValidationError

    from core.events import CompletionChoice

    with pytest.raises(ValidationError):
        CompletionChoice(index=0, text=text)
