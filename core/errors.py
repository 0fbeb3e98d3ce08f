"""One error model for every process and transport.

Handlers raise an :class:`ApiError` subclass and never know who called them. Each
carries the HTTP status, OpenAI's error ``type``, the gRPC status code name and the
offending field (``param``). :func:`error_body` is the one place that renders OpenAI's
error JSON; every HTTP app installs :func:`core.http.install_error_handlers` and the gRPC
servicers map the same type once (:func:`serving.grpc.errors.grpc_errors`).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base error: ``status`` is the HTTP status, ``param`` names the offending field.

    ``extra`` fields are rendered inside ``error`` next to the standard four, for errors
    that carry structured detail (the gate report of a refused promotion).
    """

    status = 500
    type = "InternalServerError"
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, param: str | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra = extra


class InvalidRequest(ApiError):
    """400: a request parameter is malformed or out of range."""

    status = 400
    type = "BadRequestError"
    grpc_code = "INVALID_ARGUMENT"


class Unauthorized(ApiError):
    """401: no API key, or an unknown one."""

    status = 401
    type = "AuthenticationError"
    grpc_code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    """403: the key's role is too low for this call."""

    status = 403
    type = "PermissionDeniedError"
    grpc_code = "PERMISSION_DENIED"


class NotFound(ApiError):
    """404: no such model, version or route."""

    status = 404
    type = "NotFoundError"
    grpc_code = "NOT_FOUND"


class Conflict(ApiError):
    """409: the request is valid but the current state refuses it."""

    status = 409
    type = "ConflictError"
    grpc_code = "FAILED_PRECONDITION"


class PayloadTooLarge(ApiError):
    """413: a body, prompt or field exceeds a configured size."""

    status = 413
    type = "PayloadTooLargeError"
    grpc_code = "INVALID_ARGUMENT"


class UnprocessableEntity(ApiError):
    """422: the platform's own (non-OpenAI) endpoints refuse an invalid body."""

    status = 422
    type = "UnprocessableEntityError"
    grpc_code = "INVALID_ARGUMENT"


class Overloaded(ApiError):
    """429: too many requests queued."""

    status = 429
    type = "RateLimitError"
    grpc_code = "RESOURCE_EXHAUSTED"


class ServiceUnavailable(ApiError):
    """503: a dependency is down or not ready; retrying later can succeed."""

    status = 503
    type = "ServiceUnavailableError"
    grpc_code = "UNAVAILABLE"


class EngineUnavailable(ServiceUnavailable):
    """503: the inference engine is loading, swapping or dead."""


class BrokerUnavailable(ServiceUnavailable):
    """503: the Kafka broker could not be reached or did not acknowledge in time."""


def error_body(err: ApiError, *, status: int | None = None,
               request_id: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code", …}}``."""
    error: dict[str, Any] = {"message": err.message, "type": err.type, "param": err.param,
                             "code": status or err.status, **err.extra}
    if request_id:
        error["request_id"] = request_id
    return {"error": error}


def grpc_message(err: ApiError) -> str:
    """The gRPC status detail: the message, prefixed with the field when it is not named."""
    if err.param and err.param not in err.message:
        return f"{err.param}: {err.message}"
    return err.message
