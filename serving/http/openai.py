"""Thin HTTP routes of the OpenAI-compatible API: validate, call the handler, answer.

The request models are vLLM's (``serving.protocol``); the handler runs vLLM's serving
classes and returns a body or an SSE stream stamped with the policy version.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from core.auth import Caller
from core.http import require_role
from serving import protocol as p
from serving.handlers.openai import OpenAIHandler, RequestContext
from serving.http.middleware import EVAL_HEADER, is_eval
from serving.http.responses import answer

router = APIRouter(responses=p.error_responses(400, 401, 403, 404, 413, 429, 503))


def handler_of(request: Request) -> OpenAIHandler:
    return request.app.state.runtime.generation_handler()


def context_of(request: Request, caller: Caller) -> RequestContext:
    state = request.scope["state"]
    return RequestContext(request_id=state["request_id"], user=caller.name,
                          client_request_id=state.get("client_request_id"),
                          purpose="eval" if is_eval(request.headers.get(EVAL_HEADER))
                          else "train")


@router.get("/v1/models", response_model=p.ModelList)
async def list_models(request: Request, caller: Caller = Depends(require_role("user"))):
    return await handler_of(request).models()


@router.get("/v1/models/{model_id:path}", response_model=p.ModelCard)
async def retrieve_model(model_id: str, request: Request,
                         caller: Caller = Depends(require_role("user"))):
    return await handler_of(request).model(model_id)


@router.post("/v1/completions", response_model=p.CompletionResponse)
async def create_completion(req: p.CompletionRequest, request: Request,
                            caller: Caller = Depends(require_role("user"))):
    handler, ctx = handler_of(request), context_of(request, caller)
    return await answer(handler.complete(req, ctx), request)


@router.post("/v1/chat/completions", response_model=p.ChatCompletionResponse)
async def create_chat_completion(req: p.ChatCompletionRequest, request: Request,
                                 caller: Caller = Depends(require_role("user"))):
    handler, ctx = handler_of(request), context_of(request, caller)
    return await answer(handler.chat(req, ctx), request)
