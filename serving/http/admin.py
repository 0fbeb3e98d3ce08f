"""Admin routes of one serving replica: which policy it serves, and a direct swap.

Fleet-wide promotion goes through the deploy controller and ``rlhf.policy`` events;
this route swaps only the replica it is sent to (operations, tests).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from core.auth import Caller
from core.errors import Conflict
from core.http import require_role
from serving.protocol import error_responses
from serving.swap import REPLICA, SwapFailed, apply

router = APIRouter(tags=["admin"], responses=error_responses(401, 403, 409, 413))


class PolicySwap(BaseModel):
    version: str = Field(..., min_length=1, description="Registry policy version to serve.")


def _status(request: Request) -> dict:
    runtime = request.app.state.runtime
    return {"replica": REPLICA, "policy_version": runtime.policy.version,
            "path": runtime.policy.path, "swapping": runtime.policy.swapping}


@router.get("/v1/admin/policy")
async def policy_status(request: Request, caller: Caller = Depends(require_role("admin"))):
    return _status(request)


@router.post("/v1/admin/policy")
async def swap(body: PolicySwap, request: Request,
               caller: Caller = Depends(require_role("admin"))):
    try:
        await apply(request.app.state.runtime, body.version)
    except SwapFailed as exc:
        raise Conflict(str(exc), param="version", replica=_status(request)) from exc
    return _status(request)
