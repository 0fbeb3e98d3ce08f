"""Staged rollouts across three real ``rlhf serve`` replicas, a real broker and ingester.

One fleet per module (engines are the expensive part): the tiny base as policy-0000,
more tiny policies with other seeds, one with other shapes. Every replica heartbeats
on ``rlhf.policy``; the controller runs in-process behind its real admin API with its
event loop and fleet watcher. Tests run in order and each starts from the live version
the previous one left.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import deploy.rollout as rollout_module
from core.auth import KeyRing
from core.registry import Registry
from core.settings import KafkaSettings
from deploy.api import create_app
from deploy.controller import DeployController
from deploy.settings import DeploySettings, RolloutSettings
from feedback.broker import EmbeddedBroker
from feedback.store import FeedbackStore
from tests.fixtures.kafka import IngesterProcess, wait_for
from tests.fixtures.server import RemoteServer
from tests.integration.deploy.rollout_outcomes import rollout_outcomes
from training.tiny_model import build_tiny_model

pytestmark = [pytest.mark.engine, pytest.mark.kafka]
KEYS = {"sk-user": "user", "sk-admin": "admin"}
USER = {"Authorization": "Bearer sk-user"}
ADMIN = {"Authorization": "Bearer sk-admin"}
BASE, SEED1, WIDE, SEED2, SEED3 = (f"policy-000{i}" for i in range(5))


@dataclass
class Fleet:
    registry: Registry
    kafka: KafkaSettings
    db_url: str
    replicas: dict[str, RemoteServer]
    tmp: Path


@pytest.fixture(scope="module")
def fleet(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    registry = Registry(tmp / "registry")
    registry.register_base(tiny_model)  # policy-0000
    registry.set_live(BASE, "bootstrap")
    registry.create_version("policy", build_tiny_model(tmp / "seed1", seed=1), {})
    registry.create_version("policy", build_tiny_model(tmp / "wide", hidden_size=192,
                                                       num_heads=3), {})
    registry.create_version("policy", build_tiny_model(tmp / "seed2", seed=2), {})
    registry.create_version("policy", build_tiny_model(tmp / "seed3", seed=3), {})
    db_url = f"sqlite:///{tmp / 'feedback.db'}"
    store = FeedbackStore(db_url)
    store.migrate()
    store.close()
    with ExitStack() as started:  # each process stopped, also when a later one fails
        broker = started.enter_context(EmbeddedBroker(KafkaSettings(request_timeout_ms=2000),
                                                      log_path=tmp / "tansu.log"))
        started.enter_context(IngesterProcess(broker.kafka, db_url, tmp / "ingest.log"))

        def start(i: int) -> RemoteServer:
            return RemoteServer(None, log_path=tmp / f"r{i}.log", timeout=400, env={
                "RLHF_REGISTRY__ROOT": str(registry.root), "RLHF_PUBLISH_EVENTS": "true",
                "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "RLHF_KAFKA__REQUEST_TIMEOUT_MS": "2000", "RLHF_AUTH__KEYS": json.dumps(KEYS),
                "RLHF_REPLICA__ID": f"r{i}", "RLHF_REPLICA__HEARTBEAT_INTERVAL_S": "1",
                "RLHF_ENGINE__KV_CACHE_SPACE_GIB": "0.25", "RLHF_ENGINE__MAX_NUM_SEQS": "16"})

        # The replicas start together; the ones that came up are stopped even when another
        # failed (pool.map would drop them with the first error).
        with ThreadPoolExecutor(3) as pool:
            starting = [pool.submit(start, i) for i in range(3)]
        for future in starting:
            if future.exception() is None:
                started.enter_context(future.result())
        servers = [future.result() for future in starting]  # raises the first failure
        yield Fleet(registry, broker.kafka, db_url,
                    {f"r{i}": s for i, s in enumerate(servers)}, tmp)


def controller_for(fleet: Fleet, policy: dict | None = None, **rollout) -> DeployController:
    settings = DeploySettings(group_id=f"fleet-{uuid.uuid4().hex[:6]}", poll_timeout_ms=200,
                              session_timeout_ms=3000, max_poll_interval_ms=3000,
                              # heartbeats every 1 s; under a full suite on 2 cores one
                              # replica went unheard for > 5 s and was left out of a rollout
                              rollout=RolloutSettings(stale_after_s=15, swap_timeout_s=120,
                                                      **rollout))
    settings.registry.root = fleet.registry.root
    settings.database.url = fleet.db_url
    settings.kafka = fleet.kafka
    if policy is not None:
        path = fleet.tmp / f"policy-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(json.dumps(policy))  # JSON is YAML
        settings.rollout.policy_file = path
    return DeployController(settings, store=FeedbackStore(fleet.db_url))


def wait_fleet(client: TestClient, version: str) -> list[dict]:
    """Until the status lists three ready replicas on ``version``."""
    def ready() -> list[dict] | None:
        rows = client.get("/v1/deploy/status", headers=ADMIN).json()["replicas"]
        ok = len(rows) == 3 and all(r["ready"] and r["version"] == version for r in rows)
        return rows if ok else None
    return wait_for(ready, 60, interval=0.3, what=f"three replicas on {version}")


@dataclass
class Traffic:
    """A closed-loop client over every replica, a /ready sampler, and an optional rater."""

    fleet: Fleet
    rate: dict[str, float] | None = None
    workers: int = 3
    answers: list[tuple[str, str, float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    samples: list[tuple[float, dict[str, tuple[bool, str]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Traffic:
        names = sorted(self.fleet.replicas)
        self._threads = [threading.Thread(target=self._client, args=(names[i % 3], i))
                         for i in range(self.workers)]
        self._sampling = threading.Thread(target=self._sampler)
        for t in [*self._threads, self._sampling]:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        # Clients first: the sampler goes on until a whole sweep of /ready began after the
        # last answer ended (the sweep under way may have asked a replica before), so every
        # answer has a sample of its replica's version after it ended.
        self._stop.set()
        for t in self._threads:
            t.join(60)
        try:
            swept = len(self.samples) + 2
            wait_for(lambda: len(self.samples) >= swept, 60, interval=0.05,
                     what="a /ready sample after the last answer")
        finally:
            self._stop_sampling.set()
            self._sampling.join(60)

    def wait_answers(self, more: int) -> None:
        """Until ``more`` answers beyond those so far have come back."""
        target = len(self.answers) + more
        wait_for(lambda: len(self.answers) >= target or self.failures, 120,
                 what=f"{more} more answers")

    def _client(self, first: str, seed: int) -> None:
        names, i = sorted(self.fleet.replicas), seed
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                name = names[i % len(names)]
                i += 1
                try:
                    self._one(http, name)
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    self.failures.append(f"{name}: {e!r}")

    def _one(self, http: httpx.Client, name: str) -> None:
        server = self.fleet.replicas[name]
        body = {"model": "tiny", "prompt": "Count: one, two", "max_tokens": 8,
                "ignore_eos": True, "stream": True}
        started = time.monotonic()
        with http.stream("POST", server.url + "/v1/completions", json=body,
                         headers=USER) as r:
            if r.status_code != 200:
                r.read()
                raise AssertionError(f"HTTP {r.status_code}: {r.text[:200]}")
            lines = [ln for ln in r.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]", "truncated stream"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        versions = {c["policy_version"] for c in chunks}
        assert len(versions) == 1, f"one stream, many versions: {versions}"
        finished = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
        assert finished and finished[-1] == "length", f"truncated stream: {finished[-3:]}"
        version = versions.pop()
        self.answers.append((name, version, started, time.monotonic()))
        if self.rate is not None:
            jitter = (len(self.answers) % 3 - 1) * 0.5
            score = self.rate.get(version, self.rate.get("*", 4.0)) + jitter
            fb = http.post(server.url + "/v1/feedback", headers=USER, json={
                "type": "rating", "request_id": chunks[0]["id"], "choice": 0, "score": score})
            assert fb.status_code == 202, fb.text

    def _sampler(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop_sampling.is_set():
                state = {}
                for name, server in self.fleet.replicas.items():
                    try:
                        body = http.get(server.url + "/ready").json()
                        state[name] = (bool(body["ready"]), body["policy_version"])
                    except Exception:  # noqa: BLE001 - unreachable counts as not ready
                        state[name] = (False, "?")
                self.samples.append((time.monotonic(), state))
                time.sleep(0.05)

    def check(self) -> None:
        """No failure, never all replicas down, each answer from its replica's version."""
        assert not self.failures, self.failures[:5]
        assert self.answers and self.samples
        down = [s for _, s in self.samples if not any(ready for ready, _ in s.values())]
        assert not down, f"all replicas not ready at once: {down[:3]}"
        for name in self.fleet.replicas:
            # the version a replica reports, ready or mid-swap (it names the old version
            # until its swap completes), sampled every 50 ms
            seen = [(t, s[name][1]) for t, s in self.samples]
            for replica, version, started, ended in self.answers:
                if replica != name:
                    continue
                around = {v for t, v in seen if started - 0.2 <= t <= ended + 0.2}
                before = [v for t, v in seen if t <= started]
                after = [v for t, v in seen if t >= ended]
                assert version in around | set(before[-1:]) | set(after[:1]), \
                    (name, version, around)


def versions(fleet: Fleet) -> dict[str, str]:
    return {n: httpx.get(s.url + "/ready").json()["policy_version"]
            for n, s in fleet.replicas.items()}


def test_staged_rollout_keeps_the_fleet_serving(fleet):
    controller = controller_for(fleet, max_unavailable="1")
    with TestClient(create_app(controller, KeyRing(KEYS), consume_events=True)) as client:
        rows = wait_fleet(client, BASE)
        assert {r["replica"] for r in rows} == {"r0", "r1", "r2"}
        assert all(r["url"].startswith("http://127.0.0.1:") for r in rows)
        with Traffic(fleet) as traffic:
            traffic.wait_answers(6)  # every replica busy before the rollout …
            r = client.post("/v1/deploy/promote", headers=ADMIN,
                            json={"version": SEED1, "force": True, "reason": "staged"})
            traffic.wait_answers(6)  # … and after it
        assert r.status_code == 200, r.text
        traffic.check()
        rollout = r.json()["rollout"]
        assert rollout["outcome"] == "promoted"
        assert [s["replica"] for s in rollout["steps"]] == ["r0", "r1", "r2"]
        assert all(s["ok"] and s["seconds"] > 0 for s in rollout["steps"])
        # at most one replica was not ready at any sampled moment (max_unavailable = 1)
        assert max(sum(not ready for ready, _ in s.values()) for _, s in traffic.samples) <= 1
        assert {v for _, v, _, _ in traffic.answers} == {BASE, SEED1}
        assert versions(fleet) == {"r0": SEED1, "r1": SEED1, "r2": SEED1}
        assert fleet.registry.live_policy() == SEED1
        wait_fleet(client, SEED1)
        metrics = client.get("/metrics").text
        assert 'rlhf:rollout_replica_swap_seconds_count{outcome="ok",replica="r1"} 1.0' in metrics
        assert f'rlhf:rollout_state{{state="idle",version="{SEED1}"}} 1.0' in metrics
        assert rollout_outcomes(metrics) == {("promoted", "forced"): 1}
    per_version = httpx.get(fleet.replicas["r0"].url + "/metrics").text
    assert f'rlhf:version_requests_total{{outcome="ok",version="{SEED1}"}}' in per_version


def test_wrong_shapes_stop_the_rollout_on_the_previous_version(fleet):
    controller = controller_for(fleet)
    with TestClient(create_app(controller, KeyRing(KEYS), consume_events=True)) as client:
        wait_fleet(client, SEED1)
        r = client.post("/v1/deploy/promote", headers=ADMIN,
                        json={"version": WIDE, "force": True})
        assert r.status_code == 409, r.text
        assert "cannot be reloaded in place" in r.json()["error"]["message"]
        assert fleet.registry.live_policy() == SEED1
        assert versions(fleet) == {"r0": SEED1, "r1": SEED1, "r2": SEED1}
        assert "swap_failed" in fleet.registry.get(WIDE).gates
        assert rollout_outcomes(client.get("/metrics").text) == {("failed", "swap_failed"): 1}


def test_a_failed_swap_mid_rollout_restores_the_swapped_replicas(fleet, monkeypatch):
    """r0 swaps; then the version's weights are damaged, so r1's verification fails:
    the rollout stops, r0 goes back, and the live pointer returns to the previous one."""
    controller = controller_for(fleet)
    weights = fleet.registry.path(SEED2) / "model.safetensors"
    original = weights.read_bytes()
    swap_one = rollout_module._swap_one

    async def damage_after_r0_swapped(watcher, publisher, replica, version, *args):
        # the damage lands between r0's report and r1's swap event, never later (a
        # thread polling r0's /ready once lost that race on a loaded CI machine)
        step = await swap_one(watcher, publisher, replica, version, *args)
        if replica == "r0" and version == SEED2 and step.ok:
            weights.write_bytes(original[:-64] + b"\0" * 64)
        return step

    monkeypatch.setattr(rollout_module, "_swap_one", damage_after_r0_swapped)
    try:
        with TestClient(create_app(controller, KeyRing(KEYS), consume_events=True)) as client:
            wait_fleet(client, SEED1)
            with Traffic(fleet) as traffic:
                traffic.wait_answers(3)
                r = client.post("/v1/deploy/promote", headers=ADMIN,
                                json={"version": SEED2, "force": True})
                traffic.wait_answers(3)
            assert r.status_code == 409, r.text
            assert "swap failed on r1" in r.json()["error"]["message"]
            traffic.check()
            steps = r.json()["error"]["rollout"]["steps"]
            assert [(s["replica"], s["version"], s["ok"]) for s in steps] == [
                ("r0", SEED2, True), ("r1", SEED2, False), ("r0", SEED1, True)]
            assert versions(fleet) == {"r0": SEED1, "r1": SEED1, "r2": SEED1}
            history = fleet.registry.history()
            assert [h.version for h in history[-2:]] == [SEED2, SEED1]
            assert "swap of policy-0003 failed on r1" in history[-1].reason
            assert fleet.registry.live_policy() == SEED1
            assert rollout_outcomes(client.get("/metrics").text) == {
                ("failed", "swap_failed"): 1}
    finally:
        weights.write_bytes(original)


CANARY_POLICY = {"window_s": 240, "interval_s": 2, "confidence": 0.9,
                 "signals": {"rating": {"max_worse": 0.75, "min_samples": 8},
                             "error_rate": {"max_worse": 0.5, "min_samples": 5,
                                            "required": False}}}


def test_a_canary_users_rate_worse_is_rolled_back_with_the_numbers(fleet):
    controller = controller_for(fleet, CANARY_POLICY, canary_replicas=1)
    with TestClient(create_app(controller, KeyRing(KEYS), consume_events=True)) as client:
        wait_fleet(client, SEED1)
        with Traffic(fleet, rate={BASE: 1.0, SEED1: 4.0}) as traffic:
            r = client.post("/v1/deploy/promote", headers=ADMIN,
                            json={"version": BASE, "force": True})
        assert r.status_code == 409, r.text
        traffic.check()
        assert "canary of policy-0000 rolled back" in r.json()["error"]["message"]
        decision = r.json()["error"]["rollout"]["decisions"][-1]
        rating = next(s for s in decision["signals"] if s["signal"] == "rating")
        assert rating["verdict"] == "worse" and rating["low"] > 0.75
        assert rating["canary"] < 2 < 3.5 < rating["live"]
        assert fleet.registry.live_policy() == SEED1
        last = fleet.registry.history()[-1]
        assert last.version == SEED1 and last.reason.startswith("rollback: canary")
        assert last.detail["decision"]["signals"]
        assert fleet.registry.get(BASE).gates["rollout"]["decisions"][-1]["action"] == "rollback"
        assert versions(fleet) == {"r0": SEED1, "r1": SEED1, "r2": SEED1}
        assert rollout_outcomes(client.get("/metrics").text) == {("rolled_back", "canary"): 1}


def test_a_canary_rated_the_same_rolls_forward(fleet):
    controller = controller_for(fleet, CANARY_POLICY, canary_replicas=1)
    with TestClient(create_app(controller, KeyRing(KEYS), consume_events=True)) as client:
        wait_fleet(client, SEED1)
        with Traffic(fleet, rate={"*": 4.0}) as traffic:
            r = client.post("/v1/deploy/promote", headers=ADMIN,
                            json={"version": SEED3, "force": True})
        assert r.status_code == 200, r.text
        traffic.check()
        rollout = r.json()["rollout"]
        assert rollout["canary"] == ["r0"] and rollout["decisions"][-1]["action"] == "forward"
        assert [s["replica"] for s in rollout["steps"]] == ["r0", "r1", "r2"]
        assert fleet.registry.live_policy() == SEED3
        assert fleet.registry.history()[-1].detail["decision"]["action"] == "forward"
        assert versions(fleet) == {"r0": SEED3, "r1": SEED3, "r2": SEED3}
        assert rollout_outcomes(client.get("/metrics").text) == {("promoted", "forced"): 1}
