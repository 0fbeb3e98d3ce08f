"""Thin HTTP routes of the OpenAI-compatible API: validate, call the handler, map to JSON/SSE."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from core.auth import Caller
from core.http import require_role
from serving import protocol as p
from serving.handlers.generation import GenerationHandler, RequestContext
from serving.http.middleware import EVAL_HEADER, is_eval
from serving.http.responses import json_or_abort as _json
from serving.http.responses import sse as _sse

router = APIRouter(responses=p.error_responses(400, 401, 403, 404, 413, 429, 503))


def handler_of(request: Request) -> GenerationHandler:
    return request.app.state.runtime.generation_handler()


def context_of(request: Request, caller: Caller) -> RequestContext:
    state = request.scope["state"]
    return RequestContext(request_id=state["request_id"], user=caller.name,
                          client_request_id=state.get("client_request_id"),
                          purpose="eval" if is_eval(request.headers.get(EVAL_HEADER))
                          else "train")


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
