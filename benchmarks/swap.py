"""Hot-swap of the served policy: swap time, and request latency during swaps vs steady state.

    python benchmarks/swap.py [--swaps 10] [--concurrency 8] [--steady-requests 200]
                              [--output-tokens 64] [--paths admin,kafka,fleet]

The tiny model twice (seeds 0 and 1) in a fresh registry as ``policy-0000`` (live) and
``policy-0001``; ``rlhf serve`` starts without ``--model`` and serves the live version.
A closed loop of ``--concurrency`` clients sends streamed completions (token-id prompts,
``max_tokens`` fixed, ``ignore_eos``) throughout. First a steady-state window with no swap,
then a swap window: ``--swaps`` swaps back and forth, each started once the previous one
is served and ``--gap`` seconds have passed, the load running all along.

Swap time is trigger sent → ``/ready`` reports the new ``policy_version`` (polled every
10 ms), so it includes draining the requests already admitted, which is what a caller
waits for. Next to it: the server's own ``rlhf:policy_swap_seconds`` (each swap's
increment of the histogram's sum) and, on the admin path, the admin call's round trip.

Paths (``--paths``), each on its own server:

* ``admin``: ``POST /v1/admin/policy`` (no Kafka; one replica).
* ``kafka``: what the deploy controller does: ``Registry.set_live`` then a ``promote``
  event on ``rlhf.policy`` (embedded broker); the server's follower swaps to the live
  pointer. Timed from just before ``set_live``.
* ``fleet``: ``--replicas`` servers (default 3) behind one closed loop that spreads its
  requests over them, and the deploy controller (in-process, fleet watched through the
  replicas' heartbeats) doing ``--rollouts`` staged promotions back and forth with
  ``max_unavailable`` 1. Rollout time is promote called → returned (every replica has
  reported ``swapped``); each replica's step is its swap event → its report.

The peer is the steady state of the same server in the same run: the table compares the
latency of requests in flight during a swap (their lifetime overlaps a swap) with it.
Failed requests (an error status, a broken stream, a short stream) must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.registry import Registry  # noqa: E402
from rlhf.procs import Process, free_port, rlhf_command  # noqa: E402

VERSIONS = ("policy-0000", "policy-0001")


# ---------------------------------------------------------------------------------------
# Setup: a registry with two policies, a server on it
# ---------------------------------------------------------------------------------------

def build_registry(workdir: Path) -> Registry:
    """policy-0000 (live) and policy-0001: the tiny model with other weights, same shapes."""
    from training.tiny_model import build_tiny_model

    registry = Registry(workdir / "registry")
    registry.register_base(build_tiny_model(workdir / "seed0", seed=0))
    registry.set_live(VERSIONS[0], "benchmark")
    registry.create_version("policy", build_tiny_model(workdir / "seed1", seed=1), {})
    return registry


class Server(Process):
    """``rlhf serve`` on the registry's live policy, ready on start."""

    def __init__(self, registry: Registry, log_path: Path, env: dict[str, str],
                 timeout: float = 300):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = rlhf_command("serve", "--host", "127.0.0.1", "--port", str(port),
                           "--grpc-port", str(free_port()), "--served-model-name", "tiny",
                           "--max-model-len", "512")
        super().__init__("rlhf serve", cmd, log_path, cwd=REPO,
                         env={"PYTHONPATH": str(REPO),
                              "RLHF_REGISTRY__ROOT": str(registry.root), **env})
        took = self.wait_http(self.url + "/ready", timeout)
        print(f"rlhf serve: ready in {took:.0f}s (log: {log_path})")


# ---------------------------------------------------------------------------------------
# Load: closed loop of streamed completions, every request recorded
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One streamed completion: when it started and ended, and whether it failed."""

    start: float
    end: float
    version: str | None
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass
class Load:
    session: aiohttp.ClientSession
    url: str
    concurrency: int
    output_tokens: int
    vocab_size: int
    done: list[Request] = field(default_factory=list)
    _next: int = 0
    urls: list[str] = field(default_factory=list)  # fleet: requests go round these

    def prompt(self, i: int) -> list[int]:
        """Seeded token ids (no prefix-cache hits between requests), skipping specials."""
        rng = random.Random(i)
        return [rng.randrange(16, self.vocab_size) for _ in range(32)]

    async def one(self) -> Request:
        self._next += 1
        body = {"model": "tiny", "prompt": self.prompt(self._next),
                "max_tokens": self.output_tokens, "ignore_eos": True, "temperature": 1.0,
                "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        version, tokens = None, 0
        url = self.urls[self._next % len(self.urls)] if self.urls else self.url
        try:
            async with self.session.post(url + "/v1/completions", json=body) as resp:
                if resp.status != 200:
                    return Request(t0, time.perf_counter(), None,
                                   f"HTTP {resp.status}: {(await resp.text())[:200]}")
                async for line in resp.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    chunk = json.loads(line[6:])
                    version = version or chunk.get("policy_version")
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
        except (aiohttp.ClientError, ValueError) as exc:
            return Request(t0, time.perf_counter(), version, repr(exc))
        error = None if tokens == self.output_tokens else f"{tokens} tokens"
        return Request(t0, time.perf_counter(), version, error)

    async def run(self, stop: Callable[[], bool]) -> list[Request]:
        """``concurrency`` clients, each sending its next request when its last one ends,
        until ``stop()``; returns the requests of this run."""
        first = len(self.done)

        async def client() -> None:
            while not stop():
                self.done.append(await self.one())

        await asyncio.gather(*[client() for _ in range(self.concurrency)])
        return self.done[first:]


# ---------------------------------------------------------------------------------------
# Swaps: trigger, then poll /ready until it serves the new version
# ---------------------------------------------------------------------------------------

Trigger = Callable[[str], Awaitable[float | None]]  # version → admin round trip, if any


@dataclass(frozen=True)
class Swap:
    version: str
    start: float
    served: float  # first /ready that reports the new version
    server_s: float  # this swap's increment of rlhf:policy_swap_seconds_sum
    round_trip_s: float | None

    @property
    def seconds(self) -> float:
        return self.served - self.start


async def swap_histogram(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    """(sum, count) of the server's ``rlhf:policy_swap_seconds`` histogram."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line.startswith(("rlhf:policy_swap_seconds_sum", "rlhf:policy_swap_seconds_count")):
            name, value = line.rsplit(" ", 1)
            values[name.split("_")[-1]] = float(value)
    return values.get("sum", 0.0), int(values.get("count", 0))


async def served_version(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/ready") as resp:  # 503 while swapping, body all the same
        return (await resp.json())["policy_version"]


async def one_swap(session: aiohttp.ClientSession, url: str, version: str,
                   trigger: Trigger, timeout: float = 120) -> Swap:
    hist_before = await swap_histogram(session, url)
    start = time.perf_counter()
    triggered = asyncio.create_task(trigger(version))
    while await served_version(session, url) != version:
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{version} not served {timeout}s after the trigger")
        await asyncio.sleep(0.01)
    served = time.perf_counter()
    round_trip = await triggered
    hist_after = await swap_histogram(session, url)
    if hist_after[1] != hist_before[1] + 1:
        raise RuntimeError(f"expected one swap in rlhf:policy_swap_seconds, "
                           f"got {hist_after[1] - hist_before[1]}")
    return Swap(version, start, served, hist_after[0] - hist_before[0], round_trip)


def admin_trigger(session: aiohttp.ClientSession, url: str) -> Trigger:
    async def trigger(version: str) -> float:
        t0 = time.perf_counter()
        async with session.post(url + "/v1/admin/policy", json={"version": version}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"admin swap to {version}: {resp.status} {await resp.text()}")
        return time.perf_counter() - t0

    return trigger


def kafka_trigger(registry: Registry, kafka) -> Trigger:
    """What the deploy controller does: move the live pointer, then publish ``promote``."""
    from kafka import KafkaProducer

    from core.events import encode_event
    from core.registry import PolicyEvent

    producer = KafkaProducer(**kafka.client_kwargs(), acks="all", linger_ms=0)

    def publish(version: str) -> None:
        registry.set_live(version, "benchmark")
        event = PolicyEvent(type="promote", version=version, reason="benchmark")
        producer.send(kafka.topics.policy, encode_event(event)).get(10)

    async def trigger(version: str) -> None:
        await asyncio.to_thread(publish, version)
        return None

    return trigger


# ---------------------------------------------------------------------------------------
# One path: steady window, then a window of swaps under the same load
# ---------------------------------------------------------------------------------------

@dataclass
class PathResult:
    name: str
    steady: list[Request]
    during: list[Request]  # every request of the swap window
    swaps: list[Swap]

    def in_flight(self) -> list[Request]:
        """Requests whose lifetime overlaps a swap (trigger → served)."""
        return [r for r in self.during
                if any(r.start < s.served and r.end > s.start for s in self.swaps)]


async def measure(name: str, url: str, make_trigger: Callable[[aiohttp.ClientSession], Trigger],
                  args: argparse.Namespace, vocab_size: int) -> PathResult:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        load = Load(session, url, args.concurrency, args.output_tokens, vocab_size)
        trigger = make_trigger(session)
        # Warm-up: the engine's first batches, and one swap each way (first-load costs).
        await load.run(lambda: len(load.done) >= 2 * args.concurrency)
        for v in (VERSIONS[1], VERSIONS[0]):
            await one_swap(session, url, v, trigger)
        load.done.clear()

        steady = await load.run(lambda: len(load.done) >= args.steady_requests)
        print(f"  {name}: steady state, {len(steady)} requests")

        swaps: list[Swap] = []
        swapping = True

        async def swapper() -> None:
            nonlocal swapping
            await asyncio.sleep(args.gap)
            for i in range(args.swaps):
                swaps.append(await one_swap(session, url, VERSIONS[(i + 1) % 2], trigger))
                print(f"  {name}: swap {i + 1} to {swaps[-1].version}: "
                      f"{swaps[-1].seconds * 1000:.0f} ms")
                await asyncio.sleep(args.gap)
            swapping = False

        during, _ = await asyncio.gather(load.run(lambda: not swapping), swapper())
    return PathResult(name, steady, during, swaps)


def run_admin(registry: Registry, workdir: Path, args: argparse.Namespace, vocab: int
              ) -> PathResult:
    server = Server(registry, workdir / "serve-admin.log", {"RLHF_PUBLISH_EVENTS": "false"})
    try:
        return asyncio.run(measure("admin", server.url,
                                   lambda s: admin_trigger(s, server.url), args, vocab))
    finally:
        server.stop()


def run_kafka(registry: Registry, workdir: Path, args: argparse.Namespace, vocab: int
              ) -> PathResult:
    from core.settings import KafkaSettings
    from feedback.broker import EmbeddedBroker

    registry.set_live(VERSIONS[0], "benchmark")
    with EmbeddedBroker(KafkaSettings(request_timeout_ms=10000),
                        log_path=workdir / "tansu.log") as broker:
        server = Server(registry, workdir / "serve-kafka.log", {
            "RLHF_PUBLISH_EVENTS": "true",
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers})
        try:
            trigger = kafka_trigger(registry, broker.kafka)
            return asyncio.run(measure("kafka", server.url, lambda s: trigger, args, vocab))
        finally:
            server.stop()


@dataclass(frozen=True)
class Rollout:
    """One staged promotion across the fleet."""

    version: str
    start: float
    end: float
    steps_s: list[float]  # each replica's swap event → report


async def measure_fleet(urls: list[str], controller, args: argparse.Namespace,
                        vocab_size: int) -> tuple[PathResult, list[Rollout]]:
    """Steady window over the fleet, then ``--rollouts`` staged promotions under load."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        load = Load(session, urls[0], args.concurrency, args.output_tokens, vocab_size,
                    urls=urls)
        task = controller.start_fleet()
        await controller.watcher.wait_caught_up()
        while len(controller.watcher.fleet(ready_only=True)) < len(urls):
            await asyncio.sleep(0.2)
        await load.run(lambda: len(load.done) >= 2 * args.concurrency)  # warm-up
        load.done.clear()
        steady = await load.run(lambda: len(load.done) >= args.steady_requests)
        print(f"  fleet: steady state, {len(steady)} requests")
        rollouts: list[Rollout] = []
        rolling = True

        async def roller() -> None:
            nonlocal rolling
            await asyncio.sleep(args.gap)
            for i in range(args.rollouts):
                version = VERSIONS[(i + 1) % 2]
                t0 = time.perf_counter()
                result = await controller.promote(version, force=True, reason="benchmark")
                end = time.perf_counter()
                steps = [s.seconds for s in result.rollout.steps]
                rollouts.append(Rollout(version, t0, end, steps))
                print(f"  fleet: rollout {i + 1} to {version}: {(end - t0) * 1000:.0f} ms "
                      f"({', '.join(f'{x * 1000:.0f}' for x in steps)} ms per replica)")
                await asyncio.sleep(args.gap)
            rolling = False

        during, _ = await asyncio.gather(load.run(lambda: not rolling), roller())
        controller.watcher.stop()
        await task
    swaps = [Swap(r.version, r.start, r.end, sum(r.steps_s), None) for r in rollouts]
    return PathResult("fleet", steady, during, swaps), rollouts


def run_fleet(registry: Registry, workdir: Path, args: argparse.Namespace, vocab: int
              ) -> PathResult:
    from concurrent.futures import ThreadPoolExecutor

    from core.settings import KafkaSettings
    from deploy.controller import DeployController
    from deploy.settings import DeploySettings, RolloutSettings
    from feedback.broker import EmbeddedBroker

    registry.set_live(VERSIONS[0], "benchmark")
    with EmbeddedBroker(KafkaSettings(request_timeout_ms=10000),
                        log_path=workdir / "tansu.log") as broker:
        def start(i: int) -> Server:
            return Server(registry, workdir / f"serve-fleet-{i}.log", {
                "RLHF_PUBLISH_EVENTS": "true", "RLHF_REPLICA__ID": f"replica-{i}",
                "RLHF_REPLICA__HEARTBEAT_INTERVAL_S": "1",
                "RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                **({"RLHF_ENGINE__KV_CACHE_SPACE_GIB": args.kv_cache_gib}
                   if args.kv_cache_gib else {})})

        with ThreadPoolExecutor(args.replicas) as pool:
            servers = list(pool.map(start, range(args.replicas)))
        settings = DeploySettings(rollout=RolloutSettings(max_unavailable="1",
                                                          stale_after_s=10))
        settings.registry.root, settings.kafka = registry.root, broker.kafka
        controller = DeployController(settings, registry=registry)
        try:
            result, rollouts = asyncio.run(measure_fleet([s.url for s in servers],
                                                         controller, args, vocab))
            FLEET_ROLLOUTS.extend(rollouts)
            return result
        finally:
            controller.close()
            for s in servers:
                s.stop()


FLEET_ROLLOUTS: list[Rollout] = []

PATHS: dict[str, Callable[[Registry, Path, argparse.Namespace, int], PathResult]] = {
    "admin": run_admin,
    "kafka": run_kafka,
    "fleet": run_fleet,
}


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan when empty."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_row(path: str, window: str, requests: list[Request], steady: list[Request]
                ) -> list[str]:
    ok = [r.latency_s * 1000 for r in requests if r.error is None]
    base = [r.latency_s * 1000 for r in steady if r.error is None]
    failed = sum(r.error is not None for r in requests)
    p50, p99 = percentile(ok, 50), percentile(ok, 99)
    return [path, window, str(len(requests)), str(failed), f"{p50:.0f}", f"{p99:.0f}",
            f"{p50 / percentile(base, 50):.2f}x", f"{p99 / percentile(base, 99):.2f}x"]


def print_tables(results: list[PathResult], args: argparse.Namespace, console: Console) -> None:
    lat = Table(title=f"Streamed completions, closed loop c={args.concurrency}, "
                      f"{args.output_tokens} tokens: during swaps vs steady state (the peer)")
    for col in ("path", "window", "requests", "failed", "p50 ms", "p99 ms", "p50 vs steady",
                "p99 vs steady"):
        lat.add_column(col, justify="left" if col in ("path", "window") else "right")
    for r in results:
        lat.add_row(*latency_row(r.name, "steady state", r.steady, r.steady))
        what = "rollout" if r.name == "fleet" else "swap"
        lat.add_row(*latency_row(r.name, f"{what} window ({len(r.swaps)} {what}s)", r.during,
                                 r.steady))
        lat.add_row(*latency_row(r.name, f"in flight during a {what}", r.in_flight(),
                                 r.steady),
                    style="red" if any(q.error for q in r.during) else "")
    console.print(lat)

    sw = Table(title="Swap time: trigger → /ready serves the new version (drain included)")
    for col in ("path", "swaps", "p50 ms", "max ms", "server histogram p50 ms",
                "server histogram max ms", "admin round trip p50 ms"):
        sw.add_column(col, justify="left" if col == "path" else "right")
    for r in results:
        secs = [s.seconds * 1000 for s in r.swaps]
        server = [s.server_s * 1000 for s in r.swaps]
        rtt = [s.round_trip_s * 1000 for s in r.swaps if s.round_trip_s is not None]
        sw.add_row(r.name, str(len(r.swaps)), f"{statistics.median(secs):.0f}",
                   f"{max(secs):.0f}", f"{statistics.median(server):.0f}",
                   f"{max(server):.0f}", f"{statistics.median(rtt):.0f}" if rtt else "–")
    console.print(sw)
    if FLEET_ROLLOUTS:
        fl = Table(title=f"Staged rollout across {args.replicas} replicas (max_unavailable 1):"
                         " promote → every replica reported swapped")
        for col in ("rollouts", "rollout p50 ms", "rollout max ms", "replica step p50 ms",
                    "replica step max ms"):
            fl.add_column(col, justify="right")
        total = [(r.end - r.start) * 1000 for r in FLEET_ROLLOUTS]
        steps = [x * 1000 for r in FLEET_ROLLOUTS for x in r.steps_s]
        fl.add_row(str(len(total)), f"{statistics.median(total):.0f}", f"{max(total):.0f}",
                   f"{statistics.median(steps):.0f}", f"{max(steps):.0f}")
        console.print(fl)
    failures = [q.error for r in results for q in r.steady + r.during if q.error]
    if failures:
        console.print(f"[red]{len(failures)} failed requests, e.g. {failures[0]}[/red]")


def write_json(path: Path, results: list[PathResult], args: argparse.Namespace) -> None:
    def summary(reqs: list[Request]) -> dict:
        ok = [r.latency_s for r in reqs if r.error is None]
        return {"requests": len(reqs), "failed": sum(r.error is not None for r in reqs),
                "p50_ms": round(percentile(ok, 50) * 1000, 1),
                "p99_ms": round(percentile(ok, 99) * 1000, 1)}

    doc = {"machine": f"{os.cpu_count()} CPUs", "load_average": os.getloadavg(),
           "args": {k: v for k, v in vars(args).items() if k != "out"},
           "paths": [{"path": r.name, "steady": summary(r.steady),
                      "swap_window": summary(r.during), "in_flight": summary(r.in_flight()),
                      "swaps_ms": [round(s.seconds * 1000, 1) for s in r.swaps],
                      "server_swap_ms": [round(s.server_s * 1000, 1) for s in r.swaps]}
                     for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--swaps", type=int, default=10, help="swaps in the swap window")
    p.add_argument("--gap", type=float, default=1.0,
                   help="seconds of plain load before, between and after swaps")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--steady-requests", type=int, default=200)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--paths", default="admin,kafka",
                   help=f"comma-separated subset of {','.join(PATHS)}")
    p.add_argument("--replicas", type=int, default=3, help="fleet: serving replicas")
    p.add_argument("--rollouts", type=int, default=4, help="fleet: staged promotions")
    p.add_argument("--kv-cache-gib", default="",
                   help="fleet: RLHF_ENGINE__KV_CACHE_SPACE_GIB per replica (CPU memory)")
    p.add_argument("--out", type=Path,
                   default=Path(tempfile.gettempdir()) / "rlhf-bench-swap.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    logs = Path(tempfile.mkdtemp(prefix="rlhf-bench-swap-logs-"))  # kept for a post-mortem
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-swap-") as tmp:
        registry = build_registry(Path(tmp))
        vocab = json.loads((registry.path(VERSIONS[0]) / "config.json").read_text())["vocab_size"]
        results = [PATHS[name](registry, logs, args, vocab) for name in args.paths.split(",")]
    console = Console()
    print_tables(results, args, Console(width=max(console.width, 130)))
    write_json(args.out, results, args)


if __name__ == "__main__":
    main()
