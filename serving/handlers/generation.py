"""Completions and chat completions: one handler for HTTP and gRPC.

The handler takes the pydantic request (``CompletionRequest`` / ``ChatCompletionRequest``)
and returns the pydantic response, or an async iterator of stream chunks. Every answer
carries the request id and the policy version that produced it, and every finished
generation is handed to the completion log (Kafka) without waiting for the broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vllm import SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput

from core.errors import EngineUnavailable, InvalidRequest, NotFound, Overloaded
from serving import protocol as p
from serving.engine import Engine
from serving.handlers import logprobs as lp
from serving.handlers.policy import PolicyState
from serving.metrics import ServingMetrics


class CompletionSink(Protocol):
    """Where finished generations go (the Kafka completion log); must never block."""

    def publish_nowait(self, event: Any) -> None: ...


@dataclass
class RequestContext:
    request_id: str
    user: str | None = None  # identity from the API key, when keys are configured
    arrival: float = field(default_factory=time.perf_counter)


@dataclass
class _Generation:
    """What one request produced, accumulated over deltas (for the log and usage)."""

    request_id: str
    version: str
    prompt: str
    prompt_tokens: int
    texts: dict[int, str] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)

    def add(self, out: CompletionOutput, delta: bool) -> None:
        i = out.index
        self.texts[i] = (self.texts.get(i, "") + out.text) if delta else out.text
        n = len(out.token_ids)
        self.tokens[i] = (self.tokens.get(i, 0) + n) if delta else n
        self.finish[i] = out.finish_reason

    def usage(self) -> p.UsageInfo:
        done = sum(self.tokens.values())
        return p.UsageInfo(prompt_tokens=self.prompt_tokens, completion_tokens=done,
                           total_tokens=self.prompt_tokens + done)


class GenerationHandler:
    def __init__(self, engine: Engine, tokenizer: Any, model_name: str, policy: PolicyState,
                 metrics: ServingMetrics, sink: CompletionSink | None = None,
                 default_max_tokens: int = 16, max_waiting: int = 1024):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.policy = policy
        self.metrics = metrics
        self.sink = sink
        self.default_max_tokens = default_max_tokens
        self.max_waiting = max_waiting

    # -- the four entry points: each says only how its choices are built -------------
    async def complete(self, req: p.CompletionRequest, ctx: RequestContext) -> p.CompletionResponse:
        return await self._final(req, ctx, lambda: self._tokenize_prompt(req.prompt),
                                 _completion_shape(req))

    def complete_stream(self, req: p.CompletionRequest, ctx: RequestContext
                        ) -> AsyncGenerator[p.CompletionStreamResponse, None]:
        return self._stream(req, ctx, lambda: self._tokenize_prompt(req.prompt),
                            _completion_shape(req))

    async def chat(self, req: p.ChatCompletionRequest,
                   ctx: RequestContext) -> p.ChatCompletionResponse:
        return await self._final(req, ctx, lambda: self._render_chat(req), _chat_shape(req))

    def chat_stream(self, req: p.ChatCompletionRequest, ctx: RequestContext
                    ) -> AsyncGenerator[p.ChatCompletionStreamResponse, None]:
        return self._stream(req, ctx, lambda: self._render_chat(req), _chat_shape(req))

    # -- one path for final answers, one for streams --------------------------------
    async def _final(self, req: p.SamplingRequest, ctx: RequestContext,
                     prepare: Callable[[], tuple[list[int], str]], shape: _Shape) -> Any:
        prompt_ids, prompt_text = prepare()
        params = self._sampling_params(req, prompt_ids)
        async with self.policy.admit() as version:
            gen = _Generation(ctx.request_id, version, prompt_text, len(prompt_ids))
            final = await self._run_final(prompt_ids, params, ctx)
        choices = []
        for out in sorted(final.outputs, key=lambda o: o.index):
            gen.add(out, delta=False)
            choices.append(shape.choice(out))
        self._log(gen, req, ctx, endpoint=shape.endpoint)
        return shape.response(id=ctx.request_id, model=self.model_name,
                              policy_version=version, choices=choices, usage=gen.usage())

    async def _stream(self, req: p.SamplingRequest, ctx: RequestContext,
                      prepare: Callable[[], tuple[list[int], str]], shape: _Shape
                      ) -> AsyncGenerator[Any, None]:
        prompt_ids, prompt_text = prepare()
        params = self._sampling_params(req, prompt_ids)
        async with self.policy.admit() as version:
            gen = _Generation(ctx.request_id, version, prompt_text, len(prompt_ids))
            stamp = {"id": ctx.request_id, "model": self.model_name, "policy_version": version}
            if shape.opening is not None:
                yield shape.chunk(**stamp, choices=shape.opening())
            async for output in self._run_stream(prompt_ids, params, ctx):
                choices = []
                for out in output.outputs:
                    gen.add(out, delta=True)
                    choices.append(shape.delta(out))
                yield shape.chunk(**stamp, choices=choices)
            if req.include_usage:
                yield shape.chunk(**stamp, choices=[], usage=gen.usage())
        self._log(gen, req, ctx, endpoint=shape.endpoint)

    # -- shared steps --------------------------------------------------------------
    def models(self) -> p.ModelList:
        return p.ModelList(data=[p.ModelCard(
            id=self.model_name, root=self.policy.path, max_model_len=self.engine.max_model_len,
            policy_version=self.policy.version)])

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise NotFound(f"The model `{model}` does not exist; this server serves "
                                f"`{self.model_name}`.", param="model")

    def _tokenize_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False), prompt
        vocab = len(self.tokenizer)
        if any(t < 0 or t >= vocab for t in prompt):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
        return list(prompt), self.tokenizer.decode(prompt)

    def _render_chat(self, req: p.ChatCompletionRequest) -> tuple[list[int], str]:
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False), text

    def _sampling_params(self, req: p.SamplingRequest, prompt_ids: list[int]) -> SamplingParams:
        """Validate against this server (model, context length, load), then convert."""
        self._check_model(req.model)
        if not self.policy.loaded:
            raise EngineUnavailable("The model is still loading.")
        params = req.to_sampling_params(self.default_max_tokens)
        limit = self.engine.max_model_len
        if len(prompt_ids) >= limit:
            raise InvalidRequest(f"The prompt has {len(prompt_ids)} tokens; this model's "
                                 f"maximum context length is {limit} tokens.", param="prompt")
        max_tokens = params.max_tokens or 0
        if len(prompt_ids) + max_tokens > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, "
                f"{max_tokens} in the completion).", param="max_tokens")
        if self.engine.stats.waiting >= self.max_waiting:
            raise Overloaded(f"{self.engine.stats.waiting} requests are waiting; retry later.")
        return params

    async def _run_final(self, prompt_ids: list[int], params: SamplingParams,
                         ctx: RequestContext) -> RequestOutput:
        final = None
        async for output in self._run_stream(prompt_ids, params, ctx):
            final = output
        assert final is not None
        return final

    async def _run_stream(self, prompt_ids: list[int], params: SamplingParams,
                          ctx: RequestContext) -> AsyncIterator[RequestOutput]:
        """Drive one engine request; abort it if the caller goes away; record metrics."""
        engine_id = f"{ctx.request_id}-{uuid.uuid4().hex[:8]}"
        finished, last = False, None
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        try:
            async for output in self.engine.generate(prompt_ids, params, engine_id):
                now = time.perf_counter()
                if last is None:
                    self.metrics.ttft.observe(now - ctx.arrival)
                else:
                    self.metrics.itl.observe(now - last)
                last = now
                if params.output_kind.name == "DELTA" or output.finished:
                    self.metrics.generation_tokens.inc(
                        sum(len(o.token_ids) for o in output.outputs))
                finished = output.finished
                yield output
        except (GeneratorExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if _is_engine_dead(exc):
                raise EngineUnavailable(f"The engine is not running: {exc}") from exc
            raise
        finally:
            if not finished:
                self.metrics.aborted.inc()
                await self.engine.abort(engine_id)

    def _log(self, gen: _Generation, req: p.SamplingRequest, ctx: RequestContext,
             endpoint: str) -> None:
        """Hand the finished generation to the completion log; never blocks."""
        if self.sink is None:
            return
        from core.events import CompletionChoice, CompletionRecord

        messages = getattr(req, "messages", None)
        self.sink.publish_nowait(CompletionRecord(
            request_id=gen.request_id, policy_version=gen.version, model=self.model_name,
            endpoint=endpoint, prompt=gen.prompt,
            messages=[m.model_dump(exclude_none=True) for m in messages] if messages else None,
            choices=[CompletionChoice(index=i, text=gen.texts[i], finish_reason=gen.finish.get(i),
                                      completion_tokens=gen.tokens.get(i, 0))
                     for i in sorted(gen.texts)],
            sampling_params=req.model_dump(exclude={"prompt", "messages", "stream",
                                                    "stream_options", "user", "model"},
                                           exclude_none=True),
            prompt_tokens=gen.prompt_tokens, completion_tokens=sum(gen.tokens.values()),
            user=ctx.user or req.user))


@dataclass(frozen=True)
class _Shape:
    """How one endpoint builds its answers: the only thing completions and chat differ in."""

    endpoint: str                                  # as logged in the completion record
    response: type                                 # the final answer's model
    chunk: type                                    # a stream chunk's model
    choice: Callable[[CompletionOutput], Any]      # a final choice from the engine's output
    delta: Callable[[CompletionOutput], Any]       # a streamed choice from a delta
    opening: Callable[[], list[Any]] | None = None  # choices of a first chunk, if any


def _completion_shape(req: p.CompletionRequest) -> _Shape:
    def choice(out: CompletionOutput) -> p.CompletionChoice:
        return p.CompletionChoice(
            index=out.index, text=out.text, finish_reason=out.finish_reason,
            logprobs=lp.completion_logprobs(out.logprobs, out.token_ids)
            if req.logprobs is not None else None)

    return _Shape("completions", p.CompletionResponse, p.CompletionStreamResponse,
                  choice=choice, delta=choice)


def _chat_shape(req: p.ChatCompletionRequest) -> _Shape:
    def logprobs(out: CompletionOutput) -> Any:
        return lp.chat_logprobs(out.logprobs, out.token_ids, req.top_logprobs or 0) \
            if req.logprobs else None

    def choice(out: CompletionOutput) -> p.ChatChoice:
        return p.ChatChoice(index=out.index, message=p.AssistantMessage(content=out.text),
                            finish_reason=out.finish_reason, logprobs=logprobs(out))

    def delta(out: CompletionOutput) -> p.ChatStreamChoice:
        return p.ChatStreamChoice(index=out.index, delta=p.DeltaMessage(content=out.text),
                                  finish_reason=out.finish_reason, logprobs=logprobs(out))

    def opening() -> list[Any]:  # OpenAI opens every choice with a role-only delta
        return [p.ChatStreamChoice(index=i, delta=p.DeltaMessage(role="assistant", content=""))
                for i in range(req.n)]

    return _Shape("chat.completions", p.ChatCompletionResponse, p.ChatCompletionStreamResponse,
                  choice=choice, delta=delta, opening=opening)


def _is_engine_dead(exc: Exception) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, EngineDeadError)
