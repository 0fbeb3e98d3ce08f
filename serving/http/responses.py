"""How handler results become HTTP responses: JSON that is abandoned when the client
leaves, and server-sent events that abort their engine request when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from serving import protocol as p

POLICY_HEADER = "X-Policy-Version"


async def json_or_abort(work: Awaitable[p.PolicyStamped], request: Request) -> JSONResponse:
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


async def sse(chunks: AsyncIterator[BaseModel]) -> StreamingResponse:
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

    return ClosingStreamingResponse(events(), media_type="text/event-stream",
                                    headers={POLICY_HEADER: first.policy_version})


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator however the response ends, client gone included, so the
    engine request behind it is aborted at once rather than at garbage collection
    (Starlette leaves an interrupted body iterator suspended)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
