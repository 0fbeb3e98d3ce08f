"""Protobuf ↔ the handlers' pydantic types. No logic beyond the mapping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import types
from collections.abc import AsyncGenerator, Generator
from typing import Any

import orjson

from core.errors import InvalidRequest
from protos.rlhf.v1 import feedback_pb2 as fpb
from protos.rlhf.v1 import inference_pb2 as pb
from serving import protocol as p
from serving.handlers.openai import stream_error

_SAMPLING_FIELDS = ("n", "max_tokens", "temperature", "top_p", "top_k", "seed",
                    "presence_penalty", "frequency_penalty", "min_tokens")


def sampling_fields(s: pb.SamplingParameters) -> dict[str, Any]:
    fields: dict[str, Any] = {f: getattr(s, f) for f in _SAMPLING_FIELDS if s.HasField(f)}
    if s.stop:
        fields["stop"] = list(s.stop)
    fields["ignore_eos"] = s.ignore_eos
    if s.logit_bias:
        fields["logit_bias"] = {str(k): v for k, v in s.logit_bias.items()}
    if s.HasField("response_format"):
        fmt: dict[str, Any] = {"type": s.response_format.type}
        if s.response_format.json_schema:
            try:
                fmt["json_schema"] = json.loads(s.response_format.json_schema)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"response_format.json_schema: not JSON ({exc})",
                                     param="response_format") from exc
        fields["response_format"] = fmt
    return fields


def to_request(msg: pb.GenerateRequest,
               stream: bool) -> p.CompletionRequest | p.ChatCompletionRequest:
    """A GenerateRequest becomes the same request type the HTTP endpoint validates."""
    common: dict[str, Any] = {"model": msg.model or None, "user": msg.user or None,
                              "stream": stream, **sampling_fields(msg.sampling)}
    if stream:
        common["stream_options"] = {"include_usage": True}
    logprobs = msg.sampling.logprobs if msg.sampling.HasField("logprobs") else None
    kind = msg.WhichOneof("input")
    if kind == "messages":
        return p.ChatCompletionRequest(
            messages=[{"role": m.role, "content": m.content} for m in msg.messages.messages],
            logprobs=logprobs is not None, top_logprobs=logprobs, **common)
    prompt: str | list[int] | list[str] = list(msg.token_ids.ids) if kind == "token_ids" \
        else list(msg.prompts.items) if kind == "prompts" else msg.prompt
    return p.CompletionRequest(prompt=prompt, logprobs=logprobs, **common)


def _logprobs(lp: dict[str, Any] | None) -> list[pb.TokenLogprobs]:
    """Completion logprobs (token lists) or chat logprobs (``content`` entries)."""
    if not lp:
        return []
    if "content" in lp:
        return [pb.TokenLogprobs(
            sampled=pb.TokenLogprob(token=t["token"], logprob=_finite(t["logprob"])),
            top=[pb.TokenLogprob(token=a["token"], logprob=_finite(a["logprob"]))
                 for a in t.get("top_logprobs") or ()])
            for t in lp["content"] or ()]
    return [pb.TokenLogprobs(
        sampled=pb.TokenLogprob(token=tok, logprob=_finite(logprob)),
        top=[pb.TokenLogprob(token=t, logprob=_finite(v)) for t, v in (top or {}).items()])
        for tok, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                     strict=True)]


def _finite(value: float | None) -> float:
    return -9999.0 if value is None or value == float("-inf") else value


def to_choice(c: dict[str, Any]) -> pb.Choice:
    """A choice of any of the four OpenAI shapes (completion/chat, final/delta)."""
    if "text" in c:
        text = c["text"]
    else:
        text = (c.get("message") or c.get("delta") or {}).get("content") or ""
    return pb.Choice(index=c["index"], text=text, finish_reason=c.get("finish_reason") or "",
                     logprobs=_logprobs(c.get("logprobs")))


def to_usage(u: dict[str, Any] | None) -> pb.Usage | None:
    if not u:
        return None
    return pb.Usage(prompt_tokens=u["prompt_tokens"], completion_tokens=u.get(
        "completion_tokens") or 0, total_tokens=u["total_tokens"])


def to_response(r: dict[str, Any]) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        request_id=r["id"], model=r["model"], policy_version=r["policy_version"],
        created=r["created"], choices=[to_choice(c) for c in r["choices"]],
        usage=to_usage(r.get("usage")))


def to_stream_response(r: dict[str, Any]) -> pb.GenerateStreamResponse:
    return pb.GenerateStreamResponse(
        request_id=r["id"], model=r["model"], policy_version=r["policy_version"],
        choices=[to_choice(c) for c in r["choices"]], usage=to_usage(r.get("usage")))


async def coalesce(lines: AsyncGenerator[str, None], flush_s: float = 0.0
                   ) -> AsyncGenerator[pb.GenerateStreamResponse, None]:
    """One message for everything the stream has ready: the SSE chunks that the stream can
    give without waiting (and, with ``flush_s``, that came within that long after the
    first) become one ``GenerateStreamResponse`` with one choice per index, texts and
    logprobs concatenated. An idle stream still gets every token at once.

    The stream is pulled in the caller's task, without a task or queue of its own (a task
    switch per chunk was a measurable part of gRPC's cost per token). While the caller
    writes a message, nothing is pulled: vLLM merges the engine outputs that arrive
    meanwhile into one (its per-request output collector), so a slow client gets fewer,
    larger messages and nothing is buffered beyond the request's own output. Closing this
    generator (the RPC cancelled) unwinds the stream at once, aborting the engine request.
    """
    pull = _Pull(lines)
    try:
        while True:
            try:
                line = await pull.next()
            except StopAsyncIteration:
                return
            chunks = [_chunk(line)] if line.startswith("data: {") else []
            if flush_s > 0:
                await asyncio.sleep(flush_s)
            ended, failed = False, None
            while True:
                try:
                    line = pull.now()
                except StopAsyncIteration:
                    ended = True
                    break
                except Exception as exc:  # after what came before it
                    failed = exc
                    break
                if line is _PENDING:
                    break
                if line.startswith("data: {"):
                    chunks.append(_chunk(line))
            if chunks:
                yield merge_stream_chunks(chunks)
            if failed is not None:
                raise failed
            if ended:
                return
    finally:
        await pull.close()


def _chunk(line: str) -> dict[str, Any]:
    """An SSE ``data:`` line's JSON (orjson; the standard parser for what orjson refuses,
    such as NaN)."""
    try:
        return orjson.loads(line[6:])
    except orjson.JSONDecodeError:
        return json.loads(line[6:])


_PENDING: Any = object()


class _Pull:
    """The items of an async generator, taken in the caller's task: :meth:`now` says
    whether the next one is there without waiting, :meth:`next` waits for it.

    ``now()`` runs the generator's next step until it would suspend; that step is then
    kept and resumed where it stopped, synchronously by a later ``now()`` once what it
    waits for is done, or by ``next()``, which hands it to the event loop as ``await``
    would. A task of its own per stream would do the same at the price of a task switch
    per item."""

    __slots__ = ("agen", "step", "waiting")

    def __init__(self, agen: AsyncGenerator[Any, None]):
        self.agen = agen
        self.step: Any = None  # the generator's suspended __anext__(), if any
        self.waiting: Any = None  # what that step waits for (a future, or None)

    def now(self) -> Any:
        """The next item, or ``_PENDING``; raises ``StopAsyncIteration`` at the end."""
        step = self.step
        if step is None:
            step = self.agen.__anext__()
        elif self.waiting is None or not self.waiting.done():
            return _PENDING  # a bare yield (sleep(0)) is left to the event loop
        self.step = self.waiting = None
        try:
            waiting = step.send(None)
        except StopIteration as done:
            return done.value
        self.step, self.waiting = step, waiting
        return _PENDING

    async def next(self) -> Any:
        """The next item, waiting for it; raises ``StopAsyncIteration`` at the end."""
        item = self.now()
        if item is _PENDING:
            step, waiting = self.step, self.waiting
            self.step = self.waiting = None
            item = await _resume(step, waiting)
        return item

    async def close(self) -> None:
        """Cancel a step left suspended, so that the generator unwinds (its ``finally``
        blocks run) now, as a cancelled task pulling it would."""
        step, self.step, self.waiting = self.step, None, None
        if step is None:
            return
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            try:
                waiting = step.throw(asyncio.CancelledError())
            except StopIteration:
                return
            await _resume(step, waiting)


@types.coroutine
def _resume(step: Any, waiting: Any) -> Generator[Any, Any, Any]:
    """Finish a coroutine step that already suspended on ``waiting``, as ``await`` would
    have: the event loop gets what it waits for, and what the loop sends or throws in
    (a cancellation) goes on to the step."""
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            step.close()
            raise
        except BaseException as exc:
            try:
                waiting = step.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting = step.send(sent)
            except StopIteration as done:
                return done.value


def merge_stream_chunks(chunks: list[dict[str, Any]]) -> pb.GenerateStreamResponse:
    """Several stream chunks of one request as one message, one choice per index."""
    for chunk in chunks:
        if "error" in chunk:
            raise stream_error(chunk["error"])
    first = chunks[0]
    choices: dict[int, pb.Choice] = {}
    usage = None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            piece = to_choice(c)
            merged = choices.get(piece.index)
            if merged is None:
                choices[piece.index] = piece
                continue
            merged.text += piece.text
            merged.logprobs.extend(piece.logprobs)
            if piece.finish_reason:
                merged.finish_reason = piece.finish_reason
    return pb.GenerateStreamResponse(
        request_id=first["id"], model=first["model"], policy_version=first["policy_version"],
        choices=[choices[i] for i in sorted(choices)], usage=to_usage(usage))


def to_models(models: p.ModelList) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[
        pb.Model(id=m.id, root=m.root or "", max_model_len=m.max_model_len or 0,
                 policy_version=m.policy_version or "") for m in models.data])


# -- feedback ---------------------------------------------------------------------------
def _set_fields(msg: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Proto3 scalars: an empty string / unset optional means "not given"."""
    out: dict[str, Any] = {}
    for name in names:
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            value = list(getattr(msg, name))
            if value:
                out[name] = value
        elif field.has_presence:
            if msg.HasField(name):
                out[name] = getattr(msg, name)
        elif getattr(msg, name) != field.default_value:
            out[name] = getattr(msg, name)
    return out


_FEEDBACK_FIELDS = {
    "ranking": ("request_id", "choices", "prompt", "responses", "ranks"),
    "comparison": ("request_id", "choice_a", "choice_b", "prompt", "text_a", "text_b",
                   "preferred"),
    "rating": ("request_id", "choice", "prompt", "response", "score", "comment"),
    "demonstration": ("prompt", "response", "request_id"),
}


def feedback_body(item: fpb.FeedbackItem) -> dict[str, Any]:
    """A FeedbackItem becomes the JSON body POST /v1/feedback accepts."""
    kind = item.WhichOneof("kind")
    if kind is None:
        return {}
    inner = getattr(item, kind)
    body = {"type": kind, **_set_fields(inner, _FEEDBACK_FIELDS[kind])}
    if kind == "rating":
        body["score"] = inner.score
    if kind == "demonstration" and inner.messages:
        body["messages"] = [{"role": m.role, "content": m.content} for m in inner.messages]
    if item.event_id:
        body["event_id"] = item.event_id
    if item.submitted_by:
        body["submitted_by"] = item.submitted_by
    return body
