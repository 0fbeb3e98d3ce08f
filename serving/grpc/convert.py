"""Protobuf ↔ the handlers' pydantic types. No logic beyond the mapping."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

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
    """One message for everything the stream has ready: the SSE chunks that arrived while
    the last message was being written (and, with ``flush_s``, within that long after the
    first) become one ``GenerateStreamResponse`` with one choice per index, texts and
    logprobs concatenated. Under load that is one write per engine step per choice, not
    one per token; an idle stream still gets every token at once.

    The stream is pulled by its own task; ending early (the RPC cancelled) cancels it,
    which aborts the engine request.
    """
    # Bounded: while the client is slow (flow control blocks the write), the pump stops
    # pulling from the engine instead of buffering the whole answer.
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
    end = object()

    async def pump() -> None:
        try:
            async for line in lines:
                if line.startswith("data: {"):
                    await queue.put(line)
        except Exception as exc:  # re-raised in the RPC's task
            await queue.put(exc)
            return
        await queue.put(end)

    task = asyncio.create_task(pump())
    try:
        done = False
        while not done:
            items = [await queue.get()]
            if flush_s > 0:
                await asyncio.sleep(flush_s)
            while not queue.empty():
                items.append(queue.get_nowait())
            chunks = []
            for item in items:
                if item is end:
                    done = True
                elif isinstance(item, Exception):
                    raise item
                else:
                    chunks.append(json.loads(item[6:]))
            if chunks:
                yield merge_stream_chunks(chunks)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
