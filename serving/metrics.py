"""Prometheus metrics of the serving process, named in vLLM's style under ``rlhf:``.

One registry per app serves both ours and, once the engine is bound, vLLM's own
``vllm:*`` metrics of that engine (docs/metrics.md lists both).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServingMetrics:
    """All metrics of one server; a fresh registry per app keeps tests independent."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("rlhf:requests", "Requests by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=r)
        self.e2e_latency = Histogram("rlhf:e2e_request_latency_seconds",
                                     "Time from request arrival to the last token.",
                                     ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("rlhf:time_to_first_token_seconds",
                              "Time from request arrival to the first generated token.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("rlhf:inter_token_latency_seconds",
                             "Time between consecutive streamed tokens.",
                             buckets=TOKEN_BUCKETS, registry=r)
        self.prompt_tokens = Counter("rlhf:prompt_tokens", "Prompt tokens processed.",
                                     registry=r)
        self.generation_tokens = Counter("rlhf:generation_tokens", "Tokens generated.",
                                         registry=r)
        self.running = Gauge("rlhf:num_requests_running", "Requests in the engine's batch.",
                             registry=r)
        self.waiting = Gauge("rlhf:num_requests_waiting", "Requests waiting to be scheduled.",
                             registry=r)
        self.aborted = Counter("rlhf:requests_aborted", "Engine requests aborted before they "
                               "finished (client gone, deadline, cancel).", registry=r)
        self.in_flight = Gauge("rlhf:engine_requests_in_flight",
                               "Requests the engine holds (running, waiting or finishing).",
                               registry=r)
        self.policy = Gauge("rlhf:policy_info", "1 for the policy version being served.",
                            ["version"], registry=r)
        self.swap_seconds = Histogram("rlhf:policy_swap_seconds",
                                      "Time to swap the served policy, drain included.",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.swaps = Counter("rlhf:policy_swaps", "Hot-swaps of the policy by outcome.",
                             ["outcome"], registry=r)
        self.version_requests = Counter(
            "rlhf:version_requests", "Generation requests by the policy version that "
            "answered and outcome (ok, error, aborted); the deploy controller compares "
            "a canary's error rate with the live version's from these.",
            ["version", "outcome"], registry=r)
        self.version_latency = Histogram(
            "rlhf:version_request_latency_seconds", "Time a generation request held its "
            "policy version (admission to last token), by version.", ["version"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.unlogged = Counter("rlhf:completions_unlogged", "Served completions the "
                                "completion log could not record (reason=invalid: a value "
                                "over the event limits; characters the store cannot hold "
                                "are replaced, not refused).", ["reason"], registry=r)

    def bind_engine(self, engine: Engine) -> None:
        """Read the engine's scheduler counts at scrape time, and serve its own metrics.

        The engine's collectors join this registry, so one scrape returns both; the
        registry refuses a name that is already ours (``DuplicateTimeseries``).
        """
        for collector in engine.collectors:
            self.registry.register(collector)
        stats = engine.stats
        self.in_flight.set_function(engine.num_unfinished_requests)
        self.running.set_function(lambda: stats.running)
        self.waiting.set_function(lambda: stats.waiting)

    def observe_request(self, version: str, seconds: float, outcome: str) -> None:
        """One generation request answered by ``version``: count it and its latency."""
        self.version_requests.labels(version=version, outcome=outcome).inc()
        if outcome == "ok":
            self.version_latency.labels(version=version).observe(seconds)

    def set_policy(self, version: str) -> None:
        self.policy.clear()
        self.policy.labels(version=version).set(1)
