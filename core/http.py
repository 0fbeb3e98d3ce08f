"""The HTTP glue every FastAPI app of the platform shares: role checks and error JSON.

The serving API, the deploy controller's admin API and the reward server all call
:func:`install_error_handlers`, so every HTTP error of every process has OpenAI's error
shape (:func:`core.errors.error_body`), and all take the caller from
:func:`require_role`. FastAPI is imported inside the functions so that ``core`` stays
importable by processes that have no HTTP API (the ingester).
"""

import logging
import math
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from core.auth import Caller, KeyRing, bearer_token
from core.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    UnprocessableEntity,
    error_body,
)

log = logging.getLogger(__name__)


def require_role(minimum: str) -> Callable[..., Awaitable[Caller]]:
    """FastAPI dependency: the caller, if its key has at least ``minimum`` role.

    The app keeps its :class:`~core.auth.KeyRing` in ``app.state.keyring``.
    """
    from fastapi import Request

    async def dependency(request: Request) -> Caller:
        # async: cheap (digest compare), and a sync dependency costs every request a hop
        # through FastAPI's thread pool.
        ring: KeyRing = request.app.state.keyring
        return ring.authorize(bearer_token(request.headers.get("authorization"),
                                           request.headers.get("x-api-key")), minimum)

    return dependency


def _request_id(request: Any) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _json_safe(value: Any) -> Any:
    """Drop what JSON cannot encode (NaN, bytes, exceptions) from validation details."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def validation_error(errors: list[dict[str, Any]], *, status: int) -> ApiError:
    """The first validation problem as an :class:`ApiError` naming the field."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = ".".join(str(x) for x in first["loc"] if x != "body") or "body"
    cls = InvalidRequest if status == 400 else UnprocessableEntity
    # `detail` keeps FastAPI's list for clients that read it, without the raw inputs.
    detail = [{k: _json_safe(v) for k, v in e.items() if k not in ("input", "ctx", "url")}
              for e in errors]
    extra = {"detail": detail} if status == 422 else {}
    return cls(f"{field}: {first['msg']}", param=field, **extra)


def install_error_handlers(app: Any, *, openai_paths: Collection[str] = ()) -> None:
    """Render every error of ``app`` as OpenAI's error JSON.

    Bad parameters on ``openai_paths`` answer 400 (as OpenAI and vLLM do); the platform's
    own endpoints answer 422. Unknown routes and methods keep their 404/405 status.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def render(request: Any, err: ApiError) -> JSONResponse:
        return JSONResponse(error_body(err, request_id=_request_id(request)),
                            status_code=err.status)

    async def api_error(request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return render(request, exc)

    async def invalid(request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        status = 400 if request.url.path in openai_paths else 422
        return render(request, validation_error(list(exc.errors()), status=status))

    async def http_error(request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            err: ApiError = NotFound(f"No route {request.method} {request.url.path}.")
        else:
            err = ApiError(str(exc.detail))
            err.status, err.type = exc.status_code, "HTTPError"
        response = render(request, err)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def unexpected(request: Any, exc: Exception) -> JSONResponse:
        log.exception("Unhandled error on %s %s", request.method, request.url.path)
        return render(request, ApiError("Internal server error."))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
