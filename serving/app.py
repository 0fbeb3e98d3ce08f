"""The FastAPI application: routers, error mapping, health/readiness and metrics."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from feedback.auth import AuthError
from serving.admin_api import router as admin_router
from serving.errors import (
    Forbidden,
    InvalidRequest,
    ServingError,
    Unauthorized,
    error_body,
)
from serving.feedback_api import router as feedback_router
from serving.http_middleware import RequestIdMiddleware
from serving.openai.api_router import router as openai_router
from serving.runtime import Runtime

log = logging.getLogger(__name__)


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
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(RequestIdMiddleware, metrics=runtime.metrics)
    return app


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


async def serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    return JSONResponse(error_body(exc), status_code=exc.status)


async def auth_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AuthError)
    err = Unauthorized(exc.message) if exc.status == 401 else Forbidden(exc.message)
    return JSONResponse(error_body(err), status_code=err.status)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """OpenAI endpoints answer 400 for bad parameters (as OpenAI and vLLM do); the
    platform's own endpoints answer 422. Either way the message names the field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = ".".join(str(x) for x in first["loc"] if x != "body") or "body"
    message = f"{field}: {first['msg']}"
    status = 400 if request.url.path in OPENAI_PATHS else 422
    err = InvalidRequest(message, param=field)
    body = error_body(err)
    body["error"]["code"] = status
    if status == 422:
        body["detail"] = jsonable_encoder(exc.errors())
    return JSONResponse(body, status_code=status)


OPENAI_PATHS = {"/v1/completions", "/v1/chat/completions"}

