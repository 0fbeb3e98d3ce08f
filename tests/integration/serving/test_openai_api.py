"""The OpenAI-compatible HTTP API, on a real server process, through the official client."""

import asyncio
import json

import httpx
import pytest

from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.engine


def test_completion_carries_request_id_and_policy_version(server):
    client = server.openai()
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt="Tell me about the sea", max_tokens=8, n=3,
        extra_headers={"X-Request-Id": "req-test-123"})
    body = raw.parse()
    assert raw.headers["x-request-id"] == "req-test-123"  # the caller's correlation id
    assert body.id != "req-test-123" and body.id.startswith("cmpl-")  # the server's own id
    assert raw.headers["x-policy-version"] == body.policy_version == "base"
    assert [c.index for c in body.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("length", "stop") for c in body.choices)
    assert body.usage.completion_tokens > 0
    assert body.usage.total_tokens == body.usage.prompt_tokens + body.usage.completion_tokens


def test_generated_ids_are_unique_when_client_sends_none(server):
    client = server.openai()
    a = client.completions.create(model="tiny", prompt="hi", max_tokens=2)
    b = client.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert a.id != b.id and a.id.startswith("cmpl-")


def test_chat_completion(server):
    chat = server.openai().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Describe the moon."}],
        max_tokens=6, n=2, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert chat.policy_version == "base"
    assert len(chat.choices) == 2
    assert chat.choices[0].message.role == "assistant"
    tokens = chat.choices[0].logprobs.content
    assert len(tokens) == 6 and chat.usage.completion_tokens == 12
    assert all(t.logprob <= 0 for t in tokens)
    assert all(len(t.top_logprobs) == 2 for t in tokens)


def test_seeded_requests_are_reproducible_and_seeds_differ(server):
    client = server.openai()
    ask = dict(model="tiny", prompt="Count: one", max_tokens=12, temperature=1.0)
    a = client.completions.create(seed=7, **ask).choices[0].text
    b = client.completions.create(seed=7, **ask).choices[0].text
    c = client.completions.create(seed=8, **ask).choices[0].text
    assert a == b
    assert a != c


def test_max_tokens_and_usage_are_exact_with_ignore_eos(server):
    body = server.openai().completions.create(
        model="tiny", prompt="hi", max_tokens=9, n=2, extra_body={"ignore_eos": True})
    assert body.usage.completion_tokens == 18
    assert all(c.finish_reason == "length" for c in body.choices)


def test_completion_logprobs_shape(server):
    body = server.openai().completions.create(
        model="tiny", prompt="hi", max_tokens=5, logprobs=2, extra_body={"ignore_eos": True})
    lp = body.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert lp.text_offset[0] == 0
    steps = zip(lp.text_offset, lp.text_offset[1:], lp.tokens, strict=False)
    assert all(b - a == len(t) for a, b, t in steps)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        # Keys are decoded strings, so two byte-level tokens decoding alike share one key:
        # check membership and that the sampled token is no likelier than the top one.
        assert token in top
        assert logprob <= max(top.values()) + 1e-6


def test_stream_completion_ends_with_usage(server):
    stream = server.openai().completions.create(
        model="tiny", prompt="hi", max_tokens=6, n=2, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 12
    text = {0: "", 1: ""}
    for ch in chunks[:-1]:
        for c in ch.choices:
            text[c.index] += c.text
    assert all(text.values())
    assert {c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason} == {"length"}
    assert len({ch.id for ch in chunks}) == 1


def test_stream_chat_raw_sse_ends_with_done(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-policy-version"] == "base"
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][len("data: "):])
    assert first["choices"][0]["delta"]["role"] == "assistant"


async def test_async_client_concurrent_requests(server):
    client = server.async_openai()
    results = await asyncio.gather(*[
        client.completions.create(model="tiny", prompt=f"Number {i}", max_tokens=4)
        for i in range(16)])
    assert len({r.id for r in results}) == 16
    assert all(r.choices[0].text is not None for r in results)


@pytest.mark.parametrize("payload,param", [
    ({"prompt": "hi", "temperature": 9}, "temperature"),
    ({"prompt": "hi", "n": 0}, "n"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "top_p": 2}, "top_p"),
    ({"prompt": "hi", "logprobs": 50}, "logprobs"),
    ({}, "prompt"),
])
def test_invalid_parameters_are_400_naming_the_parameter(server, payload, param):
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", **payload})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param
    assert param in err["message"]
    assert err["code"] == 400


def test_unknown_but_harmless_fields_are_ignored_as_openai_and_vllm_do(server):
    r = httpx.post(server.url + "/v1/completions",
                   json={"model": "tiny", "prompt": "hi", "max_tokens": 2, "frobnicate": True})
    assert r.status_code == 200, r.text
    assert r.json()["policy_version"] == r.headers["x-policy-version"]


def test_unknown_model_is_404(server):
    r = httpx.post(server.url + "/v1/completions", json={"model": "gpt-9", "prompt": "hi"})
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "model"


def test_prompt_longer_than_context_is_400(server):
    long_prompt = "The cat walks in the park and feels happy. " * 200
    r = httpx.post(server.url + "/v1/completions",
                   json={"model": "tiny", "prompt": long_prompt, "max_tokens": 4})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt"
    r = httpx.post(server.url + "/v1/completions",
                   json={"model": "tiny", "prompt": "hi", "max_tokens": 600})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"


def test_models_health_ready(server):
    models = server.openai().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert httpx.get(server.url + "/health").status_code == 200
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200 and ready.json()["policy_version"] == "base"


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_and_tokens(server):
    before = httpx.get(server.url + "/metrics").text
    server.openai().completions.create(model="tiny", prompt="hi", max_tokens=5,
                                       extra_body={"ignore_eos": True})
    after = httpx.get(server.url + "/metrics").text
    assert _metric(after, "rlhf:generation_tokens_total") - \
        _metric(before, "rlhf:generation_tokens_total") == 5
    assert _metric(after, "rlhf:time_to_first_token_seconds_count") > \
        _metric(before, "rlhf:time_to_first_token_seconds_count")
    assert 'rlhf:requests_total{endpoint="/v1/completions",status="200"}' in after
    assert 'rlhf:policy_info{version="base"} 1.0' in after


def _in_flight(server) -> float:
    return _metric(httpx.get(server.url + "/metrics").text, "rlhf:engine_requests_in_flight")


def test_client_disconnect_mid_stream_aborts_engine_request(server):
    # 64 choices x 480 tokens with 20 log-probabilities each: megabytes of events, more
    # than the socket buffers hold, so the stream cannot finish before the client leaves.
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 480, "n": 64, "stream": True,
            "ignore_eos": True, "logprobs": 20}
    aborted = _metric(httpx.get(server.url + "/metrics").text, "rlhf:requests_aborted_total")
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()  # keep a reference: a dropped iterator closes the stream
        next(lines)
    wait_for(lambda: _in_flight(server) == 0 and _metric(
        httpx.get(server.url + "/metrics").text, "rlhf:requests_aborted_total") > aborted,
        10, interval=0.05, what="the abort to be counted and the engine to drain")
    assert _metric(httpx.get(server.url + "/metrics").text,
                   "rlhf:requests_aborted_total") == aborted + 1
    assert _in_flight(server) == 0
