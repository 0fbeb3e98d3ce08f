"""The ``rlhf`` command: one sub-command per process (see docs/architecture.md).

This module only wires the process families together; each family owns its commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Serve InstructGPT-style policies and improve them from feedback.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
model_app = typer.Typer(help="Build and inspect model checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _mount() -> None:
    """Each process family owns its commands; this only puts them under ``rlhf``."""
    from deploy.cli import deploy_app
    from feedback.cli import broker_app, ingest_app
    from training.cli import reward_app, train_app

    app.add_typer(broker_app, name="broker")
    app.add_typer(ingest_app, name="ingest")
    app.add_typer(train_app, name="train")
    app.add_typer(reward_app, name="reward")
    app.add_typer(deploy_app, name="deploy")


_mount()


def _override(settings: Any, **dotted: Any) -> Any:
    """Apply CLI options (``http.port=…``) on top of the env-derived settings."""
    for path, value in dotted.items():
        if value is None:
            continue
        *parents, leaf = path.split("__")
        target = settings
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return settings


@app.command()
def serve(
    model: str = typer.Option(None, help="Checkpoint directory (default: registry's live policy)."),
    host: str = typer.Option(None, help="HTTP bind address."),
    port: int = typer.Option(None, help="HTTP port."),
    grpc_port: int = typer.Option(None, help="gRPC port."),
    served_model_name: str = typer.Option(None, help="Model id clients use."),
    policy_version: str = typer.Option(None, help="Version label for --model."),
    max_model_len: int = typer.Option(None, help="Context length."),
    tensor_parallel_size: int = typer.Option(None, help="GPUs per replica."),
) -> None:
    """Serve the OpenAI-compatible HTTP API and the gRPC API on a vLLM engine."""
    from serving.server import serve as run
    from serving.settings import ServeSettings

    settings = _override(
        ServeSettings(), model=model, served_model_name=served_model_name,
        policy_version=policy_version, http__host=host, http__port=port, grpc__port=grpc_port,
        engine__max_model_len=max_model_len, engine__tensor_parallel_size=tensor_parallel_size)
    run(settings)


@app.command()
def up(home: Path = typer.Option(None, help="State directory (default ./rlhf-home)."),
       model: Path = typer.Option(None, help="Base checkpoint (default: build the tiny one)."),
       port: int = typer.Option(None, help="HTTP port (default 8000)."),
       train_every: float = typer.Option(None, help="Seconds between training cycles.")) -> None:
    """Run the whole platform on this machine: broker, server, ingester, trainer, deploy."""
    from rlhf.up import UpSettings, run

    settings = _override(UpSettings(), home=home, model=model, http_port=port,
                         train_every_s=train_every)
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
                                              "due (for the platform it starts).")
         ) -> None:
    """Simulated labelers rank the live policy's samples; show that it improves."""
    from rlhf.demo import DEMO_CONFIGS, DemoOptions, run

    raise typer.Exit(run(DemoOptions(
        home=home, budget_minutes=budget_minutes, url=url, deploy_url=deploy_url, out=out,
        stop_after_promotions=stop_after_promotions, config_dir=config_dir or DEMO_CONFIGS,
        min_new_rankings=min_new_rankings)))


@model_app.command("tiny")
def model_tiny(out: Path = typer.Option(..., help="Directory to write the checkpoint to."),
               seed: int = typer.Option(0, help="Weights seed.")) -> None:
    """Build the deterministic tiny Llama checkpoint used by tests and the local loop."""
    from training.tiny_model import build_tiny_model

    typer.echo(build_tiny_model(out, seed=seed))


if __name__ == "__main__":
    app()
