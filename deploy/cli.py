"""``rlhf deploy …``: status, gates, promote, rollback, and the long-running controller.

``deploy_app`` is mounted by ``rlhf/cli.py``. Settings come from ``RLHF_…`` variables
(DeploySettings); the options below override the common ones. Results print as JSON on
stdout; errors print on stderr with exit code 1 (gates failed) or 2 (anything else).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from deploy.settings import DeploySettings

deploy_app = typer.Typer(help="Promotion gates, promote and roll back the served policy.",
                         no_args_is_help=True)

RegOpt = typer.Option(None, "--registry", help="Registry root (RLHF_REGISTRY__ROOT).")
DbOpt = typer.Option(None, "--database-url", help="Feedback store URL (RLHF_DATABASE__URL).")
KafkaOpt = typer.Option(None, "--bootstrap-servers",
                        help="Kafka brokers (RLHF_KAFKA__BOOTSTRAP_SERVERS).")
ReasonOpt = typer.Option("", "--reason", help="Recorded in the live history.")


def _settings(registry: Path | None, database_url: str | None,
              bootstrap_servers: str | None, host: str | None = None,
              port: int | None = None) -> DeploySettings:
    """DeploySettings from RLHF_… variables with the given flags on top (exit 2 naming a
    bad flag or variable)."""
    from core.cli_settings import load_settings

    settings = load_settings(DeploySettings, {
        "registry.root": ("--registry", registry),
        "database.url": ("--database-url", database_url),
        "kafka.bootstrap_servers": ("--bootstrap-servers", bootstrap_servers),
        "host": ("--host", host), "port": ("--port", port)}, command="rlhf deploy")
    logging.basicConfig(level=settings.log_level.upper())
    logging.getLogger("kafka").setLevel(logging.WARNING)
    return settings


def _controller(settings: DeploySettings):
    from deploy.controller import DeployController
    from feedback.store import FeedbackStore

    return DeployController(settings, store=FeedbackStore(settings.database.url))


def _run(controller, coro_factory) -> None:
    """Run one controller call; print its JSON, or the error and exit non-zero."""
    from deploy.errors import DeployError, GatesFailed

    try:
        result = asyncio.run(coro_factory())
    except DeployError as e:
        typer.echo(f"error: {e.message}", err=True)
        if isinstance(e, GatesFailed):
            typer.echo(e.report.model_dump_json(indent=2))
        raise typer.Exit(1 if isinstance(e, GatesFailed) else 2) from None
    finally:
        controller.close()
    typer.echo(result.model_dump_json(indent=2))


@deploy_app.command()
def status(registry: Path | None = RegOpt, bootstrap_servers: str | None = KafkaOpt,
           replicas: bool = typer.Option(True, "--replicas/--no-replicas",
                                         help="Read replica versions from rlhf.policy.")
           ) -> None:
    """Live version, every policy with its gate status, history, and the replicas heard
    from within RLHF_ROLLOUT__STALE_AFTER_S with their versions (JSON).

    Read-only and quick: creates nothing (a missing registry reads as empty), and an
    unreachable Kafka costs one warning line on stderr, not kafka-python's retries."""
    from kafka.errors import KafkaError

    from core.registry import Registry
    from deploy.notices import KafkaUnreachable, read_replica_versions
    from deploy.status import read_status

    settings = _settings(registry, None, bootstrap_servers)
    known = None
    if replicas:
        try:
            known = read_replica_versions(settings.kafka,
                                          stale_after_s=settings.rollout.stale_after_s)
        except KafkaUnreachable as e:
            typer.echo(f"warning: {e}; replicas not shown", err=True)
        except KafkaError as e:
            typer.echo(f"warning: Kafka at {settings.kafka.bootstrap_servers} failed: {e}; "
                       "replicas not shown", err=True)
    typer.echo(read_status(Registry(settings.registry.root, create=False), known)
               .model_dump_json(indent=2))


@deploy_app.command()
def gates(version: str = typer.Argument(..., help="Candidate policy version."),
          registry: Path | None = RegOpt, database_url: str | None = DbOpt) -> None:
    """Evaluate and record the gates of VERSION without promoting it."""
    controller = _controller(_settings(registry, database_url, None))
    _run(controller, lambda: controller.evaluate(version))


@deploy_app.command()
def promote(version: str = typer.Argument(..., help="Policy version to make live."),
            force: bool = typer.Option(False, "--force", help="Skip the gates."),
            reason: str = ReasonOpt, registry: Path | None = RegOpt,
            database_url: str | None = DbOpt, bootstrap_servers: str | None = KafkaOpt) -> None:
    """Run the gates (unless --force), make VERSION live and publish a promote event."""
    controller = _controller(_settings(registry, database_url, bootstrap_servers))
    _run(controller, lambda: controller.with_fleet(
        lambda: controller.promote(version, force, reason)))


@deploy_app.command()
def rollback(version: str | None = typer.Argument(
                 None, help="Version to return to (default: the previous good live one)."),
             reason: str = ReasonOpt, registry: Path | None = RegOpt,
             bootstrap_servers: str | None = KafkaOpt) -> None:
    """Make an earlier version live again and publish a rollback event."""
    controller = _controller(_settings(registry, None, bootstrap_servers))
    _run(controller, lambda: controller.with_fleet(lambda: controller.rollback(version, reason)))


@deploy_app.command("controller")
def run_controller(host: str | None = typer.Option(
                       None, help="Admin API bind address (RLHF_DEPLOY__HOST)."),
                   port: int | None = typer.Option(
                       None, help="Admin API port (RLHF_DEPLOY__PORT)."),
                   registry: Path | None = RegOpt, database_url: str | None = DbOpt,
                   bootstrap_servers: str | None = KafkaOpt) -> None:
    """Long-running: consume rlhf.policy (gates, auto-promote, rollback on failed swaps)
    and serve the admin API (/v1/deploy/…)."""
    import uvicorn

    from core.auth import KeyRing
    from deploy.api import create_app

    settings = _settings(registry, database_url, bootstrap_servers, host, port)
    app = create_app(_controller(settings), KeyRing.from_settings(settings.auth),
                     consume_events=True)
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level)


if __name__ == "__main__":
    deploy_app()
