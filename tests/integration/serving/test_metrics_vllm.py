"""/metrics serves vLLM's own engine metrics next to ours, on the real engine.

The serving process runs vLLM's ``AsyncLLM`` in-process with stats on, so vLLM's
Prometheus stat logger measures every request (queue time, prompt and generation
lengths, end-to-end latency). These tests scrape a real server after a real request, and
build two engines in one process the way a test session does.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from vllm import SamplingParams

from serving.engine import VllmEngine, _registered_vllm_collectors
from serving.metrics import ServingMetrics
from serving.settings import EngineSettings
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.engine

DASHBOARD = Path(__file__).resolve().parents[3] / "helm/rlhf/dashboards/rlhf.json"


def _samples(text: str) -> dict[str, float]:
    """Each sample name summed over its label sets (one replica: one model, engine 0)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


def _families(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


def _scrape(server) -> str:
    return httpx.get(server.url + "/metrics").text


def test_vllm_histograms_are_served_and_count_the_request(server):
    before = _samples(_scrape(server))
    done = server.openai().completions.create(model="tiny", prompt="Tell me about the sea",
                                              max_tokens=5, extra_body={"ignore_eos": True})
    prompt_tokens = done.usage.prompt_tokens
    assert done.usage.completion_tokens == 5

    # vLLM records a request's stats on the engine step that finished it, which may come
    # a moment after the answer reached the client: wait for it, then check exact deltas.
    e2e = "vllm:e2e_request_latency_seconds_count"
    wait_for(lambda: _samples(_scrape(server)).get(e2e, 0) > before.get(e2e, 0), 10,
             what="vLLM to record the request")
    text = _scrape(server)
    after = _samples(text)

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    for histogram in ("vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
                      "vllm:time_to_first_token_seconds", "vllm:request_prompt_tokens",
                      "vllm:request_generation_tokens"):
        assert delta(histogram + "_count") == 1, histogram
        assert histogram + "_bucket" in after, histogram
    assert delta("vllm:request_prompt_tokens_sum") == prompt_tokens
    assert delta("vllm:request_generation_tokens_sum") == 5
    assert delta("vllm:prompt_tokens_total") == prompt_tokens
    assert delta("vllm:generation_tokens_total") == 5
    # 5 tokens: the first closes the TTFT, each of the other 4 one inter-token gap.
    assert delta("vllm:inter_token_latency_seconds_count") == 4
    assert delta("vllm:e2e_request_latency_seconds_sum") > 0
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting"} <= after.keys()
    # labelled with the served model name (what /v1/models lists), not the checkpoint path
    assert set(re.findall(r'^vllm:\S*model_name="([^"]*)"', text, re.M)) == {"tiny"}
    # ...next to ours, in the same response, every family once.
    assert delta("rlhf:generation_tokens_total") == 5
    families = _families(text)
    assert [f for f, n in Counter(families).items() if n > 1] == []
    assert any(f.startswith("rlhf:") for f in families)
    assert any(f.startswith("vllm:") for f in families)
    # Every vLLM series the Grafana dashboard queries is really served.
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = {m for p in panels for t in p.get("targets", [])
               for m in re.findall(r"vllm:[\w:]+", t["expr"])}
    assert len(queried) >= 5 and queried <= after.keys(), queried - after.keys()


def test_unknown_v1_paths_share_one_unmatched_series(server):
    def unmatched(text: str) -> list[str]:
        return [line for line in text.splitlines()
                if line.startswith("rlhf:requests_total{") and 'endpoint="unmatched"' in line]

    before = unmatched(_scrape(server))
    for i in range(5):
        assert httpx.post(f"{server.url}/v1/bogus-{i}/x", json={}).status_code == 404
    text = _scrape(server)
    [series] = unmatched(text)  # one series for all five paths, not five
    assert 'status="404"' in series
    was = float(before[0].rsplit(" ", 1)[1]) if before else 0.0
    assert float(series.rsplit(" ", 1)[1]) == was + 5
    assert "bogus" not in text


def _total(metrics: ServingMetrics, name: str) -> float:
    return sum(s.value for family in metrics.registry.collect() for s in family.samples
               if s.name == name)


async def _eventually(predicate, timeout: float, what: str) -> None:
    """Poll without blocking the event loop (vLLM's output handler runs on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_two_engines_in_one_process_each_serve_their_own_vllm_metrics(tiny_model):
    settings = EngineSettings(max_model_len=256, kv_cache_space_gib=0.25, max_num_seqs=8)
    # Built at the same time, as two apps' lifespans would: the build lock keeps vLLM's
    # registry swap from registering a name twice.
    first, second = await asyncio.gather(
        asyncio.to_thread(VllmEngine, str(tiny_model), settings),
        asyncio.to_thread(VllmEngine, str(tiny_model), settings))
    try:
        ours = {e: ServingMetrics() for e in (first, second)}
        for engine, metrics in ours.items():
            metrics.bind_engine(engine)
        assert first.collectors and not set(first.collectors) & set(second.collectors)

        params = SamplingParams(max_tokens=3, ignore_eos=True)
        async for _ in first.generate([1, 2, 3, 4], params, "only-on-first"):
            pass
        e2e = "vllm:e2e_request_latency_seconds_count"
        await _eventually(lambda: _total(ours[first], e2e) == 1, 10,
                          "the first engine to record its request")
        assert _total(ours[first], "vllm:request_generation_tokens_sum") == 3
        assert _total(ours[second], e2e) == 0
        assert _total(ours[second], "vllm:generation_tokens_total") == 0
        # The global registry holds only the engine built last (and nothing created
        # since the build); the other engine is still served from its own collectors.
        assert set(_registered_vllm_collectors()) in (set(first.collectors),
                                                      set(second.collectors))
        for metrics in ours.values():
            families = _families(generate_latest(metrics.registry).decode())
            assert [f for f, n in Counter(families).items() if n > 1] == []
            assert "vllm:request_queue_time_seconds" in families
    finally:
        first.shutdown()
        second.shutdown()
