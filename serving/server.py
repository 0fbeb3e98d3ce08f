"""``rlhf serve``: one process, HTTP and gRPC, over one vLLM engine."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from serving.http.app import build_app
from serving.runtime import Runtime
from serving.settings import ServeSettings

log = logging.getLogger(__name__)


def resolve_model(settings: ServeSettings) -> tuple[str, str]:
    """The checkpoint to serve and its version label: ``--model``, else the registry's live
    policy."""
    if settings.model:
        return settings.model, settings.policy_version or "base"
    from core.registry import Registry

    registry = Registry(settings.registry.root)
    live = registry.live_policy()
    if live is None:
        raise SystemExit(f"No model: pass --model PATH (or RLHF_MODEL), or make a policy live "
                         f"in the registry at {settings.registry.root}.")
    problems = registry.verify(live)
    if problems:
        raise SystemExit(f"The live policy {live} failed verification: {problems}")
    return str(registry.path(live)), live


def serve(settings: ServeSettings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_path, version = resolve_model(settings)
    runtime = Runtime(settings, model_path, version)
    app = build_app(runtime)
    config = uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=30,
                            access_log=False)
    try:  # vLLM's own server runs on uvloop too; gRPC aio supports it
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run  # type: ignore[assignment]
    run_loop(uvicorn.Server(config).serve())
