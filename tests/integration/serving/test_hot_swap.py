"""Hot-swapping the served policy in place: under load, on Kafka events, with rollback."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import grpc
import httpx
import pytest

from core.events import encode_event
from core.registry import PolicyEvent, Registry
from core.settings import KafkaSettings
from feedback.broker import EmbeddedBroker
from protos.rlhf.v1 import inference_pb2 as pb
from protos.rlhf.v1 import inference_pb2_grpc
from tests.fixtures.kafka import produce_raw, read_topic, wait_for
from tests.fixtures.server import RemoteServer
from training.tiny_model import build_tiny_model

pytestmark = [pytest.mark.engine, pytest.mark.kafka]
ADMIN = {"Authorization": "Bearer sk-admin"}


@pytest.fixture(scope="module")
def registry(tiny_model, tmp_path_factory) -> Registry:
    tmp = tmp_path_factory.mktemp("swap")
    reg = Registry(tmp / "registry")
    reg.register_base(tiny_model)  # policy-0000
    reg.set_live("policy-0000", "base")
    reg.create_version("policy", build_tiny_model(tmp / "seed1", seed=1), {})  # 0001
    # Same tokenizer, different shapes: it must never reach the engine.
    reg.create_version("policy", build_tiny_model(tmp / "wide", hidden_size=192, num_heads=3),
                       {})  # 0002
    tampered = reg.create_version("policy", build_tiny_model(tmp / "seed2", seed=2), {})  # 0003
    (reg.path(tampered.version) / "model.safetensors").write_bytes(b"not the weights")
    truncated = build_tiny_model(tmp / "seed3", seed=3)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    reg.create_version("policy", truncated, {})  # 0004: consistent hashes, broken file
    return reg


@pytest.fixture(scope="module")
def stack(registry, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swap-stack")
    with ExitStack() as started:  # the broker stops even if the server never gets ready
        broker = started.enter_context(
            EmbeddedBroker(KafkaSettings(request_timeout_ms=2000), log_path=tmp / "tansu.log"))
        # No --model: a (re)started server serves the registry's live policy.
        server = started.enter_context(RemoteServer(None, log_path=tmp / "server.log", env={
            "RLHF_REGISTRY__ROOT": str(registry.root), "RLHF_PUBLISH_EVENTS": "true",
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "RLHF_AUTH__KEYS": json.dumps({"sk-admin": "admin", "sk-user": "user"})}))
        yield broker, server


def _greedy(server) -> tuple[str, str]:
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": "Bearer sk-user"},
                   json={"model": "tiny", "prompt": "Count: one, two", "max_tokens": 12,
                         "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], r.json()["policy_version"]


def _swap(server, version: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/admin/policy", headers=ADMIN,
                      json={"version": version}, timeout=60)


class _Streaming:
    """How many streams have their first chunk and not yet their last (client side)."""

    def __init__(self):
        self.lock, self.active = threading.Lock(), 0

    def __enter__(self):
        with self.lock:
            self.active += 1

    def __exit__(self, *exc):
        with self.lock:
            self.active -= 1


STREAMING = _Streaming()
# Long enough that streams are still running when the swap starts, even on a fast engine
# (the tiny model streams 64 tokens in tens of milliseconds); below max_model_len 512.
STREAM_TOKENS = 400


def _stream_one(server) -> str:
    body = {"model": "tiny", "prompt": "hi", "max_tokens": STREAM_TOKENS, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": "Bearer sk-user"}) as r:
        assert r.status_code == 200
        chunks = (ln for ln in r.iter_lines() if ln)
        lines = [next(chunks)]
        with STREAMING:  # mid-stream from the first chunk until the last
            lines += list(chunks)
    assert lines[-1] == "data: [DONE]"
    versions = {json.loads(ln[6:])["policy_version"] for ln in lines[:-1]}
    assert len(versions) == 1  # one stream, one version
    return versions.pop()


def _grpc_stream_one(server) -> str:
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        msgs = list(stub.GenerateStream(
            pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParameters(
                max_tokens=STREAM_TOKENS, ignore_eos=True)),
            metadata=(("authorization", "Bearer sk-user"),), timeout=60))
    versions = {m.policy_version for m in msgs}
    assert len(versions) == 1 and msgs[-1].usage.completion_tokens == STREAM_TOKENS
    return versions.pop()


PROBE = "Count: one, two"


def _http_probe(server) -> tuple[str, float]:
    """(version, top-1 log-probability of the first token): a fingerprint of the weights
    that batching noise cannot flip, unlike a greedy token."""
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": "Bearer sk-user"},
                   json={"model": "tiny", "prompt": PROBE, "max_tokens": 1, "temperature": 0,
                         "logprobs": 1}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["policy_version"], max(body["choices"][0]["logprobs"]["top_logprobs"][0].values())


def _grpc_probe(server) -> tuple[str, float]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        resp = inference_pb2_grpc.InferenceStub(ch).Generate(
            pb.GenerateRequest(prompt=PROBE, sampling=pb.SamplingParameters(
                max_tokens=1, temperature=0, logprobs=1)),
            metadata=(("authorization", "Bearer sk-user"),), timeout=60)
    return resp.policy_version, max(t.logprob for t in resp.choices[0].logprobs[0].top)


def test_started_without_model_serves_the_live_version(stack):
    _, server = stack
    assert httpx.get(server.url + "/ready").json()["policy_version"] == "policy-0000"


def test_swap_under_load_fails_no_request(stack):
    _, server = stack
    before, version = _greedy(server)
    assert version == "policy-0000"
    reference = {"policy-0000": _http_probe(server)[1]}
    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(f, server) for _ in range(8)
                   for f in (_stream_one, _grpc_stream_one)]
        probes = [pool.submit(f, server) for _ in range(8) for f in (_http_probe, _grpc_probe)]
        # Swap only once streams are really mid-way, so the swap must drain them.
        in_flight = wait_for(lambda: STREAMING.active >= 2 and STREAMING.active, 60,
                             interval=0.005, what="streams in flight before the swap")
        swapped = _swap(server, "policy-0001")
        served = [f.result() for f in streams]  # raises if any request failed
        probed = [f.result() for f in probes]
    assert swapped.status_code == 200, swapped.text
    assert in_flight >= 2
    assert set(served) <= {"policy-0000", "policy-0001"}
    assert "policy-0000" in served  # streams admitted before the swap finished on the old
    after, version = _greedy(server)
    assert version == "policy-0001"
    assert after != before  # other weights, other greedy text
    reference["policy-0001"] = _http_probe(server)[1]
    assert abs(reference["policy-0001"] - reference["policy-0000"]) > 1e-2
    for stamped, logprob in probed:  # each answer came from the weights it names
        assert logprob == pytest.approx(reference[stamped], abs=1e-3), stamped
    metrics = httpx.get(server.url + "/metrics").text
    assert 'rlhf:policy_info{version="policy-0001"} 1.0' in metrics
    assert httpx.get(server.url + "/ready").json()["policy_version"] == "policy-0001"

    assert _swap(server, "policy-0000").status_code == 200  # and back: the exact weights
    assert _greedy(server) == (before, "policy-0000")


@pytest.mark.parametrize("version,why", [
    ("policy-0002", "cannot be reloaded in place"),  # wrong shapes: refused up front
    ("policy-0003", "failed verification"),  # tampered files: refused up front
    ("policy-0004", "cannot be reloaded in place"),  # truncated safetensors
    ("policy-0042", "unknown version"),
])
def test_failed_swap_keeps_serving_the_previous_version(stack, version, why):
    _, server = stack
    before = _greedy(server)
    failed = _failed_swaps(server)
    r = _swap(server, version)
    assert r.status_code == 409
    assert why in r.json()["error"]["message"]
    assert r.json()["error"]["replica"]["policy_version"] == before[1]
    assert _greedy(server) == before
    assert httpx.get(server.url + "/ready").status_code == 200
    assert _failed_swaps(server) == failed + 1


def _failed_swaps(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    line = [ln for ln in text.splitlines()
            if ln.startswith('rlhf:policy_swaps_total{outcome="failed"}')]
    return float(line[0].rsplit(" ", 1)[1]) if line else 0.0


def test_admin_routes_need_the_admin_role(stack):
    _, server = stack
    r = httpx.post(server.url + "/v1/admin/policy", json={"version": "policy-0001"},
                   headers={"Authorization": "Bearer sk-user"})
    assert r.status_code == 403


def test_promote_event_on_kafka_swaps_and_is_reported(stack, registry):
    broker, server = stack
    kafka = broker.kafka
    start = _greedy(server)[1]
    target = "policy-0001" if start != "policy-0001" else "policy-0000"
    registry.set_live(target, "test")  # what the deploy controller does before the event
    event = PolicyEvent(type="promote", version=target, reason="test")
    produce_raw(kafka, kafka.topics.policy, [(None, encode_event(event))])
    wait_for(lambda: httpx.get(server.url + "/ready").json()["policy_version"] == target,
             60, what="swap on the promote event")
    def swapped() -> list[PolicyEvent]:  # heartbeats share the topic: read all there is
        records = read_topic(kafka, kafka.topics.policy, expected=10**6, timeout=1)
        reports = [PolicyEvent.model_validate_json(r.value) for r in records]
        return [e for e in reports if e.type == "swapped" and e.version == target and e.replica]
    wait_for(swapped, 30, what="the swapped report")
