"""gRPC conversion: protobuf in, the same request models HTTP validates, protobuf out."""

from __future__ import annotations

import asyncio
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


def _line(text: str, index: int = 0) -> str:
    return (f'data: {{"id": "c", "model": "m", "policy_version": "v", "choices": '
            f'[{{"index": {index}, "text": "{text}", "finish_reason": null}}]}}\n\n')


async def test_coalesce_waits_in_its_own_task_and_merges_what_arrived_meanwhile() -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    closed = []

    async def stream():
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            closed.append(True)

    messages = convert.coalesce(stream())
    queue.put_nowait(_line("a"))
    first = await anext(messages)
    assert [c.text for c in first.choices] == ["a"]
    for text, index in (("b", 0), ("x", 1), ("c", 0)):  # arrive while "a" is written
        queue.put_nowait(_line(text, index))
    second = await anext(messages)
    assert [(c.index, c.text) for c in second.choices] == [(0, "bc"), (1, "x")]
    waiting = asyncio.ensure_future(anext(messages))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing ready: it waits for the next chunk
    queue.put_nowait(_line("d"))
    queue.put_nowait(None)
    assert [c.text for c in (await waiting).choices] == ["d"]
    with pytest.raises(StopAsyncIteration):
        await anext(messages)
    assert closed == [True]


async def test_closing_coalesce_unwinds_the_stream_at_once() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    events = []

    async def stream():
        try:
            while True:
                yield await queue.get()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            await asyncio.sleep(0)  # cleanup that awaits (the engine abort) still runs
            events.append("closed")

    lines = stream()
    messages = convert.coalesce(lines)
    queue.put_nowait(_line("a"))
    await anext(messages)  # its drain left a step of the stream waiting on the queue
    await messages.aclose()
    assert events == ["cancelled", "closed"]
    await lines.aclose()  # not "already running"


async def test_a_cancelled_rpc_task_cancels_the_stream_step_it_waits_on() -> None:
    events = []

    async def stream():
        try:
            await asyncio.Event().wait()
            yield _line("never")
        finally:
            events.append("closed")

    messages = convert.coalesce(stream())
    task = asyncio.ensure_future(anext(messages))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["closed"]


async def test_chunks_before_a_stream_error_are_sent_first() -> None:
    async def stream():
        yield _line("a")
        raise RuntimeError("engine died")

    messages = convert.coalesce(stream())
    assert [c.text for c in (await anext(messages)).choices] == ["a"]
    with pytest.raises(RuntimeError, match="engine died"):
        await anext(messages)


def test_chunks_that_orjson_refuses_still_parse() -> None:
    line = ('data: {"id": "c", "model": "m", "policy_version": "v", "choices": [{"index": 0, '
            '"text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-Infinity], '
            '"top_logprobs": [null]}}]}\n\n')
    assert convert._chunk(line)["choices"][0]["logprobs"]["token_logprobs"] == [-math.inf]
