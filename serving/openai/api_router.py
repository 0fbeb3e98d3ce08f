"""Thin HTTP routes of the OpenAI-compatible API: validate, call the handler, map to JSON/SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from feedback.auth import Caller, require_role
from serving.handlers.generation import GenerationHandler, RequestContext
from serving.openai import protocol as p

router = APIRouter()
POLICY_HEADER = "X-Policy-Version"


def handler_of(request: Request) -> GenerationHandler:
    return request.app.state.runtime.generation


def context_of(request: Request, caller: Caller) -> RequestContext:
    return RequestContext(request_id=request.scope["state"]["request_id"], user=caller.name)


@router.get("/v1/models", response_model=p.ModelList)
async def list_models(request: Request, caller: Caller = Depends(require_role("user"))):
    return handler_of(request).models()


@router.post("/v1/completions", response_model=p.CompletionResponse)
async def create_completion(req: p.CompletionRequest, request: Request,
                            caller: Caller = Depends(require_role("user"))):
    handler, ctx = handler_of(request), context_of(request, caller)
    if req.stream:
        return await _sse(handler.complete_stream(req, ctx))
    return await _json(handler.complete(req, ctx), request)


@router.post("/v1/chat/completions", response_model=p.ChatCompletionResponse)
async def create_chat_completion(req: p.ChatCompletionRequest, request: Request,
                                 caller: Caller = Depends(require_role("user"))):
    handler, ctx = handler_of(request), context_of(request, caller)
    if req.stream:
        return await _sse(handler.chat_stream(req, ctx))
    return await _json(handler.chat(req, ctx), request)


async def _json(work: Awaitable[p.PolicyStamped], request: Request) -> JSONResponse:
    """Run the handler, but abort it (and its engine request) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        return JSONResponse({}, status_code=499)
    watcher.cancel()
    body = task.result()
    return JSONResponse(body.model_dump(), headers={POLICY_HEADER: body.policy_version})


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _sse(chunks: AsyncIterator[BaseModel]) -> StreamingResponse:
    """Pull the first chunk before answering, so errors are real HTTP errors and the
    version header is the one that generated the stream."""
    first: Any = await anext(chunks)

    async def events():
        try:
            yield f"data: {first.model_dump_json(exclude_none=True)}\n\n"
            async for chunk in chunks:
                yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await chunks.aclose()  # on disconnect this aborts the engine request

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={POLICY_HEADER: first.policy_version})
