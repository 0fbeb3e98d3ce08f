"""gRPC conversion: protobuf in, the same request models HTTP validates, protobuf out."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from protos.rlhf.v1 import inference_pb2 as pb
from serving import protocol as p
from serving.grpc import convert


def test_a_prompt_becomes_a_completion_request() -> None:
    msg = pb.GenerateRequest(prompt="Describe the ocean.", user="u1")
    msg.sampling.max_tokens = 5
    msg.sampling.temperature = 0.0
    msg.sampling.stop.extend(["\n"])
    req = convert.to_request(msg, stream=False)
    assert isinstance(req, p.CompletionRequest)
    assert (req.prompt, req.max_tokens, req.temperature, req.stop, req.user) == \
        ("Describe the ocean.", 5, 0.0, ["\n"], "u1")
    assert req.top_p == p.CompletionRequest(prompt="x").top_p  # unset → the API default


def test_token_ids_and_messages() -> None:
    ids = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 2, 3]))
    assert convert.to_request(ids, stream=False).prompt == [1, 2, 3]
    chat = pb.GenerateRequest(messages=pb.ChatMessages(
        messages=[pb.ChatMessage(role="user", content="hi")]))
    chat.sampling.logprobs = 2
    req = convert.to_request(chat, stream=True)
    assert isinstance(req, p.ChatCompletionRequest)
    assert [m["content"] for m in req.messages] == ["hi"]
    assert (req.logprobs, req.top_logprobs, req.stream) == (True, 2, True)
    assert req.stream_options is not None and req.stream_options.include_usage


def test_invalid_values_fail_validation_naming_the_field() -> None:
    msg = pb.GenerateRequest(prompt="hi")
    msg.sampling.temperature = math.nan
    with pytest.raises(ValidationError, match="temperature"):
        convert.to_request(msg, stream=False)


def test_a_response_round_trips_into_protobuf() -> None:
    response = {"id": "cmpl-1", "model": "tiny", "policy_version": "policy-0003",
                "created": 7, "choices": [
                    {"index": 0, "text": "good", "finish_reason": "stop", "logprobs": None},
                    {"index": 1, "text": "bad", "finish_reason": None, "logprobs": None}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    out = convert.to_response(response)
    assert (out.request_id, out.model, out.policy_version) == ("cmpl-1", "tiny", "policy-0003")
    assert [(c.index, c.text, c.finish_reason) for c in out.choices] == \
        [(0, "good", "stop"), (1, "bad", "")]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
        (3, 2, 5)


def test_chat_chunks_and_logprobs_convert() -> None:
    chunk = {"id": "chatcmpl-1", "model": "tiny", "policy_version": "v", "choices": [
        {"index": 0, "delta": {"content": "hi"}, "finish_reason": None,
         "logprobs": {"content": [{"token": "hi", "logprob": -0.5,
                                   "top_logprobs": [{"token": "yo", "logprob": -1.0}]}]}}]}
    out = convert.to_stream_response(chunk)
    assert out.choices[0].text == "hi"
    assert out.choices[0].logprobs[0].sampled.logprob == -0.5
    assert out.choices[0].logprobs[0].top[0].token == "yo"


def test_stream_chunks_coalesce_one_choice_per_index() -> None:
    def chunk(index, text, finish=None, usage=None):
        return {"id": "cmpl-1", "model": "tiny", "policy_version": "v", "usage": usage,
                "choices": [] if index is None else
                [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}

    out = convert.merge_stream_chunks([
        chunk(0, "a"), chunk(1, "x"), chunk(0, "b"), chunk(1, "y", "length"),
        chunk(None, "", usage={"prompt_tokens": 2, "completion_tokens": 4,
                               "total_tokens": 6})])
    assert [(c.index, c.text, c.finish_reason) for c in out.choices] == \
        [(0, "ab", ""), (1, "xy", "length")]
    assert out.usage.total_tokens == 6


async def test_coalesce_sends_what_is_ready_as_one_message() -> None:
    lines = [f'data: {{"id": "c", "model": "m", "policy_version": "v", "choices": '
             f'[{{"index": 0, "text": "{t}", "finish_reason": null}}]}}\n\n' for t in "abc"]

    async def stream():
        for line in lines:
            yield line
        yield "data: [DONE]\n\n"

    messages = [m async for m in convert.coalesce(stream())]
    assert "".join(c.text for m in messages for c in m.choices) == "abc"
    assert len(messages) < len(lines)  # ready chunks share a message
