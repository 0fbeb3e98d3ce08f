"""``rlhf up``: the whole platform on one machine, supervised.

Starts the embedded broker (unless RLHF_KAFKA__BOOTSTRAP_SERVERS names one), the server
(HTTP + gRPC), the ingester, the deploy controller (auto-promote on) and a periodic
``rlhf train cycle``; restarts a child that crashes (after stopping everything it
spawned); stops everything on Ctrl-C. All state lives under ``--home`` (SQLite store,
registry, API keys, logs), so a second ``rlhf up`` continues where the first stopped.
Each child is the same ``rlhf`` sub-command a Kubernetes pod runs; nothing here is a
home-made cluster.

Before anything starts, every port it needs is checked: a second ``rlhf up`` on the same
ports exits at once, naming the port and its holder, instead of crash-looping children.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from pydantic import Field

from core.settings import ProcessSettings
from deploy.settings import GateSettings
from feedback.broker import memory_storage_warning
from feedback.settings import EmbeddedBrokerSettings
from rlhf.procs import Child, Supervisor, port_conflicts, private_tmp_root, rlhf_command
from training.settings import TrainSettings

# One default per setting: `rlhf up` passes these to its children, whose own settings
# classes own the defaults.
_TRAIN_DEFAULTS = TrainSettings.model_fields


class UpSettings(ProcessSettings):
    """``rlhf up``: its own settings are ``RLHF_UP__…``; the ``RLHF_GATES__…`` and
    ``RLHF_BROKER__…`` sections it hands to its children."""

    env_section = "UP"

    home: Path = Field(Path("rlhf-home"), description="Directory holding all local state.")
    model: Path | None = Field(
        None, description="Base checkpoint directory, or a built-in model: `tiny` (the "
                          "default) or `small` (Qwen-shaped, real vocabulary).")
    http_port: int = Field(8000, ge=1, le=65535, description="OpenAI-compatible HTTP API port.")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC API port.")
    broker_port: int = Field(9092, ge=1, le=65535, description="Embedded broker port.")
    deploy_port: int = Field(8300, ge=1, le=65535, description="Deploy controller admin API port.")
    ingest_metrics_port: int = Field(9400, ge=1, le=65535, description="Ingester /metrics port.")
    workbench_port: int = Field(8500, ge=1, le=65535,
                                description="Labeling workbench page and API port.")
    train_every_s: float = Field(30.0, gt=0, description="Seconds between training cycles.")
    min_new_rankings: int = Field(
        _TRAIN_DEFAULTS["min_new_rankings"].default, ge=1,
        description="New rankings that make a reward model (and a PPO run) due; the same "
                    "setting and default as `rlhf train cycle`.")
    min_new_demonstrations: int = Field(
        _TRAIN_DEFAULTS["min_new_demonstrations"].default, ge=1,
        description="New labeler/admin demonstrations that make an SFT run due; the same "
                    "setting and default as `rlhf train cycle`.")
    config_dir: Path | None = Field(
        None,
        description="Recipe YAMLs (sft, reward, ppo) of the training cycles; default: "
                    "training/configs/demo/, sized for the tiny model `rlhf up` builds and "
                    "2 CPU cores (PPO-ptx on the demonstrations). The packaged paper values "
                    "(training/configs/) need a ptx_file. Checked at start.")
    auto_promote: bool = Field(True, description="Promote candidates that pass the gates.")
    external_kafka: str | None = Field(
        None, description="Use this Kafka instead of the embedded broker.")
    database_url: str | None = Field(
        None, description="Feedback store (SQLAlchemy URL, e.g. postgresql://…) for every "
                          "process; default: sqlite:///<home>/feedback.db.")
    gates: GateSettings = Field(default_factory=GateSettings)
    broker: EmbeddedBrokerSettings = Field(default_factory=EmbeddedBrokerSettings)

    def recipe_dir(self) -> Path:
        """The training cycles' recipe configs: ``config_dir``, else the demo's."""
        from training.config import DEMO_CONFIG_DIR

        return (self.config_dir or DEMO_CONFIG_DIR).resolve()

    def ports(self) -> dict[str, int]:
        """Every port this platform binds, by what binds it."""
        named = {"HTTP (--port, RLHF_UP__HTTP_PORT)": self.http_port,
                 "gRPC (--grpc-port, RLHF_UP__GRPC_PORT)": self.grpc_port,
                 "deploy admin (--deploy-port, RLHF_UP__DEPLOY_PORT)": self.deploy_port,
                 "ingest metrics (--metrics-port, RLHF_UP__INGEST_METRICS_PORT)":
                     self.ingest_metrics_port,
                 "labeling workbench (--workbench-port, RLHF_UP__WORKBENCH_PORT)":
                     self.workbench_port}
        if not self.external_kafka:
            named = {"broker (--broker-port, RLHF_UP__BROKER_PORT)": self.broker_port, **named}
        return named


def _build_tiny(out: Path) -> Path:
    from training.tiny_model import build_tiny_model

    return build_tiny_model(out)


def _build_small(out: Path) -> Path:
    from training.small_model import build_small_model

    return build_small_model(out)


BUILTIN_MODELS = {"tiny": _build_tiny, "small": _build_small}
"""``--model tiny`` (0.85M parameters, toy vocabulary: the default, the demo's) and
``--model small`` (Qwen2-shaped, 41.8M, Qwen's 151,936-token vocabulary, bf16): built
under ``<home>/models/<name>`` on first use. Random weights."""


def builtin_model(model: Path | None) -> str | None:
    """The built-in model ``--model`` names (None = tiny), or None for a checkpoint path."""
    if model is None:
        return "tiny"
    if str(model) in BUILTIN_MODELS and not model.exists():
        return str(model)
    return None


def prepare_home(s: UpSettings) -> dict[str, str]:
    """Create the home directory, the base policy, the store and the API keys once."""
    from core.registry import Registry
    from feedback.store import FeedbackStore

    home = s.home.resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    name = builtin_model(s.model)
    model = home / "models" / name if name is not None else Path(s.model or ".")
    if name is not None:
        if not (model / "config.json").exists():
            print(f"Building the {name} model in {model} (first run only)…", flush=True)
            BUILTIN_MODELS[name](model)
    registry = Registry(home / "registry")
    if registry.live_policy() is None:
        base = registry.register_base(Path(model))
        registry.set_live(base.version, "base policy of rlhf up")
    db_url = s.database_url or f"sqlite:///{home / 'feedback.db'}"
    FeedbackStore(db_url).migrate()
    keys = home / "keys.json"
    if not keys.exists():
        keys.write_text(json.dumps({f"sk-{role}-{secrets.token_hex(8)}": role
                                    for role in ("user", "labeler", "admin")}, indent=2))
        keys.chmod(0o600)
    return {"RLHF_REGISTRY__ROOT": str(home / "registry"), "RLHF_DATABASE__URL": db_url,
            "RLHF_AUTH__KEYS_FILE": str(keys), "RLHF_LOG_LEVEL": s.log_level}


def gate_env(gates: GateSettings) -> dict[str, str]:
    """``RLHF_GATES__…`` for the deploy controller, nested sections joined by ``__``
    (unset optional ones are left out)."""
    return _flat_env("RLHF_GATES__", gates.model_dump(mode="json"))


def _flat_env(prefix: str, values: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in values.items():
        key = prefix + name.upper()
        if isinstance(value, dict):
            out.update(_flat_env(key + "__", value))
        elif isinstance(value, list):
            out[key] = json.dumps(value)
        elif isinstance(value, bool):
            out[key] = str(value).lower()
        elif value is not None:
            out[key] = str(value)
    return out


def children(s: UpSettings, common: dict[str, str]) -> list[Child]:
    home = s.home.resolve()
    logs, tmp = home / "logs", private_tmp_root(home)
    kafka = s.external_kafka or f"127.0.0.1:{s.broker_port}"
    env = {**common, "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka}
    made = []

    def child(name: str, args: list[str], extra: dict[str, str],
              periodic_s: float | None = None) -> Child:
        return Child(name, rlhf_command(*args), {**env, **extra}, logs / f"{name}.log",
                     periodic_s=periodic_s, tmp=tmp / name)

    if not s.external_kafka:
        made.append(child("broker", ["broker", "--port", str(s.broker_port)],
                          _flat_env("RLHF_BROKER__", {
                              **s.broker.model_dump(mode="json"),
                              "data_dir": str((s.broker.data_dir or home / "broker").resolve())})))
    made += [
        child("ingest", ["ingest"], {"RLHF_INGEST__METRICS_PORT": str(s.ingest_metrics_port),
                                     # a restarted ingester waits for the dead
                                     # member's session to expire: 3 s (recovery.py:
                                     # SIGKILL → next event stored 12.2 s at 6 s, 8.1 s
                                     # at 3 s; static membership stalls on Tansu 0.6)
                                     "RLHF_INGEST__SESSION_TIMEOUT_MS": "3000",
                                     "RLHF_INGEST__MAX_POLL_INTERVAL_MS": "10000"}),
        child("serve", ["serve", "--host", "127.0.0.1", "--port", str(s.http_port),
                        "--grpc-port", str(s.grpc_port), "--served-model-name", "policy"],
              # the server serves the registry's live version (so restarts come back on it),
              # never an RLHF_MODEL left in the shell for a plain `rlhf serve`.
              {"RLHF_MODEL": ""}),
        child("deploy", ["deploy", "controller", "--host", "127.0.0.1",
                         "--port", str(s.deploy_port)],
              {"RLHF_DEPLOY__AUTO_PROMOTE": str(s.auto_promote).lower(),
               "RLHF_DEPLOY__SESSION_TIMEOUT_MS": "6000", **gate_env(s.gates)}),
        child("workbench", ["workbench", "--host", "127.0.0.1",
                            "--port", str(s.workbench_port),
                            "--serving-url", f"http://127.0.0.1:{s.http_port}"], {}),
        child("train", ["train", "cycle"],
              {"RLHF_TRAIN__MIN_NEW_RANKINGS": str(s.min_new_rankings),
               "RLHF_TRAIN__MIN_NEW_DEMONSTRATIONS": str(s.min_new_demonstrations),
               "RLHF_TRAIN__CONFIG_DIR": str(s.recipe_dir())},
              periodic_s=s.train_every_s),
    ]
    return made


def banner(s: UpSettings) -> str:
    keys = json.loads((s.home.resolve() / "keys.json").read_text())
    by_role = {role: key for key, role in keys.items()}
    broker = s.external_kafka or f"127.0.0.1:{s.broker_port} (embedded, " + (
        "memory storage: events are lost when it restarts)"
        if memory_storage_warning(s.broker.storage_url)
        else f"durable storage {s.broker.storage_url} under "
             f"{s.broker.data_dir or s.home.resolve() / 'broker'})")
    return "\n".join([
        "rlhf up: the platform is starting (the model loads in ~30 s on a CPU).",
        f"  OpenAI API   http://127.0.0.1:{s.http_port}/v1   (model: policy)",
        f"  gRPC         127.0.0.1:{s.grpc_port}",
        f"  metrics      http://127.0.0.1:{s.http_port}/metrics, "
        f"http://127.0.0.1:{s.ingest_metrics_port}/metrics",
        f"  deploy API   http://127.0.0.1:{s.deploy_port}/v1/deploy/status",
        f"  labeling     http://127.0.0.1:{s.workbench_port}/ (labelers), "
        f"http://127.0.0.1:{s.workbench_port}/lead (admin key)",
        f"  Kafka        {broker}",
        f"  training     a cycle every {s.train_every_s:g} s; a reward model after "
        f"{s.min_new_rankings} new rankings; gates on {s.gates.num_prompts} prompts",
        f"  API keys     user {by_role['user']}  labeler {by_role['labeler']}  "
        f"admin {by_role['admin']}",
        f"  state + logs {s.home.resolve()}",
        "Ctrl-C stops everything."])


def check_configs(s: UpSettings) -> list[str]:
    """One line per setting that cannot run, naming the file or flag and the field."""
    from training.preflight import check_recipe_configs

    problems = []
    if builtin_model(s.model) is None and not (s.model / "config.json").is_file():  # type: ignore[operator]
        problems.append(f"--model (RLHF_UP__MODEL) {s.model} is not a checkpoint directory "
                        "(no config.json)")
    return problems + check_recipe_configs(s.recipe_dir())


def check_ports(s: UpSettings) -> list[str]:
    """One line per port that is already taken (empty when all are free)."""
    return [str(c) for c in port_conflicts(s.ports())]


def _wait_broker(kid: Child, port: int, timeout_s: float = 30.0) -> bool:
    """Until the broker accepts connections; False when it exits first or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not kid.running:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def run(s: UpSettings, until: float | None = None) -> int:
    """Run the platform until SIGINT/SIGTERM (or ``until``, a monotonic deadline).

    Exit codes: 0 stopped on request; 2 a port is taken or a setting or recipe config
    cannot run (nothing was started); 1 the embedded broker could not start.
    """
    for problems, advice in (
            ([f"error: {p}" for p in check_configs(s)],
             "Fix the config (--config-dir, RLHF_UP__CONFIG_DIR) or the flag."),
            (check_ports(s), "Stop what holds the port(s), or pick others (rlhf up --help "
                             "lists the port flags).")):
        if problems:
            for line in [*problems, f"nothing was started. {advice}"]:
                print(f"rlhf up: {line}", file=sys.stderr, flush=True)
            return 2
    warning = None if s.external_kafka else memory_storage_warning(s.broker.storage_url)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    common = prepare_home(s)
    tmp_root = private_tmp_root(s.home)
    shutil.rmtree(tmp_root, ignore_errors=True)  # left by an `rlhf up` that was killed
    kids = children(s, common)
    sup = Supervisor(kids, say=lambda line: print(line, flush=True), last=("broker",))
    print(banner(s), flush=True)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if not s.external_kafka:  # the broker first: everyone else needs it
            kids[0].tick(time.monotonic())
            if not _wait_broker(kids[0], s.broker_port):
                print(f"rlhf up: the embedded broker did not start; see {kids[0].log}:\n"
                      + _tail(kids[0].log), file=sys.stderr, flush=True)
                return 1
        while not stopping and (until is None or time.monotonic() < until):
            sup.tick()
            time.sleep(0.5)
    finally:
        print("Stopping…", flush=True)
        sup.stop()
        shutil.rmtree(tmp_root, ignore_errors=True)
    return 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


__all__ = ["UpSettings", "check_ports", "children", "gate_env", "prepare_home", "run"]
