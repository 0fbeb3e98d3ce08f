"""The controller's admin HTTP API: status, promote, roll back (admin API keys only).

``GET /v1/deploy/status``, ``POST /v1/deploy/promote``, ``POST /v1/deploy/rollback``.
Errors use OpenAI's error JSON; a gate failure is a 409 whose error lists the failed
gates and carries the full report. The app's lifespan runs the ``rlhf.policy`` event loop
when asked to, so one process serves the API and reacts to events; it then also watches
the fleet (replica heartbeats), so promotions are staged rollouts (docs/rollout.md), and
serves the rollout metrics at ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field

from core.auth import KeyRing
from core.http import install_error_handlers, require_role
from deploy.controller import DeployController, DeployStatus, PromoteResult, RollbackResult

admin = [Depends(require_role("admin"))]


class PromoteRequest(BaseModel):
    version: str = Field(min_length=1, description="Policy version to make live.")
    force: bool = Field(False, description="Skip the gates (an operator's override).")
    reason: str = Field("", max_length=1000, description="Recorded in the live history.")


class RollbackRequest(BaseModel):
    version: str | None = Field(
        None, description="Version to return to; default: the previous good live version.")
    reason: str = Field("", max_length=1000, description="Recorded in the live history.")


async def status(request: Request) -> DeployStatus:
    """Live version, every policy with its gate status, the history, replica versions."""
    controller: DeployController = request.app.state.controller
    return controller.status(controller.replica_rows())


async def metrics(request: Request) -> Response:
    """Prometheus text: rollout state, per-replica swap times, online signals."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = request.app.state.controller.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def promote(body: PromoteRequest, request: Request) -> PromoteResult:
    """Run the gates (unless forced) and make the version live; 409 when a gate fails."""
    return await request.app.state.controller.promote(body.version, body.force, body.reason)


async def rollback(body: RollbackRequest, request: Request) -> RollbackResult:
    """Make an earlier version live again (default: the previous good one)."""
    return await request.app.state.controller.rollback(body.version, body.reason)


def create_app(controller: DeployController, keyring: KeyRing,
               consume_events: bool = False) -> FastAPI:
    """The admin app; with ``consume_events`` its lifespan also runs the event loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from deploy.loop import consume

        stop = asyncio.Event()
        tasks = []
        if consume_events:
            tasks = [asyncio.create_task(consume(controller, stop)), controller.start_fleet(),
                     asyncio.create_task(controller.watch_regressions(stop))]
        yield
        stop.set()
        if controller.watcher is not None:
            controller.watcher.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        controller.close()

    app = FastAPI(title="rlhf deploy controller", version="1", lifespan=lifespan)
    app.state.controller, app.state.keyring = controller, keyring
    app.add_api_route("/v1/deploy/status", status, methods=["GET"], dependencies=admin,
                      response_model=DeployStatus)
    app.add_api_route("/v1/deploy/promote", promote, methods=["POST"], dependencies=admin,
                      response_model=PromoteResult)
    app.add_api_route("/v1/deploy/rollback", rollback, methods=["POST"], dependencies=admin,
                      response_model=RollbackResult)
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])
    install_error_handlers(app)
    return app
