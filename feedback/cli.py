"""``rlhf broker`` and ``rlhf ingest``: the feedback pipeline's processes.

``rlhf.cli`` mounts ``broker_app`` and ``ingest_app``; ``python -m feedback.cli`` runs
them on their own (tests start the ingester this way). Both read their settings tree
from ``RLHF_…`` environment variables.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from pathlib import Path

import typer

from feedback.settings import BrokerSettings, IngestSettings

broker_app = typer.Typer(help="Run the embedded Kafka-protocol broker (Tansu).",
                         invoke_without_command=True, no_args_is_help=False)
ingest_app = typer.Typer(help="Consume completions and feedback into the feedback store.",
                         invoke_without_command=True, no_args_is_help=False)
app = typer.Typer(help="Feedback pipeline processes.")
app.add_typer(broker_app, name="broker")
app.add_typer(ingest_app, name="ingest")


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":  # kafka-python narrates every connection at INFO
        logging.getLogger("kafka").setLevel(logging.WARNING)


def _on_shutdown_signal(handler) -> None:  # type: ignore[no-untyped-def]
    """Call ``handler`` on SIGTERM (Kubernetes) and SIGINT (Ctrl-C)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: handler())


@broker_app.callback()
def broker(port: int | None = typer.Option(None, help="Port (0 = free); default from "
                                            "RLHF_BROKER__PORT."),
           storage_url: str | None = typer.Option(
               None, help="Tansu storage engine (RLHF_BROKER__STORAGE_URL; default "
                          "s3://tansu/ on a local S3 store under RLHF_BROKER__DATA_DIR, "
                          "durable; memory://tansu/ loses events on restart).")) -> None:
    """Start Tansu, create the topics, and run until Ctrl-C.

    Memory storage is announced on stderr: a restart loses every event not yet consumed.
    The default, s3:// on a local object store, keeps them. Exits 1 when tansu cannot
    start (e.g. a storage engine its build lacks) or dies.
    """
    from core.cli_settings import load_settings
    from feedback.broker import BrokerStartError, EmbeddedBroker, memory_storage_warning

    settings = load_settings(BrokerSettings, {
        "port": ("--port", port), "broker.storage_url": ("--storage-url", storage_url)},
        command="rlhf broker")
    _logging(settings.log_level)
    done = threading.Event()
    _on_shutdown_signal(done.set)
    chosen = settings.port
    storage = settings.broker.storage_url
    warning = memory_storage_warning(storage)
    if warning:
        typer.echo(f"WARNING: {warning}", err=True)
    try:
        b = EmbeddedBroker(settings.kafka, host=settings.host, port=chosen,
                           storage_url=storage, binary=settings.broker.binary,
                           data_dir=settings.broker.data_dir or Path("rlhf-home/broker"),
                           s3_endpoint=settings.broker.s3_endpoint).start()
    except BrokerStartError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    with b:
        typer.echo(f"RLHF_KAFKA__BOOTSTRAP_SERVERS={b.bootstrap_servers}", err=False)
        while not done.wait(0.5):
            if not b.running:
                typer.echo("error: tansu exited", err=True)
                raise typer.Exit(1)


@ingest_app.callback()
def ingest() -> None:
    """Consume both topics into the feedback store until SIGTERM/SIGINT."""
    from core.cli_settings import load_settings
    from feedback.ingest import Ingester, serve_metrics
    from feedback.store import FeedbackStore

    settings = load_settings(IngestSettings, command="rlhf ingest")
    _logging(settings.log_level)
    store = FeedbackStore(settings.database.url, echo=settings.database.echo)
    store.migrate()
    serve_metrics(settings.metrics_port)
    ingester = Ingester(settings, store=store)
    _on_shutdown_signal(ingester.stop)
    # Everything built so far (modules, SQLAlchemy's and pydantic's caches) lives for the
    # whole process: keep it out of the collector's generations, so the collections that
    # the per-event objects trigger do not rescan it (~20 % of decode + persist).
    gc.collect()
    gc.freeze()
    logging.getLogger(__name__).info("ingesting %s and %s from %s into %s",
                                     settings.kafka.topics.completions,
                                     settings.kafka.topics.feedback,
                                     settings.kafka.bootstrap_servers, store.engine.url)
    ingester.run()


if __name__ == "__main__":
    app()
