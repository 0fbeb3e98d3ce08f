"""The one mapping from the platform's errors to gRPC status codes.

Every servicer method is wrapped in :func:`grpc_errors`: an :class:`~core.errors.ApiError`
aborts with its ``grpc_code`` (the same type HTTP renders as OpenAI JSON), a pydantic
``ValidationError`` from converting the request aborts with INVALID_ARGUMENT naming the
field, and an error vLLM's request models raise while validating (``VLLMError``) maps as
it does on HTTP. Anything else is a bug and surfaces as grpc's own INTERNAL.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from pydantic import ValidationError
from vllm.exceptions import VLLMError

from core.errors import ApiError, grpc_message
from core.events import describe_validation_error
from serving.handlers.openai import as_api_error

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """Abort the RPC with the status that ``exc`` maps to (raises ``AbortError``)."""
    if isinstance(exc, ValidationError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe_validation_error(exc))
    assert isinstance(exc, ApiError)
    await context.abort(getattr(grpc.StatusCode, exc.grpc_code), grpc_message(exc))


def grpc_errors(method: F) -> F:
    """Decorate a servicer method ``(self, request, context)`` with the error mapping."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (ApiError, ValidationError) as exc:
            await abort_with(context, exc)
        except VLLMError as exc:
            await abort_with(context, as_api_error(exc))

    return wrapper  # type: ignore[return-value]
