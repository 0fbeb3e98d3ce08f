"""The FastAPI application: routers, error mapping, health/readiness and metrics."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.errors import error_body
from core.http import install_error_handlers
from serving.handlers.openai import as_api_error
from serving.http.admin import router as admin_router
from serving.http.feedback import router as feedback_router
from serving.http.middleware import BodyLimitMiddleware, RequestIdMiddleware
from serving.http.openai import router as openai_router
from serving.runtime import Runtime

log = logging.getLogger(__name__)

# OpenAI answers 400 for bad parameters on these (as vLLM does); our own endpoints 422.
OPENAI_PATHS = {"/v1/completions", "/v1/chat/completions"}


def build_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start_loading()
        grpc_server = None
        if runtime.settings.grpc.enabled:
            from serving.grpc.server import GrpcServer

            grpc_server = GrpcServer(runtime, runtime.keyring)
            await grpc_server.start()
        follower = None
        if runtime.settings.publish_events and runtime.settings.follow_policy_events:
            from serving.swap import PolicyFollower

            follower = PolicyFollower(runtime, runtime.settings.kafka)
            follow_task = asyncio.create_task(follower.run())
        yield
        if follower is not None:
            follower.stop()
            follow_task.cancel()
        if grpc_server is not None:
            await grpc_server.stop()
        await runtime.stop()

    app = FastAPI(title="rlhf serving", version="1", lifespan=lifespan,
                  root_path=runtime.settings.http.root_path)
    app.state.runtime = runtime
    app.state.keyring = runtime.keyring
    app.include_router(openai_router)
    app.include_router(feedback_router)
    app.include_router(admin_router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    install_error_handlers(app, openai_paths=OPENAI_PATHS)
    from vllm.exceptions import VLLMError

    app.add_exception_handler(VLLMError, vllm_error)
    # Added last is outermost: ids and metrics wrap the size limit, so a 413 has both.
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.http.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, metrics=runtime.metrics)
    return app


async def vllm_error(request: Request, exc: Exception) -> JSONResponse:
    """An error vLLM's request models raise while FastAPI parses the body (e.g. "either
    prompt or prompt_embeds must be provided"): a 4xx naming the field, not a 500."""
    err = as_api_error(exc)
    request_id = request.scope.get("state", {}).get("request_id")
    return JSONResponse(error_body(err, request_id=request_id), status_code=err.status)


async def health(request: Request) -> JSONResponse:
    """Liveness: the engine process is alive (loading counts as alive)."""
    runtime: Runtime = request.app.state.runtime
    if await runtime.healthy():
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "engine dead", "error": repr(runtime.load_error)}, 503)


async def ready(request: Request) -> JSONResponse:
    """Readiness: the model is loaded and no policy swap is in progress."""
    runtime: Runtime = request.app.state.runtime
    body = {"ready": runtime.policy.ready, "loaded": runtime.policy.loaded,
            "swapping": runtime.policy.swapping, "policy_version": runtime.policy.version,
            "model": runtime.model_name}
    return JSONResponse(body, status_code=200 if runtime.policy.ready else 503)


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
