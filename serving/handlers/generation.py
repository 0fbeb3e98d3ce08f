"""Completions and chat completions: one handler for HTTP and gRPC.

The handler takes the pydantic request (``CompletionRequest`` / ``ChatCompletionRequest``)
and returns the pydantic response, or an async iterator of stream chunks. Every answer
carries the request id and the policy version that produced it, and every finished
generation is handed to the completion log (Kafka) without waiting for the broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from vllm import SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput

from serving.engine import Engine
from serving.errors import EngineUnavailable, InvalidRequest, ModelNotFound, Overloaded
from serving.handlers import logprobs as lp
from serving.handlers.policy import PolicyState
from serving.metrics import ServingMetrics
from serving.openai import protocol as p


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

    # -- completions ---------------------------------------------------------------
    async def complete(self, req: p.CompletionRequest, ctx: RequestContext) -> p.CompletionResponse:
        prompt_ids, prompt_text = self._tokenize_prompt(req.prompt)
        params = self._sampling_params(req, prompt_ids)
        async with self.policy.admit() as version:
            gen = _Generation(ctx.request_id, version, prompt_text, len(prompt_ids))
            final = await self._run_final(prompt_ids, params, ctx)
        choices = []
        for out in sorted(final.outputs, key=lambda o: o.index):
            gen.add(out, delta=False)
            choices.append(p.CompletionChoice(
                index=out.index, text=out.text, finish_reason=out.finish_reason,
                logprobs=lp.completion_logprobs(out.logprobs, out.token_ids)
                if req.logprobs is not None else None))
        self._log(gen, req, ctx, endpoint="completions")
        return p.CompletionResponse(id=ctx.request_id, model=self.model_name,
                                    policy_version=version, choices=choices, usage=gen.usage())

    async def complete_stream(self, req: p.CompletionRequest,
                              ctx: RequestContext) -> AsyncIterator[p.CompletionStreamResponse]:
        prompt_ids, prompt_text = self._tokenize_prompt(req.prompt)
        params = self._sampling_params(req, prompt_ids)
        async with self.policy.admit() as version:
            gen = _Generation(ctx.request_id, version, prompt_text, len(prompt_ids))
            stamp = {"id": ctx.request_id, "model": self.model_name, "policy_version": version}
            async for output in self._run_stream(prompt_ids, params, ctx):
                choices = []
                for out in output.outputs:
                    gen.add(out, delta=True)
                    choices.append(p.CompletionChoice(
                        index=out.index, text=out.text, finish_reason=out.finish_reason,
                        logprobs=lp.completion_logprobs(out.logprobs, out.token_ids)
                        if req.logprobs is not None else None))
                yield p.CompletionStreamResponse(**stamp, choices=choices)
            if req.include_usage:
                yield p.CompletionStreamResponse(**stamp, choices=[], usage=gen.usage())
        self._log(gen, req, ctx, endpoint="completions")

    # -- chat completions ----------------------------------------------------------
    async def chat(self, req: p.ChatCompletionRequest,
                   ctx: RequestContext) -> p.ChatCompletionResponse:
        prompt_ids, prompt_text = self._render_chat(req)
        params = self._sampling_params(req, prompt_ids)
        async with self.policy.admit() as version:
            gen = _Generation(ctx.request_id, version, prompt_text, len(prompt_ids))
            final = await self._run_final(prompt_ids, params, ctx)
        choices = []
        for out in sorted(final.outputs, key=lambda o: o.index):
            gen.add(out, delta=False)
            choices.append(p.ChatChoice(
                index=out.index, message=p.AssistantMessage(content=out.text),
                finish_reason=out.finish_reason,
                logprobs=lp.chat_logprobs(out.logprobs, out.token_ids, req.top_logprobs or 0)
                if req.logprobs else None))
        self._log(gen, req, ctx, endpoint="chat.completions")
        return p.ChatCompletionResponse(id=ctx.request_id, model=self.model_name,
                                        policy_version=version, choices=choices,
                                        usage=gen.usage())

    async def chat_stream(self, req: p.ChatCompletionRequest,
                          ctx: RequestContext) -> AsyncIterator[p.ChatCompletionStreamResponse]:
        prompt_ids, prompt_text = self._render_chat(req)
        params = self._sampling_params(req, prompt_ids)
        async with self.policy.admit() as version:
            gen = _Generation(ctx.request_id, version, prompt_text, len(prompt_ids))
            stamp = {"id": ctx.request_id, "model": self.model_name, "policy_version": version}
            # OpenAI opens every choice with a role-only delta.
            yield p.ChatCompletionStreamResponse(**stamp, choices=[
                p.ChatStreamChoice(index=i, delta=p.DeltaMessage(role="assistant", content=""))
                for i in range(req.n)])
            async for output in self._run_stream(prompt_ids, params, ctx):
                choices = []
                for out in output.outputs:
                    gen.add(out, delta=True)
                    choices.append(p.ChatStreamChoice(
                        index=out.index, delta=p.DeltaMessage(content=out.text),
                        finish_reason=out.finish_reason,
                        logprobs=lp.chat_logprobs(out.logprobs, out.token_ids,
                                                  req.top_logprobs or 0)
                        if req.logprobs else None))
                yield p.ChatCompletionStreamResponse(**stamp, choices=choices)
            if req.include_usage:
                yield p.ChatCompletionStreamResponse(**stamp, choices=[], usage=gen.usage())
        self._log(gen, req, ctx, endpoint="chat.completions")

    # -- shared steps --------------------------------------------------------------
    def models(self) -> p.ModelList:
        return p.ModelList(data=[p.ModelCard(
            id=self.model_name, root=self.policy.path, max_model_len=self.engine.max_model_len,
            policy_version=self.policy.version)])

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ModelNotFound(f"The model `{model}` does not exist; this server serves "
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
        from feedback.events import CompletionChoice, CompletionRecord

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


def _is_engine_dead(exc: Exception) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, EngineDeadError)
