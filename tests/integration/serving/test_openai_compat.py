"""OpenAI compatibility, ported from vLLM's own ``tests/entrypoints/openai/`` (completion,
chat, basic, prompt validation) and run against ``rlhf serve`` on the tiny model.

Assertions about the text a random model writes are dropped; what is checked is the
shape of the answers, the constraints the server must enforce (logit bias, structured
outputs, named tool calls) and the errors. LangChain's legacy ``OpenAI`` client (which
always sends ``prompt`` as a list) and ``ChatOpenAI`` with structured output run too.
"""

from __future__ import annotations

import json
from typing import Literal

import grpc
import httpx
import openai
import pytest
from pydantic import BaseModel

from protos.rlhf.v1 import inference_pb2 as pb
from protos.rlhf.v1 import inference_pb2_grpc

pytestmark = pytest.mark.engine

MODEL = "tiny"


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


# -- completions (vLLM: test_completion.py, test_prompt_validation.py) --------------------

def test_batch_of_text_prompts_gives_n_choices_per_prompt(client):
    out = client.completions.create(model=MODEL, prompt=["The sea", "A forest"], n=2,
                                    max_tokens=3)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert 4 <= out.usage.completion_tokens <= 4 * 3
    assert out.policy_version  # type: ignore[attr-defined]


def test_batch_of_token_prompts(client):
    out = client.completions.create(model=MODEL, prompt=[[10, 11, 12], [20, 21]],
                                    max_tokens=2)
    assert sorted(c.index for c in out.choices) == [0, 1]


def test_streamed_batch_names_each_choice(client):
    indices = set()
    for chunk in client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=3,
                                           stream=True):
        assert len(chunk.choices) <= 1
        indices.update(c.index for c in chunk.choices)
    assert indices == {0, 1}


def test_echo_returns_the_prompt_before_the_completion(client):
    out = client.completions.create(model=MODEL, prompt="Hello there", echo=True,
                                    max_tokens=2)
    assert out.choices[0].text.startswith("Hello there")


def test_logit_bias_forces_the_token(client):
    forced = 100
    out = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=5,
                                    temperature=0, logit_bias={str(forced): 100},
                                    extra_body={"return_token_ids": True})
    ids = out.choices[0].token_ids  # type: ignore[attr-defined]
    assert ids and set(ids) == {forced}


@pytest.mark.parametrize("seed", [2**63, -2**63 - 1])
def test_seed_outside_int64_is_400_naming_seed(server, seed):
    r = httpx.post(server.url + "/v1/completions",
                   json={"model": MODEL, "prompt": "hi", "seed": seed})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "seed"


def test_stream_options_without_stream_is_400(server):
    r = httpx.post(server.url + "/v1/completions", json={
        "model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "stream_options"


def test_sse_chunks_carry_finish_reason_null_and_one_choice_each(server):
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 4, "n": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        version = r.headers["x-policy-version"]
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]
    assert all(len(c["choices"]) == 1 for c in chunks)
    assert all("finish_reason" in c["choices"][0] for c in chunks)
    assert any(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1, 2}
    assert {c["policy_version"] for c in chunks} == {version}


# -- chat (vLLM: test_chat.py) -------------------------------------------------------------

def test_content_parts_and_the_developer_role(client):
    out = client.chat.completions.create(model=MODEL, max_tokens=3, messages=[
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                     {"type": "text", "text": " there"}]}])
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason in ("stop", "length")


def test_response_format_text(client):
    out = client.chat.completions.create(model=MODEL, max_tokens=3,
                                         messages=[{"role": "user", "content": "hi"}],
                                         response_format={"type": "text"})
    assert out.choices[0].message.content is not None


def test_response_format_json_schema_constrains_the_output(client):
    schema = {"type": "string", "enum": ["yes", "no"]}
    out = client.chat.completions.create(
        model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Is it?"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": schema}})
    assert json.loads(out.choices[0].message.content) in ("yes", "no")


def test_response_format_json_object_starts_an_object(client):
    out = client.chat.completions.create(model=MODEL, max_tokens=8,
                                         messages=[{"role": "user", "content": "JSON?"}],
                                         response_format={"type": "json_object"})
    assert out.choices[0].message.content.lstrip().startswith("{")


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}}}}


@pytest.fixture(scope="module")
def tool_client(tiny_model, tmp_path_factory):
    """A server with a tool parser, as vLLM needs one for named and auto tool choice."""
    from tests.fixtures.server import RemoteServer

    srv = RemoteServer(tiny_model, log_path=tmp_path_factory.mktemp("tools") / "server.log",
                       env={"RLHF_OPENAI__TOOL_CALL_PARSER": "pythonic",
                            "RLHF_OPENAI__ENABLE_AUTO_TOOL_CHOICE": "true"})
    yield srv.openai()
    srv.stop()


def test_named_tool_choice_needs_a_tool_parser_as_in_vllm(client):
    with pytest.raises(openai.BadRequestError, match="tool-call-parser"):
        client.chat.completions.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Weather?"}],
            tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})


def test_named_tool_choice_returns_a_valid_tool_call(tool_client):
    client = tool_client
    out = client.chat.completions.create(
        model=MODEL, max_tokens=40, messages=[{"role": "user", "content": "Weather?"}],
        tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


def test_tool_choice_auto_answers(tool_client):
    out = tool_client.chat.completions.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Weather?"}],
        tools=[TOOL], tool_choice="auto")
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_choice_none_answers_in_text(client):
    out = client.chat.completions.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Weather?"}],
        tools=[TOOL], tool_choice="none")
    assert not out.choices[0].message.tool_calls


def test_chat_stream_opens_with_the_role_then_deltas(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, max_tokens=3, stream=True, messages=[{"role": "user", "content": "hi"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


# -- models (vLLM: test_basic.py) -------------------------------------------------------

def test_models_list_and_retrieve(client, server):
    listed = client.models.list()
    assert [m.id for m in listed.data] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.policy_version  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


# -- LangChain ------------------------------------------------------------------------

def test_langchain_legacy_openai_client(server):
    from langchain_openai import OpenAI

    llm = OpenAI(base_url=server.url + "/v1", api_key="none", model=MODEL, max_tokens=4)
    assert isinstance(llm.invoke("Tell me about the sea"), str)
    result = llm.generate(["One", "Two"])  # one request, prompt as a list of two
    assert len(result.generations) == 2


def test_langchain_chat_openai_with_structured_output(server):
    from langchain_openai import ChatOpenAI

    class Answer(BaseModel):
        verdict: Literal["yes", "no"]

    chat = ChatOpenAI(base_url=server.url + "/v1", api_key="none", model=MODEL,
                      max_tokens=40)
    assert isinstance(chat.invoke("hi").content, str)
    answer = chat.with_structured_output(Answer, method="json_schema").invoke("Is it?")
    assert answer.verdict in ("yes", "no")


# -- the same fields over gRPC ----------------------------------------------------------

def test_grpc_batch_prompts_logit_bias_and_response_format(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        batch = pb.GenerateRequest(model=MODEL, prompts=pb.Prompts(items=["a", "b"]))
        batch.sampling.max_tokens = 2
        assert sorted(c.index for c in stub.Generate(batch).choices) == [0, 1]

        schema = {"name": "answer", "schema": {"type": "string", "enum": ["yes", "no"]}}
        shaped = pb.GenerateRequest(model=MODEL, messages=pb.ChatMessages(
            messages=[pb.ChatMessage(role="user", content="Is it?")]))
        shaped.sampling.max_tokens = 20
        shaped.sampling.response_format.type = "json_schema"
        shaped.sampling.response_format.json_schema = json.dumps(schema)
        assert json.loads(stub.Generate(shaped).choices[0].text) in ("yes", "no")

        # The same forced token as over HTTP: the bias reached the sampler.
        forced = httpx.post(server.url + "/v1/completions", timeout=60, json={
            "model": MODEL, "prompt": "Tell me", "max_tokens": 3, "temperature": 0,
            "logit_bias": {"100": 100}}).json()["choices"][0]["text"]
        biased = pb.GenerateRequest(model=MODEL, prompt="Tell me")
        biased.sampling.max_tokens = 3
        biased.sampling.temperature = 0
        biased.sampling.logit_bias[100] = 100
        assert stub.Generate(biased).choices[0].text == forced

        bad = pb.GenerateRequest(model=MODEL, prompt="hi")
        bad.sampling.response_format.type = "json_schema"
        bad.sampling.response_format.json_schema = "{not json"
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
