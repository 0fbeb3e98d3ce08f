"""Request and response schemas of the OpenAI-compatible API.

Shaped like vLLM's ``entrypoints/openai/*/protocol.py`` so that any OpenAI client works;
two additions carry this platform's contract: every response has the ``id`` that
feedback refers to (the request id) and the ``policy_version`` that produced it.
Requests convert themselves to vLLM ``SamplingParams`` with the priority
user value → server default → OpenAI default.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from core.errors import InvalidRequest

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOKENS_CAP = 2**31 - 1  # beyond any context length; keeps values inside vLLM's int32s


class OpenAIBaseModel(BaseModel):
    # Unknown fields are refused so that a misspelt parameter is an error, not a no-op;
    # NaN and infinities are refused everywhere (JSON parsers accept them, vLLM does not).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = Field(False, description="Send a last chunk with token usage.")


class SamplingRequest(OpenAIBaseModel):
    """Sampling fields shared by completions and chat completions."""

    model: str | None = Field(None, max_length=256,
                              description="Served model id (see GET /v1/models).")
    n: int = Field(1, ge=1, le=64, description="How many choices to generate for the prompt "
                   "(the server may allow fewer: RLHF_LIMITS__MAX_N).")
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CAP,
                                   description="Most tokens to generate per choice.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=-1, le=MAX_TOKENS_CAP,
                              description="Sample from the k likeliest (-1/0: all; a k at or "
                                          "above the vocabulary size means all).")
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_CAP,
                            description="Tokens to generate before EOS may stop; at most "
                                        "max_tokens.")
    stop: str | list[str] | None = Field(None, description="Up to 8 strings that end a choice.")
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX,
                             description="Seed for reproducible sampling (a signed 64-bit int).")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Presence penalty.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Frequency penalty.")
    ignore_eos: bool = Field(False, description="Keep generating after EOS (benchmarks).")
    user: str | None = Field(None, max_length=256,
                             description="End-user id, recorded with the completion.")
    stream: bool = Field(False, description="Stream deltas as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")
    store: bool = Field(True, description="OpenAI's field: false serves the completion but "
                                          "does not log it (it never becomes training data).")
    metadata: dict[str, str] | None = Field(
        None, max_length=16, description="OpenAI's field: up to 16 string pairs; accepted "
                                          "and logged with the completion's sampling fields.")

    _DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0,
                 "presence_penalty": 0.0, "frequency_penalty": 0.0}

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 8 or any(not s for s in stops)):
            raise ValueError("stop takes at most 8 non-empty strings")
        return stops

    def _logprobs(self) -> int | None:
        return None

    def to_sampling_params(self, default_max_tokens: int,
                           defaults: dict[str, Any] | None = None) -> SamplingParams:
        """Priority: the user's value, then the server's default, then OpenAI's default."""
        defaults = defaults or {}
        values = {name: getattr(self, name) if getattr(self, name) is not None
                  else defaults.get(name, default) for name, default in self._DEFAULTS.items()}
        max_tokens = self.max_tokens or defaults.get("max_tokens", default_max_tokens)
        if self.min_tokens > max_tokens:
            raise InvalidRequest(f"min_tokens ({self.min_tokens}) must not exceed max_tokens "
                                 f"({max_tokens}{'' if self.max_tokens else ', the default'}).",
                                 param="min_tokens")
        try:
            return SamplingParams(
                n=self.n,
                max_tokens=max_tokens,
                min_tokens=self.min_tokens,
                stop=self.stop,
                seed=self.seed,
                ignore_eos=self.ignore_eos,
                logprobs=self._logprobs(),
                output_kind=RequestOutputKind.DELTA if self.stream
                else RequestOutputKind.FINAL_ONLY,
                **values,
            )
        except ValueError as exc:  # vLLM's own checks: still the client's mistake
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from exc

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``."""

    prompt: str | list[int] = Field(..., description="Prompt text, or its token ids.")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Return this many top log-probabilities per token.")
    echo: Literal[False] = Field(False, description="Echoing the prompt is not supported.")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: str | list[int]) -> str | list[int]:
        if len(v) == 0:
            raise ValueError("prompt must not be empty")
        return v

    def _logprobs(self) -> int | None:
        return self.logprobs


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "user", "assistant"] = Field(..., description="Author of the message.")
    content: str = Field(..., description="Text of the message.")
    name: str | None = Field(None, max_length=256, description="Optional author name.")


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(..., min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS_CAP, description="Newer name of max_tokens; wins when both "
                                                    "are set.")
    logprobs: bool = Field(False, description="Return log-probabilities of the output tokens.")
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="Alternatives per token when logprobs is true.")

    def _logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def to_sampling_params(self, default_max_tokens: int,
                           defaults: dict[str, Any] | None = None) -> SamplingParams:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return super().to_sampling_params(default_max_tokens, defaults)


class UsageInfo(BaseModel):
    prompt_tokens: int = Field(0, description="Tokens in the prompt.")
    completion_tokens: int = Field(0, description="Tokens generated over all choices.")
    total_tokens: int = Field(0, description="prompt_tokens + completion_tokens.")


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None


class PolicyStamped(BaseModel):
    id: str = Field(..., description="The request id; feedback refers to it.")
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    policy_version: str = Field(..., description="The policy version that produced this.")


class CompletionResponse(PolicyStamped):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionStreamResponse(PolicyStamped):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogProbs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(PolicyStamped):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None


class ChatCompletionStreamResponse(PolicyStamped):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "rlhf"
    root: str | None = Field(None, description="Where the weights came from.")
    max_model_len: int | None = None
    policy_version: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


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
