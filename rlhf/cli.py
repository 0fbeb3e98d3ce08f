"""The ``rlhf`` command: one sub-command per process (see docs/architecture.md).

This module only wires the process families together; each family owns its commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Serve InstructGPT-style policies and improve them from feedback. "
                  "Every option also has an RLHF_… environment variable (named in its "
                  "help); docs/settings.md lists them all.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  # plain help: rich's narrow option tables cut environment variable names
                  rich_markup_mode=None)
model_app = typer.Typer(help="Build and inspect model checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model")

CHATTY_AT_INFO = ("alembic",)
"""Loggers kept at WARNING unless the log level is debug: Alembic narrates every migration
step (some 35 lines per training command) on each start-up."""


@app.callback()
def main(verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Debug logging for every process this starts "
                                       "(sets RLHF_LOG_LEVEL=debug).")) -> None:
    """Quiet noisy libraries unless asked for debug logs (``--verbose`` or
    RLHF_LOG_LEVEL=debug); children inherit the level through RLHF_LOG_LEVEL."""
    import logging
    import os

    if verbose:
        os.environ["RLHF_LOG_LEVEL"] = "debug"
    debug = os.environ.get("RLHF_LOG_LEVEL", "").lower() == "debug"
    for name in CHATTY_AT_INFO:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def _mount() -> None:
    """Each process family owns its commands; this only puts them under ``rlhf``."""
    from deploy.cli import deploy_app
    from feedback.cli import broker_app, ingest_app
    from labeling.cli import workbench
    from training.cli import reward_app, train_app

    app.add_typer(broker_app, name="broker")
    app.add_typer(ingest_app, name="ingest")
    app.add_typer(train_app, name="train")
    app.add_typer(reward_app, name="reward")
    app.add_typer(deploy_app, name="deploy")
    app.command("workbench")(workbench)


_mount()


@app.command()
def serve(
    model: str = typer.Option(None, help="Checkpoint directory (RLHF_MODEL; default: the "
                              "registry's live policy)."),
    host: str = typer.Option(None, help="HTTP and gRPC bind address (RLHF_HTTP__HOST, "
                             "RLHF_GRPC__HOST; default 0.0.0.0)."),
    port: int = typer.Option(None, help="HTTP port (RLHF_HTTP__PORT; default 8000)."),
    grpc_port: int = typer.Option(None, help="gRPC port (RLHF_GRPC__PORT; default 50051)."),
    served_model_name: str = typer.Option(None, help="Model id clients use "
                                          "(RLHF_SERVED_MODEL_NAME)."),
    policy_version: str = typer.Option(None, help="Version label for --model "
                                       "(RLHF_POLICY_VERSION)."),
    max_model_len: int = typer.Option(None, help="Context length "
                                      "(RLHF_ENGINE__MAX_MODEL_LEN)."),
    tensor_parallel_size: int = typer.Option(None, help="GPUs per replica "
                                             "(RLHF_ENGINE__TENSOR_PARALLEL_SIZE)."),
    dtype: str = typer.Option(None, help="Weights dtype: auto, float32, bfloat16, float16 "
                              "(RLHF_ENGINE__DTYPE)."),
    kv_cache_gib: float = typer.Option(None, "--kv-cache-gib", help="KV cache size in GiB "
                                       "(RLHF_ENGINE__KV_CACHE_SPACE_GIB; default 1 on CPUs)."),
    keys_file: Path = typer.Option(None, help="JSON/YAML file of API key → role "
                                   "(RLHF_AUTH__KEYS_FILE). Without keys every caller is "
                                   "admin."),
    publish_events: bool = typer.Option(
        None, "--publish-events/--no-publish-events",
        help="Log completions to Kafka and accept feedback (RLHF_PUBLISH_EVENTS; default "
             "on; off: no broker needed, the feedback API answers 503)."),
    allow_open: bool = typer.Option(
        None, "--allow-open", help="Serve without API keys on a non-loopback --host "
                                   "(RLHF_AUTH__ALLOW_OPEN); refused otherwise."),
) -> None:
    """Serve the OpenAI-compatible HTTP API and the gRPC API on a vLLM engine.

    Exits 1 at once when --model is not a checkpoint directory, a port is taken, or it
    would serve without API keys on a non-loopback address (see --allow-open); and exits 1
    when the model then fails to load.
    """
    from core.cli_settings import load_settings
    from serving.server import serve as run
    from serving.settings import ServeSettings

    settings = load_settings(ServeSettings, {
        "model": ("--model", model), "served_model_name": ("--served-model-name",
                                                          served_model_name),
        "policy_version": ("--policy-version", policy_version),
        "http.host": ("--host", host), "grpc.host": ("--host", host),
        "http.port": ("--port", port), "grpc.port": ("--grpc-port", grpc_port),
        "engine.max_model_len": ("--max-model-len", max_model_len),
        "engine.tensor_parallel_size": ("--tensor-parallel-size", tensor_parallel_size),
        "engine.dtype": ("--dtype", dtype),
        "engine.kv_cache_space_gib": ("--kv-cache-gib", kv_cache_gib),
        "auth.keys_file": ("--keys-file", keys_file),
        "publish_events": ("--publish-events", publish_events),
        "auth.allow_open": ("--allow-open", allow_open)}, command="rlhf serve")
    run(settings)


@app.command()
def up(home: Path = typer.Option(None, help="State directory (RLHF_UP__HOME; default "
                                 "./rlhf-home)."),
       model: Path = typer.Option(None, help="Base checkpoint directory, or `tiny` / `small` "
                                  "to build a built-in one (RLHF_UP__MODEL; default tiny)."),
       port: int = typer.Option(None, help="HTTP port (RLHF_UP__HTTP_PORT; default 8000)."),
       grpc_port: int = typer.Option(None, help="gRPC port (RLHF_UP__GRPC_PORT; default 50051)."),
       broker_port: int = typer.Option(None, help="Embedded broker port (RLHF_UP__BROKER_PORT; "
                                       "default 9092)."),
       deploy_port: int = typer.Option(None, help="Deploy admin API port "
                                       "(RLHF_UP__DEPLOY_PORT; default 8300)."),
       metrics_port: int = typer.Option(None, help="Ingester /metrics port "
                                        "(RLHF_UP__INGEST_METRICS_PORT; default 9400)."),
       workbench_port: int = typer.Option(None, help="Labeling workbench port "
                                          "(RLHF_UP__WORKBENCH_PORT; default 8500)."),
       train_every: float = typer.Option(None, help="Seconds between training cycles "
                                         "(RLHF_UP__TRAIN_EVERY_S; default 30)."),
       min_new_rankings: int = typer.Option(
           None, help="New rankings that make a reward model and a PPO run due "
                      "(RLHF_UP__MIN_NEW_RANKINGS; the same default as `rlhf train cycle`)."),
       config_dir: Path = typer.Option(None, help="Recipe YAMLs sft/reward/ppo.yaml for the "
                                       "training cycles (RLHF_UP__CONFIG_DIR; default: packaged)."),
       gate_prompts: int = typer.Option(None, help="Held-out prompts each promotion gate "
                                        "samples (RLHF_GATES__NUM_PROMPTS; default 32)."),
       gate_max_new_tokens: int = typer.Option(
           None, help="Tokens per gate sample (RLHF_GATES__MAX_NEW_TOKENS; default: the "
                      "candidate's own max_new_tokens)."),
       auto_promote: bool = typer.Option(
           None, "--auto-promote/--no-auto-promote",
           help="Promote candidates that pass the gates (RLHF_UP__AUTO_PROMOTE; default on)."),
       external_kafka: str = typer.Option(
           None, help="host:port of a Kafka to use instead of the embedded broker "
                      "(RLHF_UP__EXTERNAL_KAFKA)."),
       database_url: str = typer.Option(
           None, help="Feedback store URL for every process (RLHF_UP__DATABASE_URL; "
                      "default sqlite:///<home>/feedback.db)."),
       broker_storage: str = typer.Option(
           None, help="Embedded broker storage (RLHF_BROKER__STORAGE_URL; default "
                      "s3://tansu/ on a local S3 store under <home>/broker, durable; "
                      "memory://tansu/ is faster and loses unconsumed events on restart)."),
       ) -> None:
    """Run the whole platform on this machine: broker, server, ingester, trainer, deploy,
    labeling workbench.

    Every port is checked first; if one is taken it exits 2 at once, naming the port and
    what holds it. Ctrl-C (SIGTERM) stops every child and everything they started.
    """
    from core.cli_settings import load_settings
    from rlhf.up import UpSettings, run

    settings = load_settings(UpSettings, {
        "home": ("--home", home), "model": ("--model", model), "http_port": ("--port", port),
        "grpc_port": ("--grpc-port", grpc_port), "broker_port": ("--broker-port", broker_port),
        "deploy_port": ("--deploy-port", deploy_port),
        "ingest_metrics_port": ("--metrics-port", metrics_port),
        "workbench_port": ("--workbench-port", workbench_port),
        "train_every_s": ("--train-every", train_every),
        "min_new_rankings": ("--min-new-rankings", min_new_rankings),
        "config_dir": ("--config-dir", config_dir),
        "gates.num_prompts": ("--gate-prompts", gate_prompts),
        "gates.max_new_tokens": ("--gate-max-new-tokens", gate_max_new_tokens),
        "auto_promote": ("--auto-promote", auto_promote),
        "external_kafka": ("--external-kafka", external_kafka),
        "database_url": ("--database-url", database_url),
        "broker.storage_url": ("--broker-storage", broker_storage)}, command="rlhf up")
    raise typer.Exit(run(settings))


@app.command()
def demo(home: Path = typer.Option(Path("rlhf-demo"), help="State directory; a fresh one "
                                   "unless --url names a running `rlhf up` (then its home)."),
         budget_minutes: float = typer.Option(12.0, help="How long labelers keep ranking."),
         url: str = typer.Option(None, help="HTTP URL of a running `rlhf up` "
                                 "(default: start one and stop it at the end)."),
         deploy_url: str = typer.Option("http://127.0.0.1:8300",
                                        help="Its deploy admin API (with --url)."),
         out: Path = typer.Option(None, help="Where demo.png and demo.json go "
                                  "(default <home>/demo)."),
         stop_after_promotions: int = typer.Option(
             0, help="Stop early after this many gated promotions (0: use the budget)."),
         config_dir: Path = typer.Option(None, help="Recipe YAMLs (sft, reward, ppo) of the "
                                         "platform it starts (default training/configs/demo)."),
         min_new_rankings: int = typer.Option(48, help="Rankings that make a reward model "
                                              "due (for the platform it starts)."),
         model: str = typer.Option(None, help="Base model of the platform it starts: tiny "
                                   "(default), small (Qwen-shaped, real vocabulary) or a "
                                   "checkpoint directory.")
         ) -> None:
    """Simulated labelers rank the live policy's samples; show that it improves."""
    from rlhf.demo import DEMO_CONFIGS, DemoOptions, run

    raise typer.Exit(run(DemoOptions(
        home=home, budget_minutes=budget_minutes, url=url, deploy_url=deploy_url, out=out,
        stop_after_promotions=stop_after_promotions, config_dir=config_dir or DEMO_CONFIGS,
        min_new_rankings=min_new_rankings, model=model)))


@model_app.command("tiny")
def model_tiny(out: Path = typer.Option(..., help="Directory to write the checkpoint to."),
               seed: int = typer.Option(0, help="Weights seed."),
               size: str = typer.Option("tiny", help="tiny (0.85M params), 10m, 50m or 120m: "
                                                     "random-init Llama shapes, same tokenizer "
                                                     "(scaling benchmarks).")) -> None:
    """Build the deterministic tiny Llama checkpoint used by tests and the local loop."""
    from training.tiny_model import SIZES, build_sized_model

    if size not in SIZES:
        raise typer.BadParameter(f"size must be one of {', '.join(SIZES)}", param_hint="--size")
    typer.echo(build_sized_model(out, size, seed=seed))


@model_app.command("small")
def model_small(out: Path = typer.Option(..., help="Directory to write the checkpoint to."),
                seed: int = typer.Option(0, help="Weights seed.")) -> None:
    """Build the Qwen2-shaped checkpoint with Qwen's real vocabulary (41.8M params, bf16,
    random weights: memory, speed and real-vocabulary tests; it does not speak)."""
    from training.small_model import build_small_model

    typer.echo(build_small_model(out, seed=seed))


if __name__ == "__main__":
    app()
