"""Serving throughput and latency: our HTTP and gRPC APIs against vLLM's own OpenAI server.

    python benchmarks/serving.py [--model DIR] [--concurrency 1 8 32] [--no-completion-log]
        [--requests-per-level N] [--prompt-tokens 32] [--output-tokens 64] [--out PATH]

The same checkpoint (the tiny model unless ``--model``) and the same load on every
target: closed-loop clients (each sends its next request as soon as the last one ends)
at each concurrency, streaming completions with fixed prompt and output lengths
(``ignore_eos``), so that every request does the same work and TTFT can be measured.
Prompts are text of exactly ``--prompt-tokens`` tokens, different per request (no
prefix-cache hits) and identical across targets. The servers run one at a time, each with
the same engine arguments: vLLM's ``python -m vllm.entrypoints.openai.api_server``, and
``rlhf serve`` (measured over HTTP, then over gRPC). Each target is warmed up before it is
measured. The machine may be shared, so each server is started ``--rounds`` times in ABBA
order and the rounds are pooled; the server CPU time per request is reported too, as it
moves less than wall-clock numbers when other jobs compete for the cores.

``rlhf serve`` runs with its completion log on (the production default: an embedded Kafka
broker receives every completion); ``--no-completion-log`` turns it off. Each level runs
for at least ``--seconds-per-level`` (10 s) of load.

Targets: our throughput ≥ 0.95× vLLM's at every concurrency, p50 latency within 10%.

To add a target, write a ``Send`` (one streamed request → ``Sample``) and measure it in
``main`` next to the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psutil
from rich.console import Console
from rich.table import Table

# Run as a script, this folder comes first on sys.path, and benchmarks/feedback.py would
# shadow the feedback package: the repository root goes first.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlhf.procs import Process, free_port  # noqa: E402

KV_CACHE_BYTES = 1 << 30  # what `rlhf serve` gives vLLM on CPUs (serving/engine.py)


@dataclass(frozen=True)
class Load:
    """What every request asks for; the same for every target."""

    prompt_tokens: int
    output_tokens: int
    words: tuple[str, ...]  # one-token words, see word_tokens()

    def prompt(self, i: int) -> str:
        """Request ``i``'s prompt: ``prompt_tokens`` seeded words, so no two share a prefix."""
        rng = random.Random(i)
        return "".join(rng.choice(self.words) for _ in range(self.prompt_tokens))


def word_tokens(model: Path) -> tuple[str, ...]:
    """Vocabulary entries that are a whole word with its leading space. The byte-level
    pre-tokenizer splits text at spaces, so a prompt of k of them is exactly k tokens in
    every server, while each server still tokenizes text as it would for a client. (Token
    id prompts would skip that, and vLLM 0.32 also echoes their text in the first delta.)"""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    words = [w for i in range(tok.get_vocab_size())
             if re.fullmatch(r" [a-z]{2,}", w := tok.decode([i]))
             and tok.encode(w, add_special_tokens=False).ids == [i]]
    if len(words) < 20:
        raise SystemExit(f"{model}: too few one-token words ({len(words)}) to build prompts")
    return tuple(words)


@dataclass(frozen=True)
class Sample:
    """One request: seconds from send to first chunk and to the end, tokens generated."""

    ttft_s: float
    latency_s: float
    output_tokens: int


Send = Callable[[int], Awaitable[Sample]]


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds (user + system) a server used: its front-end (API) process alone, and
    its whole process tree (front-end, engine core, workers). Unlike wall-clock numbers,
    these move much less when other jobs share the machine."""

    frontend: float
    total: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.frontend - other.frontend, self.total - other.total)

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.frontend + other.frontend, self.total + other.total)


@dataclass
class LevelResult:
    target: str
    concurrency: int
    requests: int
    seconds: float
    output_tokens: int
    latency_s: list[float] = field(repr=False)
    ttft_s: list[float] = field(repr=False)
    cpu: CpuTimes = field(default_factory=lambda: CpuTimes(0.0, 0.0))

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    def summary(self) -> dict[str, float | int | str]:
        return {"target": self.target, "concurrency": self.concurrency,
                "requests": self.requests, "seconds": round(self.seconds, 3),
                "requests_per_s": round(self.requests_per_s, 3),
                "output_tokens_per_s": round(self.output_tokens_per_s, 1),
                "p50_latency_ms": round(percentile(self.latency_s, 50) * 1000, 1),
                "p99_latency_ms": round(percentile(self.latency_s, 99) * 1000, 1),
                "p50_ttft_ms": round(percentile(self.ttft_s, 50) * 1000, 1),
                "frontend_cpu_ms_per_request": round(self.cpu.frontend * 1000 / self.requests, 2),
                "server_cpu_ms_per_request": round(self.cpu.total * 1000 / self.requests, 2)}


def percentile(values: list[float], q: float) -> float:
    """numpy's percentile (linear interpolation between closest ranks)."""
    import numpy

    return float(numpy.percentile(values, q))


# ---------------------------------------------------------------------------------------
# Servers: a subprocess on free ports, polled until ready, stopped with its process group
# ---------------------------------------------------------------------------------------

class ServerProcess(Process):
    """A server in its own process group (stopping it stops its engine), ready on start."""

    def __init__(self, name: str, cmd: list[str], ready_url: str, log_path: Path,
                 env: dict[str, str] | None = None, timeout: float = 300):
        super().__init__(name, cmd, log_path, env=env, cwd=REPO, append_log=True)
        took = self.wait_http(ready_url, timeout)
        print(f"{name}: ready in {took:.0f}s (log: {log_path})")

    def cpu_times(self) -> CpuTimes:
        root = psutil.Process(self.proc.pid)
        frontend = _cpu_seconds(root)
        return CpuTimes(frontend, frontend + sum(
            _cpu_seconds(p) for p in root.children(recursive=True)))


def _cpu_seconds(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


# Engine arguments both servers get, so that only the serving layer differs. `rlhf serve`
# builds AsyncEngineArgs with max_num_seqs=256, enforce_eager, seed 0, dtype auto and a
# 1 GiB KV cache on CPUs; vLLM's server would otherwise pick 128 seqs on CPUs.
VLLM_ENGINE_ARGS = ["--max-model-len", "512", "--dtype", "auto", "--enforce-eager",
                    "--seed", "0", "--max-num-seqs", "256", "--max-num-batched-tokens", "2048"]


def start_vllm(model: Path, workdir: Path) -> tuple[ServerProcess, str]:
    port = free_port()
    kv = [] if os.environ.get("VLLM_CPU_KVCACHE_SPACE") or not _is_cpu() else \
        ["--kv-cache-memory-bytes", str(KV_CACHE_BYTES)]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
           "--disable-uvicorn-access-log", *VLLM_ENGINE_ARGS, *kv]
    url = f"http://127.0.0.1:{port}"
    return ServerProcess("vLLM api_server", cmd, url + "/health", workdir / "vllm.log"), url


def start_rlhf(model: Path, workdir: Path, bootstrap: str | None = None,
               grpc_flush_ms: float | None = None) -> tuple[ServerProcess, str, str]:
    """``rlhf serve``; with ``bootstrap``, its completion log goes to that broker (as in
    production, where it is on by default); with ``grpc_flush_ms``, that
    ``RLHF_GRPC__STREAM_FLUSH_MS`` (gRPC streams only; the default is the server's)."""
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "rlhf", "serve", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port),
           "--served-model-name", "tiny", "--max-model-len", "512"]
    url = f"http://127.0.0.1:{port}"
    events = {"RLHF_PUBLISH_EVENTS": "true", "RLHF_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
              "RLHF_FOLLOW_POLICY_EVENTS": "false"} if bootstrap else \
        {"RLHF_PUBLISH_EVENTS": "false"}
    if grpc_flush_ms is not None:
        events["RLHF_GRPC__STREAM_FLUSH_MS"] = str(grpc_flush_ms)
    server = ServerProcess("rlhf serve", cmd, url + "/ready", workdir / "rlhf.log",
                           env={**events, "PYTHONPATH": str(REPO)})
    return server, url, f"127.0.0.1:{grpc_port}"


def _is_cpu() -> bool:
    """vLLM's platform, without importing vLLM into the load generator."""
    code = "from vllm.platforms import current_platform as p; print(p.is_cpu())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    return out.stdout.strip().splitlines()[-1] == "True"


# ---------------------------------------------------------------------------------------
# Clients: one streamed request → Sample
# ---------------------------------------------------------------------------------------

def http_sender(session: aiohttp.ClientSession, base_url: str, load: Load) -> Send:
    """Streamed ``POST /v1/completions`` (the same body for vLLM's server and ours)."""

    async def send(i: int) -> Sample:
        body = {"model": "tiny", "prompt": load.prompt(i), "max_tokens": load.output_tokens,
                "ignore_eos": True, "temperature": 1.0, "stream": True,
                "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        ttft, usage = None, (0, 0)
        async with session.post(base_url + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if ttft is None and chunk.get("choices"):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    usage = chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"]
        return _sample(t0, ttft, usage, load)

    return send


def grpc_sender(stub, load: Load) -> Send:
    """Streamed ``Inference.GenerateStream`` with the same parameters."""
    from protos.rlhf.v1 import inference_pb2 as pb

    async def send(i: int) -> Sample:
        request = pb.GenerateRequest(
            model="tiny", prompt=load.prompt(i),
            sampling=pb.SamplingParameters(max_tokens=load.output_tokens, ignore_eos=True,
                                           temperature=1.0))
        t0 = time.perf_counter()
        ttft, usage = None, (0, 0)
        async for msg in stub.GenerateStream(request):
            if ttft is None and msg.choices:
                ttft = time.perf_counter() - t0
            if msg.HasField("usage"):
                usage = msg.usage.prompt_tokens, msg.usage.completion_tokens
        return _sample(t0, ttft, usage, load)

    return send


def _sample(t0: float, ttft: float | None, usage: tuple[int, int], load: Load) -> Sample:
    """Check that the request did the work every request must do (a BOS may add one)."""
    latency = time.perf_counter() - t0
    prompt, output = usage
    if ttft is None or output != load.output_tokens or prompt - load.prompt_tokens not in (0, 1):
        raise RuntimeError(f"bad stream: ttft={ttft}, usage={usage}, expected "
                           f"{load.prompt_tokens} prompt and {load.output_tokens} output tokens")
    return Sample(ttft, latency, output)


# ---------------------------------------------------------------------------------------
# Load: closed loop at each concurrency
# ---------------------------------------------------------------------------------------

async def closed_loop(send: Send, concurrency: int, requests: int, first: int = 0,
                      min_seconds: float = 0.0) -> tuple[float, list[Sample]]:
    """``concurrency`` clients, each sending its next request when the last one ends, for
    at least ``requests`` requests and at least ``min_seconds`` of load."""
    counter = iter(range(first, 10**12))
    samples: list[Sample] = []
    t0 = time.perf_counter()

    async def client() -> None:
        while len(samples) < requests or time.perf_counter() - t0 < min_seconds:
            samples.append(await send(next(counter)))

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return time.perf_counter() - t0, samples


async def measure(target: str, send: Send, server: ServerProcess, args: argparse.Namespace
                  ) -> list[LevelResult]:
    """Warm up at the highest concurrency, then measure each level (same prompts)."""
    top = max(args.concurrency)
    await closed_loop(send, top, max(top, args.warmup_requests), first=10**6)
    results = []
    for c in args.concurrency:
        n = args.requests_per_level or max(32, 8 * c)
        cpu_before = server.cpu_times()
        seconds, samples = await closed_loop(send, c, n, min_seconds=args.seconds_per_level)
        result = LevelResult(target, c, len(samples), seconds,
                             sum(s.output_tokens for s in samples),
                             [s.latency_s for s in samples], [s.ttft_s for s in samples],
                             server.cpu_times() - cpu_before)
        results.append(result)
        s = result.summary()
        print(f"  {target:<10} c={c:<3} {s['requests_per_s']:>7.2f} req/s "
              f"{s['output_tokens_per_s']:>7.0f} tok/s  p50 {s['p50_latency_ms']:>6.0f} ms  "
              f"TTFT {s['p50_ttft_ms']:>5.0f} ms  CPU/req {s['frontend_cpu_ms_per_request']:.1f} "
              f"front-end, {s['server_cpu_ms_per_request']:.1f} ms total")
    return results


async def measure_http(target: str, base_url: str, server: ServerProcess, load: Load,
                       args: argparse.Namespace) -> list[LevelResult]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await measure(target, http_sender(session, base_url, load), server, args)


async def measure_grpc(target: str, address: str, server: ServerProcess, load: Load,
                       args: argparse.Namespace) -> list[LevelResult]:
    import grpc

    from protos.rlhf.v1 import inference_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        return await measure(target, grpc_sender(stub, load), server, args)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

BASELINE = "vLLM HTTP"


def ratios(results: list[LevelResult]) -> dict[tuple[str, int], tuple[float, float]]:
    """(throughput ratio, p50 latency ratio) of each target against vLLM at its level."""
    base = {r.concurrency: r for r in results if r.target == BASELINE}
    out = {}
    for r in results:
        b = base.get(r.concurrency)
        if b is not None:
            out[(r.target, r.concurrency)] = (
                r.output_tokens_per_s / b.output_tokens_per_s,
                percentile(r.latency_s, 50) / percentile(b.latency_s, 50))
    return out


def print_table(results: list[LevelResult], console: Console) -> None:
    table = Table(title="Streaming completions, closed loop (ratios: ours / vLLM)")
    for col in ("target", "conc.", "req/s", "out tok/s", "p50 ms", "p99 ms", "p50 TTFT ms",
                "tput ratio", "p50 ratio", "API CPU ms/req", "all CPU ms/req"):
        table.add_column(col, justify="left" if col == "target" else "right")
    rs = ratios(results)
    for r in sorted(results, key=lambda r: (r.concurrency, r.target != BASELINE)):
        s = r.summary()
        tput, lat = rs.get((r.target, r.concurrency), (float("nan"), float("nan")))
        ok = r.target == BASELINE or (tput >= 0.95 and lat <= 1.10)
        style = "" if ok else "red"
        table.add_row(r.target, str(r.concurrency), f"{s['requests_per_s']:.2f}",
                      f"{s['output_tokens_per_s']:.0f}", f"{s['p50_latency_ms']:.0f}",
                      f"{s['p99_latency_ms']:.0f}", f"{s['p50_ttft_ms']:.0f}",
                      f"{tput:.2f}", f"{lat:.2f}", f"{s['frontend_cpu_ms_per_request']:.1f}",
                      f"{s['server_cpu_ms_per_request']:.1f}", style=style)
    console.print(table)


def write_json(path: Path, results: list[LevelResult], args: argparse.Namespace,
               model: Path, load_avg: tuple[float, float, float]) -> None:
    rs = ratios(results)
    doc = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()}-core CPU, {platform.machine()}",
        "load_average_at_start": [round(x, 2) for x in load_avg],
        "vllm": _vllm_version(),
        "model": str(model),
        "load": {"rounds": args.rounds, "concurrency": args.concurrency,
                 "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                 "stream": True, "ignore_eos": True,
                 "seconds_per_level": args.seconds_per_level,
                 "completion_log": args.completion_log,
                 "grpc_flush_ms": args.grpc_flush_ms},
        "results": [_with_ratios(r.summary(), rs.get((r.target, r.concurrency)))
                    for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}")


def _with_ratios(summary: dict, ratio: tuple[float, float] | None) -> dict:
    if ratio is None:
        return summary
    return {**summary, "throughput_ratio": round(ratio[0], 3),
            "p50_latency_ratio": round(ratio[1], 3)}


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "unknown"


# ---------------------------------------------------------------------------------------

def tiny_model(workdir: Path) -> Path:
    out = workdir / "tiny"
    subprocess.run([sys.executable, "-m", "rlhf", "model", "tiny", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint directory (default: build the tiny model)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests-per-level", type=int, default=None,
                   help="requests per concurrency and round (default: max(32, 8 × concurrency))")
    p.add_argument("--seconds-per-level", type=float, default=10.0,
                   help="at least this many seconds of load per concurrency and round")
    p.add_argument("--no-completion-log", dest="completion_log", action="store_false",
                   help="run rlhf serve without its completion log (on by default, as in "
                        "production: an embedded Kafka broker receives it)")
    p.add_argument("--rounds", type=int, default=2,
                   help="times each server is started and measured (ABBA order); pooled")
    p.add_argument("--warmup-requests", type=int, default=32,
                   help="warm-up requests per target, at the highest concurrency")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--grpc-flush-ms", type=float, default=None,
                   help="run rlhf serve with this RLHF_GRPC__STREAM_FLUSH_MS (default: the "
                        "server's own, 0: every token is sent at once)")
    p.add_argument("--targets", nargs="+", default=["vllm", "http", "grpc"],
                   choices=["vllm", "http", "grpc"])
    p.add_argument("--out", type=Path,
                   default=Path(tempfile.gettempdir()) / "rlhf-bench-serving.json",
                   help="where to write the results as JSON")
    return p.parse_args()


def run_vllm(model: Path, workdir: Path, load: Load, args: argparse.Namespace
             ) -> list[LevelResult]:
    server, url = start_vllm(model, workdir)
    with server:
        return asyncio.run(measure_http(BASELINE, url, server, load, args))


def run_rlhf(model: Path, workdir: Path, load: Load, args: argparse.Namespace
             ) -> list[LevelResult]:
    server, url, grpc_address = start_rlhf(model, workdir, args.bootstrap,
                                           args.grpc_flush_ms)
    results: list[LevelResult] = []
    with server:
        if "http" in args.targets:
            results += asyncio.run(measure_http("rlhf HTTP", url, server, load, args))
        if "grpc" in args.targets:
            results += asyncio.run(measure_grpc("rlhf gRPC", grpc_address, server, load, args))
    return results


def merge(results: list[LevelResult]) -> list[LevelResult]:
    """Pool the rounds of each (target, concurrency): total requests over total seconds."""
    pooled: dict[tuple[str, int], LevelResult] = {}
    for r in results:
        key = (r.target, r.concurrency)
        if key not in pooled:
            pooled[key] = LevelResult(r.target, r.concurrency, 0, 0.0, 0, [], [])
        p = pooled[key]
        p.requests, p.seconds = p.requests + r.requests, p.seconds + r.seconds
        p.output_tokens += r.output_tokens
        p.latency_s += r.latency_s
        p.ttft_s += r.ttft_s
        p.cpu += r.cpu
    return list(pooled.values())


def main() -> None:
    args = parse_args()
    load_avg = os.getloadavg()
    logs = Path(tempfile.mkdtemp(prefix="rlhf-bench-serving-logs-"))  # kept for a post-mortem
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-serving-") as tmp:
        model = args.model or tiny_model(Path(tmp))
        load = Load(args.prompt_tokens, args.output_tokens, word_tokens(model))
        servers = []
        if "vllm" in args.targets:
            servers.append(run_vllm)
        if {"http", "grpc"} & set(args.targets):
            servers.append(run_rlhf)
        args.bootstrap = None
        broker = None
        if args.completion_log and servers[-1] is run_rlhf:
            from feedback.broker import EmbeddedBroker

            broker = EmbeddedBroker(log_path=logs / "broker.log")
            broker.start()
            args.bootstrap = broker.bootstrap_servers
        results: list[LevelResult] = []
        # One server at a time (they would otherwise share the CPUs), in ABBA order over
        # rounds so that a drift in the machine's background load hits both alike.
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds}")
            for run in servers if round_ % 2 == 0 else reversed(servers):
                results += run(model, logs, load, args)
        if broker is not None:
            broker.stop()
    results = merge(results)
    console = Console()
    print_table(results, Console(width=max(console.width, 130)))
    write_json(args.out, results, args, args.model or Path("tiny (rlhf model tiny)"),
               load_avg)


if __name__ == "__main__":
    main()
