"""The serving app's HTTP edge without an engine: body-size limits, metrics labels,
request ids and feedback attribution (the engine never loads: no lifespan runs)."""

from __future__ import annotations

import httpx
import pytest

from core.auth import Caller
from core.events import Rating
from serving.handlers.feedback import FeedbackHandler, RecentCompletions
from serving.http.app import build_app
from serving.runtime import Runtime
from serving.settings import ServeSettings

KEYS = {"sk-user": "user", "sk-admin": "admin"}


def _app(**http):
    settings = ServeSettings(publish_events=False, grpc={"enabled": False},
                             auth={"keys": KEYS}, http=http)
    return build_app(Runtime(settings, "/nonexistent/tiny", "base"))


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                             headers={"Authorization": "Bearer sk-user"})


async def test_unknown_v1_paths_share_one_metrics_label():
    async with _client(_app()) as client:
        before = (await client.get("/metrics")).text.count("\n")
        for i in range(50):
            r = await client.post(f"/v1/bogus-{i}/x", json={})
            assert r.status_code == 404
        metrics = (await client.get("/metrics")).text
    assert "bogus" not in metrics
    assert 'endpoint="unmatched"' in metrics
    assert metrics.count("\n") - before < 50  # one series, not fifty


async def test_known_routes_are_labelled_by_template():
    async with _client(_app()) as client:
        await client.post("/v1/completions", json={"prompt": "hi"})  # 503: still loading
        metrics = (await client.get("/metrics")).text
    assert 'endpoint="/v1/completions"' in metrics


async def test_body_over_the_limit_is_413_by_content_length():
    async with _client(_app(max_body_bytes=2000)) as client:
        r = await client.post("/v1/completions", json={"prompt": "x" * 10000})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["type"] == "PayloadTooLargeError" and err["param"] == "body"
    assert err["code"] == 413


async def test_streamed_body_over_the_limit_is_413_without_content_length():
    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    async with _client(_app(max_body_bytes=2000)) as client:
        r = await client.post("/v1/feedback", content=chunks(),
                              headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["param"] == "body"


async def test_client_request_id_is_echoed_but_never_becomes_the_server_id():
    async with _client(_app()) as client:
        r = await client.post("/v1/completions", json={"prompt": "hi"},
                              headers={"X-Request-Id": "mine-1"})
    assert r.headers["x-request-id"] == "mine-1"
    assert r.json()["error"]["request_id"] != "mine-1"


class _Recorder:
    def __init__(self):
        self.sent = []

    async def publish_batch(self, topic, events):
        self.sent.extend(events)


@pytest.mark.parametrize("caller_name", ["key-abc123", None])
async def test_submitted_by_comes_from_the_api_key_not_the_body(caller_name):
    recorder = _Recorder()
    handler = FeedbackHandler(recorder, "rlhf.feedback", RecentCompletions())  # type: ignore[arg-type]
    rating = Rating(prompt="p", response="r", score=1.0, submitted_by="someone-else")
    await handler.submit(rating, Caller(name=caller_name, role="user"))
    [sent] = recorder.sent
    assert sent.submitted_by == caller_name
    assert sent.source == "user"
