"""Request and response schemas of the OpenAI-compatible API: vLLM's own.

The request and response models are ``vllm.entrypoints.openai.*.protocol``'s, so every
field vLLM's OpenAI server accepts is accepted here, validated the same way. This
platform adds two things: requests take OpenAI's ``store`` (false: answer, but do not
log the completion for training), and every answer carries the ``policy_version`` that
produced it (body field and ``X-Policy-Version`` header) next to the ``id`` feedback
refers to. Errors are OpenAI's error JSON with the server's request id.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from vllm.entrypoints.openai.chat_completion import protocol as _chat
from vllm.entrypoints.openai.completion import protocol as _cmpl
from vllm.entrypoints.serve.engine import protocol as _models

_STORE = Field(True, description="OpenAI's field: false serves the completion but does not "
               "log it to rlhf.completions, so it is never trained on or labelled.")
_VERSION = Field(..., description="The policy version whose weights produced this answer.")


# NaN and infinities are refused everywhere: JSON parsers accept them, sampling does not.
_FINITE = ConfigDict(allow_inf_nan=False)


class CompletionRequest(_cmpl.CompletionRequest):
    model_config = _FINITE
    store: bool = _STORE


class ChatCompletionRequest(_chat.ChatCompletionRequest):
    model_config = _FINITE
    store: bool = _STORE


class CompletionResponse(_cmpl.CompletionResponse):
    policy_version: str = _VERSION


class CompletionStreamResponse(_cmpl.CompletionStreamResponse):
    policy_version: str = _VERSION


class ChatCompletionResponse(_chat.ChatCompletionResponse):
    policy_version: str = _VERSION


class ChatCompletionStreamResponse(_chat.ChatCompletionStreamResponse):
    policy_version: str = _VERSION


class ModelCard(_models.ModelCard):
    policy_version: str | None = Field(None, description="The policy version being served.")


class ModelList(_models.ModelList):
    data: list[ModelCard] = Field(default_factory=list)  # type: ignore[assignment]


class ErrorInfo(BaseModel):
    message: str = Field(..., description="What went wrong, naming the field.")
    type: str = Field(..., description="OpenAI's error type, e.g. BadRequestError.")
    param: str | None = Field(None, description="The offending field, when there is one.")
    code: int = Field(..., description="The HTTP status.")
    request_id: str | None = Field(None, description="The server's id of the request.")
    model_config = ConfigDict(extra="allow")


class ErrorResponse(BaseModel):
    """OpenAI's error JSON, the body of every 4xx/5xx answer."""

    error: ErrorInfo


_ERROR_TEXT = {400: "Bad parameters", 401: "Missing or unknown API key",
               403: "The key's role is too low", 404: "No such model, version or route",
               409: "Refused in the current state", 413: "Body or field too large",
               422: "Invalid body", 429: "Too many requests queued",
               503: "Engine loading or swapping, or broker unavailable"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring the error JSON for ``statuses`` (422 included, so
    FastAPI's default HTTPValidationError is not advertised: this API never sends it)."""
    return {status: {"model": ErrorResponse, "description": _ERROR_TEXT[status]}
            for status in (*statuses, 422)}
