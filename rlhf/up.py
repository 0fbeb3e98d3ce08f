"""``rlhf up``: the whole platform on one machine, supervised.

Starts the embedded broker (unless RLHF_KAFKA__BOOTSTRAP_SERVERS names one), the server
(HTTP + gRPC), the ingester, the deploy controller (auto-promote on) and a periodic
``rlhf train cycle``; restarts a child that crashes; stops everything on Ctrl-C. All
state lives under ``--home`` (SQLite store, registry, API keys, logs), so a second
``rlhf up`` continues where the first stopped. Each child is the same ``rlhf``
sub-command a Kubernetes pod runs; nothing here is a home-made cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from core.settings import ProcessSettings
from rlhf.procs import rlhf_command, stop_group


class UpSettings(ProcessSettings):
    """``rlhf up`` (``RLHF_UP__…`` is not used: these are flat ``RLHF_…`` names)."""

    home: Path = Field(Path("rlhf-home"), description="Directory holding all local state.")
    model: Path | None = Field(None, description="Base checkpoint; default: the tiny model.")
    http_port: int = Field(8000, description="OpenAI-compatible HTTP API port.")
    grpc_port: int = Field(50051, description="gRPC API port.")
    broker_port: int = Field(9092, description="Embedded broker port.")
    deploy_port: int = Field(8300, description="Deploy controller admin API port.")
    ingest_metrics_port: int = Field(9400, description="Ingester /metrics port.")
    train_every_s: float = Field(30.0, gt=0, description="Seconds between training cycles.")
    min_new_rankings: int = Field(20, ge=1, description="Rankings that make a reward model due.")
    auto_promote: bool = Field(True, description="Promote candidates that pass the gates.")
    external_kafka: str | None = Field(
        None, description="Use this Kafka instead of the embedded broker.")


@dataclass
class Child:
    """One supervised ``rlhf`` sub-command."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    periodic_s: float | None = None  # None: long-running, restarted when it exits
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    history: list[int] = field(default_factory=list)

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(rlhf_command(*self.args),
                                     env={**os.environ, **self.env}, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def tick(self, now: float) -> str | None:
        """Start or restart when due; returns a line to print, if any."""
        if self.proc is not None and self.proc.poll() is None:
            return None
        if self.proc is not None:  # it exited
            code = self.proc.returncode
            self.history.append(code)
            self.proc = None
            if self.periodic_s is not None:
                self.next_start = now + self.periodic_s
                return f"{self.name} finished (exit {code})" if code else None
            self.restarts += 1
            self.next_start = now + min(30.0, 2.0 ** min(self.restarts, 5))
            return f"{self.name} exited with {code}; restarting (see {self.log})"
        if now >= self.next_start:
            self.start()
        return None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout)


def prepare_home(s: UpSettings) -> dict[str, str]:
    """Create the home directory, the base policy, the store and the API keys once."""
    from core.registry import Registry
    from feedback.store import FeedbackStore

    home = s.home.resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    model = s.model
    if model is None:
        model = home / "models" / "tiny"
        if not (model / "config.json").exists():
            from training.tiny_model import build_tiny_model

            print(f"Building the tiny model in {model} (first run only)…", flush=True)
            build_tiny_model(model)
    registry = Registry(home / "registry")
    if registry.live_policy() is None:
        base = registry.register_base(Path(model))
        registry.set_live(base.version, "base policy of rlhf up")
    db_url = f"sqlite:///{home / 'feedback.db'}"
    FeedbackStore(db_url).migrate()
    keys = home / "keys.json"
    if not keys.exists():
        keys.write_text(json.dumps({f"sk-{role}-{secrets.token_hex(8)}": role
                                    for role in ("user", "labeler", "admin")}, indent=2))
        keys.chmod(0o600)
    return {"RLHF_REGISTRY__ROOT": str(home / "registry"), "RLHF_DATABASE__URL": db_url,
            "RLHF_AUTH__KEYS_FILE": str(keys), "RLHF_LOG_LEVEL": s.log_level}


def children(s: UpSettings, common: dict[str, str]) -> list[Child]:
    logs = s.home.resolve() / "logs"
    kafka = s.external_kafka or f"127.0.0.1:{s.broker_port}"
    env = {**common, "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka}
    made = []
    if not s.external_kafka:
        made.append(Child("broker", ["broker", "--port", str(s.broker_port)], env,
                          logs / "broker.log"))
    made += [
        Child("ingest", ["ingest"], {**env, "RLHF_METRICS_PORT": str(s.ingest_metrics_port),
                                     "RLHF_SESSION_TIMEOUT_MS": "6000",
                                     "RLHF_MAX_POLL_INTERVAL_MS": "10000"}, logs / "ingest.log"),
        Child("serve", ["serve", "--host", "127.0.0.1", "--port", str(s.http_port),
                        "--grpc-port", str(s.grpc_port), "--served-model-name", "policy"],
              # RLHF_MODEL is also `rlhf up`'s base checkpoint; the server must serve the
              # registry's live version instead, so that restarts come back on it.
              {**env, "RLHF_MODEL": ""}, logs / "serve.log"),
        Child("deploy", ["deploy", "controller", "--host", "127.0.0.1",
                         "--port", str(s.deploy_port)],
              {**env, "RLHF_AUTO_PROMOTE": str(s.auto_promote).lower(),
               "RLHF_SESSION_TIMEOUT_MS": "6000"}, logs / "deploy.log"),
        Child("train", ["train", "cycle"],
              {**env, "RLHF_MIN_NEW_RANKINGS": str(s.min_new_rankings)},
              logs / "train.log", periodic_s=s.train_every_s),
    ]
    return made


def banner(s: UpSettings) -> str:
    keys = json.loads((s.home.resolve() / "keys.json").read_text())
    by_role = {role: key for key, role in keys.items()}
    return "\n".join([
        "rlhf up: the platform is starting (the model loads in ~30 s on a CPU).",
        f"  OpenAI API   http://127.0.0.1:{s.http_port}/v1   (model: policy)",
        f"  gRPC         127.0.0.1:{s.grpc_port}",
        f"  metrics      http://127.0.0.1:{s.http_port}/metrics, "
        f"http://127.0.0.1:{s.ingest_metrics_port}/metrics",
        f"  deploy API   http://127.0.0.1:{s.deploy_port}/v1/deploy/status",
        f"  API keys     user {by_role['user']}  labeler {by_role['labeler']}  "
        f"admin {by_role['admin']}",
        f"  state + logs {s.home.resolve()}",
        "Ctrl-C stops everything."])


def run(s: UpSettings, until: float | None = None) -> int:
    common = prepare_home(s)
    kids = children(s, common)
    print(banner(s), flush=True)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    kids[0].tick(time.monotonic())  # the broker first: everyone else needs it
    time.sleep(1.0)
    try:
        while not stopping and (until is None or time.monotonic() < until):
            for kid in kids:
                line = kid.tick(time.monotonic())
                if line:
                    print(line, flush=True)
            time.sleep(0.5)
    finally:
        print("Stopping…", flush=True)
        for kid in reversed(kids):
            kid.stop()
    return 0
