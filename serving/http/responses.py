"""How handler results become HTTP responses: JSON that is abandoned when the client
leaves, and server-sent events that abort their engine request when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serving.handlers.openai import Answer

POLICY_HEADER = "X-Policy-Version"


async def answer(work: Awaitable[Answer], request: Request) -> Response:
    """Run the handler, but abort it (and its engine requests) if the client disconnects
    first; then answer JSON, or stream the handler's SSE lines. Validation errors are
    raised before a stream starts, so they are real HTTP errors."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        return JSONResponse({}, status_code=499)
    watcher.cancel()
    result = task.result()
    headers = {POLICY_HEADER: result.policy_version}
    if result.stream is not None:
        return ClosingStreamingResponse(result.stream, media_type="text/event-stream",
                                        headers=headers)
    return JSONResponse(result.body, headers=headers)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
