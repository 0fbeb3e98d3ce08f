"""Thin HTTP routes for feedback: ``POST /v1/feedback`` and ``POST /v1/feedback/batch``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from core.auth import Caller
from core.events import FeedbackEvent
from core.http import require_role
from serving.handlers.feedback import FeedbackAck, FeedbackBatchAck, FeedbackHandler
from serving.protocol import error_responses

router = APIRouter(tags=["feedback"], responses=error_responses(400, 401, 403, 413, 503))


class FeedbackBatchCreate(BaseModel):
    items: list[FeedbackEvent] = Field(..., min_length=1, max_length=1000,
                                       description="Up to 1000 pieces of feedback.")


def handler_of(request: Request) -> FeedbackHandler:
    return request.app.state.runtime.feedback


@router.post("/v1/feedback", status_code=202, response_model=FeedbackAck)
async def submit_feedback(request: Request, item: FeedbackEvent,
                          caller: Caller = Depends(require_role("user"))):
    ack = await handler_of(request).submit(item, caller)
    return JSONResponse(ack.model_dump(), status_code=202)


@router.post("/v1/feedback/batch", status_code=202, response_model=FeedbackBatchAck)
async def submit_feedback_batch(request: Request, batch: FeedbackBatchCreate,
                                caller: Caller = Depends(require_role("user"))):
    acks = await handler_of(request).submit_batch(batch.items, caller)
    return JSONResponse(acks.model_dump(), status_code=202)
