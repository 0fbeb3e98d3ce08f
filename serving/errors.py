"""Errors the handlers raise; each transport maps them to its own status codes.

HTTP answers with OpenAI's error JSON (``{"error": {"message", "type", "param", "code"}}``),
gRPC with the matching status code. The handlers never know which transport called them.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base error: ``status`` is the HTTP status, ``param`` names the offending field."""

    status = 500
    type = "InternalServerError"
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ServingError):
    status = 400
    type = "BadRequestError"
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(ServingError):
    status = 404
    type = "NotFoundError"
    grpc_code = "NOT_FOUND"


class Unauthorized(ServingError):
    status = 401
    type = "AuthenticationError"
    grpc_code = "UNAUTHENTICATED"


class Forbidden(ServingError):
    status = 403
    type = "PermissionDeniedError"
    grpc_code = "PERMISSION_DENIED"


class Overloaded(ServingError):
    status = 429
    type = "RateLimitError"
    grpc_code = "RESOURCE_EXHAUSTED"


class EngineUnavailable(ServingError):
    status = 503
    type = "ServiceUnavailableError"
    grpc_code = "UNAVAILABLE"


def error_body(err: ServingError) -> dict:
    """OpenAI's error JSON shape."""
    return {"error": {"message": err.message, "type": err.type,
                      "param": err.param, "code": err.status}}
