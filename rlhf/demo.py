"""``rlhf demo``: simulated labelers drive the whole loop, and the demo measures the result.

1. Start ``rlhf up`` in a fresh home (or use a running one: ``--url`` + ``--home``), with
   the demo's recipe configs (``training/configs/demo/``, via ``RLHF_TRAIN__CONFIG_DIR``).
2. Labelers submit demonstrations (prompt + ideal answer) through the feedback API. Once
   all of them are stored (``RLHF_TRAIN__MIN_NEW_DEMONSTRATIONS``), ``rlhf up``'s periodic
   ``rlhf train cycle`` trains SFT on them (InstructGPT step 1) and announces it; the
   deploy controller runs the SFT gates (held-out LM loss lower than the base model's;
   there is no reward model yet) and promotes it. The demo waits for that verdict.
3. Until the budget is spent, labelers send training prompts through the chat API, ask
   for K samples, rank them by the hidden rule and submit the rankings. ``rlhf up``'s
   periodic ``rlhf train cycle`` trains reward models and PPO candidates (from the SFT,
   then from the live policy, always KL-anchored to the SFT); its deploy controller gates
   them (bootstrap intervals over several samples per held-out prompt) and promotes those
   that pass.
4. Every version is measured on held-out prompts (``rlhf.demo_report``); a table, a PNG
   and a JSON summary show the result. Exit 1 unless the live policy beats the first.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from rlhf import demo_report as report
from rlhf.demo_tasks import gate_prompts, instruction_set, rank
from rlhf.procs import Process, free_port, rlhf_command
from training.lineage import is_ppo

DEMO_CONFIGS = Path(__file__).parents[1] / "training" / "configs" / "demo"
MARKER = ".rlhf-demo"
"""A home directory holding this file was made by the demo and may be wiped by it."""


@dataclass
class DemoOptions:
    """What ``rlhf demo`` was asked to do (the CLI's options)."""

    home: Path = Path("rlhf-demo")
    budget_minutes: float = 12.0
    url: str | None = None  # a running `rlhf up`; None = start one
    deploy_url: str = "http://127.0.0.1:8300"
    out: Path | None = None  # PNG + JSON directory; None = <home>/demo
    config_dir: Path = DEMO_CONFIGS  # sft.yaml, reward.yaml, ppo.yaml
    model: str | None = None  # base model of the platform it starts: tiny|small|a directory
    k: int = 4  # samples ranked per prompt
    max_tokens: int = 24
    prompts_per_round: int = 16
    round_pause_s: float = 3.0
    batch_rankings: int = 64  # ranked prompts per new policy version
    idle_batch_s: float = 300.0  # another batch when no new policy came for this long
    demonstrations: int = 128
    eval_samples: int = 2  # seeded answers per held-out prompt
    min_new_rankings: int = 48
    train_every_s: float = 10.0
    stop_after_promotions: int = 0  # stop early after this many gated promotions; 0 = never
    sft_timeout_s: float = 600.0  # how long to wait for the SFT's gate verdict
    # The gates' pace on 2 CPU cores: up to 64 gate prompts (the demo's own, see
    # demo_tasks.gate_prompts) × 4 seeded answers per policy, in 4 sequential rounds of
    # 16; a few seconds per candidate with the tiny model.
    gate_env: dict[str, str] = field(default_factory=lambda: {
        "RLHF_GATES__NUM_PROMPTS": "64", "RLHF_GATES__SAMPLES_PER_PROMPT": "4",
        "RLHF_GATES__SEQUENTIAL_LOOKS": "4", "RLHF_GATES__MAX_NEW_TOKENS": "24",
        "RLHF_GATES__BATCH_SIZE": "64", "RLHF_GATES__BOOTSTRAP_RESAMPLES": "1000"})


def demonstration_prompts(opts: DemoOptions) -> list[str]:
    """The prompts the labelers demonstrate: the training prompts, repeated as needed."""
    train = instruction_set().train
    return (train * opts.demonstrations)[:opts.demonstrations]


def trainable_demonstrations(opts: DemoOptions) -> int:
    """How many of them may train SFT: those outside the gates' held-out slice (no recipe
    trains on a gate prompt), the count the cycle waits for."""
    from deploy.settings import GateSettings
    from training.datasets import is_gate_prompt

    share = GateSettings().holdout_share
    return sum(not is_gate_prompt(p, share) for p in demonstration_prompts(opts))


# -- the platform ----------------------------------------------------------------------------

class Platform:
    """A ``rlhf up`` child process with free ports, or the URLs of a running one."""

    def __init__(self, opts: DemoOptions):
        self.opts, self.home = opts, opts.home.resolve()
        self.up: Process | None = None
        self.url: str = opts.url or ""  # set by start() when it starts one
        self.deploy_url = opts.deploy_url

    def start(self) -> None:
        """Start ``rlhf up`` (fresh home) unless ``--url`` names a running one."""
        if self.url:
            return
        if self.home.exists() and (self.home / MARKER).exists():
            shutil.rmtree(self.home)
        elif self.home.exists() and any(self.home.iterdir()):
            raise SystemExit(f"{self.home} exists and was not made by `rlhf demo`; "
                             "pass another --home, or --url to use a running `rlhf up`")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / MARKER).touch()
        gate_file = self.home / "gate-prompts.txt"
        gate_file.write_text("\n".join(gate_prompts()) + "\n")
        ports = {name: free_port() for name in ("HTTP_PORT", "GRPC_PORT", "BROKER_PORT",
                                                "DEPLOY_PORT", "INGEST_METRICS_PORT",
                                                "WORKBENCH_PORT")}
        env = {**{f"RLHF_UP__{k}": str(v) for k, v in ports.items()},
               "RLHF_GATES__EVAL_PROMPT_FILE": str(gate_file),
               **self.opts.gate_env, "RLHF_UP__HOME": str(self.home),
               "RLHF_UP__CONFIG_DIR": str(self.opts.config_dir.resolve()),
               "RLHF_UP__MIN_NEW_RANKINGS": str(self.opts.min_new_rankings),
               "RLHF_UP__MIN_NEW_DEMONSTRATIONS": str(trainable_demonstrations(self.opts)),
               "RLHF_UP__TRAIN_EVERY_S": str(self.opts.train_every_s),
               **({"RLHF_UP__MODEL": self.opts.model} if self.opts.model else {})}
        self.url = f"http://127.0.0.1:{ports['HTTP_PORT']}"
        self.deploy_url = f"http://127.0.0.1:{ports['DEPLOY_PORT']}"
        self.workbench_url = f"http://127.0.0.1:{ports['WORKBENCH_PORT']}"
        self.up = Process("rlhf up", rlhf_command("up"), self.home / "up.log", env=env)
        print(f"rlhf up: starting in {self.home} (log: {self.home / 'up.log'})", flush=True)

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Until the server answers /ready (the engine loads in about 30 s on a CPU)."""
        if self.up is not None:
            self.up.wait_http(f"{self.url}/ready", timeout_s, interval=2.0)
            return
        if httpx.get(f"{self.url}/ready", timeout=10).status_code != 200:
            raise SystemExit(f"the server at {self.url} is not ready")

    def stop(self) -> None:
        """Stop ``rlhf up`` (SIGTERM; it stops its children), if the demo started it."""
        if self.up is not None:
            self.up.stop(timeout=120)

    def keys(self) -> dict[str, str]:
        """role → API key, from the home's keys.json."""
        return {role: key for key, role in
                json.loads((self.home / "keys.json").read_text()).items()}

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.home / 'feedback.db'}"


# -- the simulated labelers ------------------------------------------------------------------

class Labelers:
    """Labelers that use only the public API: ask for K samples, rank, demonstrate."""

    def __init__(self, url: str, key: str, opts: DemoOptions):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=120)
        self.opts = opts
        self.pool = ThreadPoolExecutor(8)

    def ask(self, prompt: str) -> tuple[str, list[str]]:
        """K samples of one chat prompt; (request id, texts)."""
        r = self.http.post("/v1/chat/completions", json={
            "model": "policy", "messages": [{"role": "user", "content": prompt}],
            "n": self.opts.k, "max_tokens": self.opts.max_tokens, "temperature": 1.0})
        r.raise_for_status()
        body = r.json()
        return body["id"], [c["message"]["content"] or "" for c in body["choices"]]

    def submit(self, items: list[dict]) -> None:
        for start in range(0, len(items), 1000):
            self.http.post("/v1/feedback/batch",
                           json={"items": items[start:start + 1000]}).raise_for_status()

    def rank_round(self, prompts: list[str]) -> int:
        """Ask for K samples of each prompt, rank them by the hidden rule, submit."""
        answered = list(self.pool.map(self.ask, prompts))
        self.submit([{"type": "ranking", "request_id": rid, "choices": list(range(len(texts))),
                      "ranks": rank(texts), "source": "labeler"} for rid, texts in answered])
        return len(answered)

    def demonstrate(self, prompts: list[str], seed: int = 0) -> int:
        """One ideal answer per prompt (prompts may repeat; answers vary)."""
        import random

        from rlhf.demo_tasks import ideal_response

        rng = random.Random(seed)
        self.submit([{"type": "demonstration", "prompt": p, "response": ideal_response(p, rng),
                      "source": "labeler"} for p in prompts])
        return len(prompts)


# -- the loop --------------------------------------------------------------------------------

def wait_for_rows(database_url: str, kind: str, n: int, timeout_s: float = 300.0) -> None:
    """Until the ingester has stored ``n`` rows of ``kind``."""
    from feedback.store import FeedbackStore

    store, deadline = FeedbackStore(database_url), time.monotonic() + timeout_s
    try:
        while store.counts().get(kind, 0) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {store.counts().get(kind, 0)} of {n} {kind} rows "
                                 f"were ingested after {timeout_s:.0f} s")
            time.sleep(1)
    finally:
        store.close()


def wait_for_sft(registry, timeout_s: float, up: Process | None = None):
    """Until the cycle's SFT has its gate verdict and, if it passed, is live; returns its
    manifest. SystemExit when none comes within ``timeout_s`` (or ``rlhf up`` died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if up is not None and up.proc.poll() is not None:
            raise SystemExit("rlhf up exited while waiting for the SFT version")
        sfts = [m for m in registry.list("policy") if m.config.get("recipe") == "sft"]
        if sfts and sfts[-1].gates:
            sft = sfts[-1]
            if sft.gates.get("status") != "passed" or registry.live_policy() == sft.version:
                return sft
        time.sleep(2)
    raise SystemExit(f"no SFT version with a gate verdict after {timeout_s:.0f} s; see "
                     "the home's logs/train.log and logs/deploy.log")


def gated_promotions(registry) -> int:
    """PPO versions that passed the gates and went live (the SFT's promotion does not
    count: ``--stop-after-promotions`` counts products of the ranking loop)."""
    return sum(1 for m in registry.list("policy")
               if is_ppo(m.config) and m.gates.get("status") == "passed" and m.version in
               {r.version for r in registry.history()})


def registry_state(registry) -> str:
    """One line on what the platform has made so far (printed whenever it changes)."""
    live = registry.live_policy()
    policies, rewards = registry.list("policy"), registry.list("reward")
    rm = rewards[-1] if rewards else None
    acc = rm.metrics.get("eval_accuracy") if rm else None
    return (f"live {live} | {len(policies)} policies, {len(rewards)} reward models"
            + (f" (newest {rm.version}, held-out accuracy {acc:.0%})"
               if rm is not None and acc is not None else ""))


def run(opts: DemoOptions) -> int:
    """The whole demo; returns the exit code (0 = the live policy beats the first)."""
    from core.registry import Registry

    started, t0 = datetime.now(UTC), time.monotonic()
    deadline = t0 + opts.budget_minutes * 60
    tasks = instruction_set()
    platform = Platform(opts)
    out = (opts.out or platform.home / "demo").resolve()
    measured: dict[str, report.Measurement] = {}
    try:
        platform.start()
        platform.wait_ready()
        keys = platform.keys()
        registry = Registry(platform.home / "registry")
        first = registry.history()[0].version
        print(f"[{(time.monotonic() - t0) / 60:4.1f} min] server ready at {platform.url}; "
              f"{len(tasks.train)} train prompts, {len(tasks.held_out)} held out", flush=True)
        if getattr(platform, "workbench_url", None):
            print(f"           label by hand meanwhile: {platform.workbench_url}/ (key "
                  f"{keys['labeler']}); lead page {platform.workbench_url}/lead (key "
                  f"{keys['admin']})", flush=True)
        labelers = Labelers(platform.url, keys["labeler"], opts)
        measure = _measurer(registry, tasks.held_out, opts, measured)
        measure(first)

        # Step 1: demonstrations → the cycle's SFT → SFT gates → promotion.
        n = labelers.demonstrate(demonstration_prompts(opts))
        wait_for_rows(platform.database_url, "demonstration", n)
        sft = wait_for_sft(registry, opts.sft_timeout_s, platform.up)
        print(f"[{(time.monotonic() - t0) / 60:4.1f} min] SFT {sft.version} on "
              f"{sft.row_counts.get('demonstration', n)} demonstrations: gates "
              f"{sft.gates.get('status')} ({report.gate_summary(sft.gates)})"
              + (", live" if registry.live_policy() == sft.version else ""), flush=True)

        # Steps 2-3: rankings of live samples; the platform trains, gates and promotes.
        # Labelers rank one batch of the live policy's samples per outcome of the loop (a
        # promotion, or a candidate that failed its gates), like InstructGPT's batches of
        # comparisons: the store grows with the loop, not with the clock.
        ranked, cursor, last, batch_at, seen, batch_left = 0, 0, "", 0.0, None, 0
        while time.monotonic() < deadline:
            policies = registry.list("policy")
            outcome = (registry.live_policy(),
                       sum(m.gates.get("status") == "failed" for m in policies))
            if outcome != seen or time.monotonic() - batch_at > opts.idle_batch_s:
                seen, batch_at, batch_left = outcome, time.monotonic(), opts.batch_rankings
            if batch_left > 0:
                prompts = [tasks.train[(cursor + i) % len(tasks.train)]
                           for i in range(min(opts.prompts_per_round, batch_left))]
                cursor += len(prompts)
                ranked += labelers.rank_round(prompts)
                batch_left -= len(prompts)
            for m in policies:
                measure(m.version)
            state = registry_state(registry)
            if state != last:
                print(f"[{(time.monotonic() - t0) / 60:4.1f} min] {state} | {ranked} prompts "
                      "ranked so far", flush=True)
                last = state
            if opts.stop_after_promotions and \
                    gated_promotions(registry) >= opts.stop_after_promotions:
                print("stopping early: enough gated promotions", flush=True)
                break
            time.sleep(opts.round_pause_s)
        for m in registry.list("policy"):
            measure(m.version)
        reward = report.score_with_reward_model(registry, list(measured.values()))
        rows = report.build_rows(registry, measured, first, started)
    finally:
        platform.stop()

    out.mkdir(parents=True, exist_ok=True)
    report.print_table(rows, reward)
    result = report.verdict(rows, first)
    wall = time.monotonic() - t0
    report.plot(rows, out / "demo.png", wall)
    report.write_summary(out / "demo.json", rows, result,
                         {"wall_s": wall, "budget_minutes": opts.budget_minutes,
                          "reward_model": reward, "held_out_prompts": len(tasks.held_out),
                          "eval_samples_per_prompt": opts.eval_samples})
    print(f"live {result['live']}: hidden score {result['live_score']:.2f} vs "
          f"{result['first_score']:.2f} for {first}, win rate {result['win_rate']:.0%} → "
          f"{'beats' if result['beats_first'] else 'does NOT beat'} the first policy "
          f"({wall / 60:.1f} min; {out / 'demo.png'}, {out / 'demo.json'})", flush=True)
    return 0 if result["beats_first"] else 1


def _measurer(registry, prompts: list[str], opts: DemoOptions,
              measured: dict[str, report.Measurement]):
    """measure(version): measure each version once, on the held-out prompts."""
    def measure(version: str) -> None:
        if version not in measured:
            measured[version] = report.measure(registry, version, prompts,
                                               samples=opts.eval_samples,
                                               max_new_tokens=opts.max_tokens)
    return measure
