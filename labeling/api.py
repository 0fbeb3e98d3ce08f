"""The workbench's HTTP API and pages (``rlhf workbench``).

Labelers (role ``labeler``) take items and submit judgments; leads (role ``admin``)
create and close queues and read progress, agreement and win rates. The caller is always
the API key (``Authorization: Bearer``): the labeler's identity in every table and on
every feedback event is the key's stable id, never something the page sends.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from core.auth import Caller, KeyRing, bearer_token
from core.errors import InvalidRequest, ServiceUnavailable, UnprocessableEntity
from core.events import MAX_COMMENT_CHARS, MAX_TEXT_CHARS
from core.http import install_error_handlers, require_role
from labeling import queues, sources
from labeling.agreement import agreement_report
from labeling.assignment import normalise_ranks, to_canonical
from labeling.settings import LabelingSettings
from labeling.submit import (
    FeedbackSink,
    comparison_event,
    demonstration_event,
    ranking_event,
    rating_events,
)
from labeling.winrate import win_rate

STATIC = Path(__file__).parent / "static"
FLAGS = ("fails_instruction", "hallucination", "harmful", "inappropriate_for_customer",
         "sexual", "violent", "denigrates_protected_class", "harmful_advice",
         "moral_judgement", "other")
"""Per-answer flags, after InstructGPT's labeling interface (Table 3 of the paper)."""

Task = Literal["ranking", "comparison", "rating", "demonstration"]
MIN_ANSWERS = {"ranking": 2, "comparison": 2, "rating": 1, "demonstration": 0}


class Sampling(BaseModel):
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(64, ge=1, le=4096, description="Most tokens per answer.")


class QueueCreate(BaseModel):
    """A new queue. ``source`` decides where prompts and answers come from."""

    name: str = Field(min_length=1, max_length=256, description="Unique queue name.")
    source: Literal["traffic", "upload", "candidate"] = Field(
        description="traffic: recent completions and their choices; upload: `prompts`, "
                    "answered by the serving API; candidate: `candidate` against the live "
                    "policy, side by side.")
    task: Task = Field("ranking", description="What labelers do with each item.")
    k: int = Field(4, ge=1, le=9, description="Answers per item (2–9 for ranking; 2 for "
                                              "comparison and candidate queues).")
    samples_per_prompt: int = Field(1, ge=1, le=16, description="Items per prompt.")
    overlap: int = Field(1, ge=1, le=20, description="Distinct labelers per item.")
    sampling: Sampling = Field(default_factory=Sampling,
                               description="Sampling for generated answers.")
    prompts: list[str] | None = Field(
        None, max_length=10_000, description="Prompts of an upload or candidate queue.")
    traffic_prompts: int = Field(50, ge=1, le=10_000,
                                 description="How many distinct traffic prompts to sample.")
    chat: bool = Field(False, description="upload: use /v1/chat/completions.")
    candidate: str | None = Field(None, max_length=256,
                                  description="candidate: the candidate policy version.")
    live: str | None = Field(None, max_length=256,
                             description="candidate: the version to compare with "
                                         "(default: the live policy).")
    seed: int = Field(0, description="candidate: the sampling seed shared by both.")
    instructions: str | None = Field(None, max_length=MAX_COMMENT_CHARS,
                                     description="Shown to labelers above each item.")

    @model_validator(mode="after")
    def _consistent(self) -> QueueCreate:
        if self.task == "ranking" and self.k < 2:
            raise ValueError("k: a ranking needs at least 2 answers")
        if self.source == "candidate":
            if self.candidate is None:
                raise ValueError("candidate: a candidate queue names the candidate version")
            if self.task not in ("comparison", "ranking"):
                raise ValueError("task: a candidate queue is a comparison (or a ranking)")
            self.k = 2
        if self.task == "comparison":
            self.k = 2
        if self.source in ("upload", "candidate") and not self.prompts:
            raise ValueError(f"prompts: a {self.source} queue needs prompts")
        return self


class Submission(BaseModel):
    """A judgment of one assigned item; slots are 1-based, in the order shown."""

    ranks: list[int] | None = Field(
        None, min_length=2, max_length=9,
        description="ranking: the rank of each shown slot, 1 = best, equal = tie.")
    preferred: Literal["a", "b", "tie", "both_bad"] | None = Field(
        None, description="comparison: the slot preferred (a = first shown), tie, or "
                          "both bad (sent as a tie).")
    scores: list[float] | None = Field(
        None, min_length=1, max_length=9, description="rating: a 1–7 score per slot.")
    response: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS,
                                 description="demonstration: the ideal answer.")
    flags: dict[str, list[str]] = Field(
        default_factory=dict, description="Per shown slot (\"1\", \"2\" …): flags from "
                                          "GET /v1/labeling/flags.")
    note: str | None = Field(None, max_length=MAX_COMMENT_CHARS,
                             description="Free-text note for the lead.")


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _key(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization"), request.headers.get("x-api-key"))


def labeler_id(caller: Caller) -> str:
    """The labeler's identity: the key's stable id ("open" when no keys are configured)."""
    return caller.name or "open"


labeler = require_role("labeler")
admin = require_role("admin")
router = APIRouter(prefix="/v1/labeling", tags=["labeling"])


@router.get("/me")
def me(caller: Caller = Depends(labeler)) -> dict[str, Any]:
    return {"labeler": labeler_id(caller), "role": caller.role}


@router.get("/flags")
def flags(caller: Caller = Depends(labeler)) -> dict[str, Any]:
    return {"flags": list(FLAGS)}


@router.get("/queues")
def list_queues(request: Request, caller: Caller = Depends(labeler)) -> dict[str, Any]:
    found = queues.list_queues(_engine(request))
    if caller.role != "admin":
        found = [q for q in found if q["status"] == "open"]
    return {"queues": found}


@router.post("/queues", status_code=201)
async def create_queue(request: Request, body: QueueCreate,
                       caller: Caller = Depends(admin)) -> dict[str, Any]:
    settings: LabelingSettings = request.app.state.settings
    engine = _engine(request)
    sampling = body.sampling.model_dump()
    live = body.live
    if body.source == "traffic":
        items = sources.traffic_items(engine, prompts=body.traffic_prompts, k=body.k,
                                      min_answers=MIN_ANSWERS[body.task] or 1,
                                      samples_per_prompt=body.samples_per_prompt)
    elif body.source == "upload":
        items = await asyncio.to_thread(
            sources.serving_items, settings.serving_url, settings.serving_key or _key(request),
            settings.serving_model, body.prompts or [], k=body.k,
            samples_per_prompt=body.samples_per_prompt, sampling=sampling, chat=body.chat,
            timeout_s=settings.serving_timeout_s)
    else:
        live, items = await asyncio.to_thread(
            sources.candidate_items, request.app.state.registry, body.candidate or "",
            body.live, body.prompts or [], samples_per_prompt=body.samples_per_prompt,
            sampling=sampling, device=settings.device, seed=body.seed)
    if not items:
        raise UnprocessableEntity(f"source: no items found for a {body.source} queue "
                                  f"(traffic needs completions with ≥ "
                                  f"{MIN_ANSWERS[body.task] or 1} choices)", param="source")
    queue_id = queues.create_queue(engine, {
        "name": body.name, "source": body.source, "task": body.task, "k": body.k,
        "samples_per_prompt": body.samples_per_prompt, "overlap": body.overlap,
        "sampling": sampling, "candidate": body.candidate, "live": live,
        "instructions": body.instructions, "created_by": labeler_id(caller)}, items)
    return {"id": queue_id, "items": len(items)}


@router.post("/queues/{queue_id}/close")
def close_queue(request: Request, queue_id: int,
                caller: Caller = Depends(admin)) -> dict[str, Any]:
    queues.set_status(_engine(request), queue_id, "closed")
    return {"id": queue_id, "status": "closed"}


@router.get("/queues/{queue_id}/next", response_model=None)
def next_item(request: Request, queue_id: int,
              caller: Caller = Depends(labeler)) -> dict[str, Any] | Response:
    """The caller's next item (their held one first); 204 when none is left for them."""
    settings: LabelingSettings = request.app.state.settings
    got = queues.next_assignment(_engine(request), queue_id, labeler_id(caller),
                                 timedelta(minutes=settings.lease_minutes))
    if got is None:
        return Response(status_code=204)
    assignment, item = got
    queue = queues.get_queue(_engine(request), queue_id)
    # Blind: shuffled, and nothing but the text (no policy version, choice or origin).
    shown = [{"slot": s + 1, "text": item.answers[a]["text"]}
             for s, a in enumerate(assignment.display_order)]
    return {"assignment_id": assignment.id, "queue_id": queue_id, "task": queue.task,
            "instructions": queue.instructions, "prompt": item.prompt, "answers": shown}


def _events(task: str, item: Any, event_id: str, order: list[int], body: Submission):
    k = len(order)
    if task == "ranking":
        if body.ranks is None or len(body.ranks) != k:
            raise InvalidRequest(f"ranks: give one rank per answer ({k})", param="ranks")
        if any(r < 1 or r > k for r in body.ranks):
            raise InvalidRequest(f"ranks: each rank is between 1 and {k}", param="ranks")
        return [ranking_event(item, event_id, to_canonical(order, normalise_ranks(body.ranks)))]
    if task == "comparison":
        if body.preferred is None:
            raise InvalidRequest("preferred: choose a, b, tie or both_bad", param="preferred")
        slot = {"a": 0, "b": 1}.get(body.preferred)
        canonical = "tie" if slot is None else "ab"[order[slot]]
        return [comparison_event(item, event_id, canonical)]
    if task == "rating":
        if body.scores is None or len(body.scores) != k or any(
                not 1 <= s <= 7 for s in body.scores):
            raise InvalidRequest(f"scores: give a 1–7 score per answer ({k})", param="scores")
        return rating_events(item, event_id, to_canonical(order, body.scores), body.note)
    if not body.response or not body.response.strip():
        raise InvalidRequest("response: write the ideal answer", param="response")
    return [demonstration_event(item, event_id, body.response)]


def _canonical_flags(order: list[int], flags: dict[str, list[str]]) -> dict[str, list[str]]:
    out = {}
    for slot, names in flags.items():
        if not slot.isdigit() or not 1 <= int(slot) <= len(order):
            raise InvalidRequest(f"flags.{slot}: no such answer slot", param=f"flags.{slot}")
        unknown = sorted(set(names) - set(FLAGS))
        if unknown:
            raise InvalidRequest(f"flags.{slot}: unknown flags {unknown}",
                                 param=f"flags.{slot}")
        if names:
            out[str(order[int(slot) - 1])] = sorted(set(names))
    return out


@router.post("/assignments/{assignment_id}/submit")
async def submit(request: Request, assignment_id: int, body: Submission,
                 caller: Caller = Depends(labeler)) -> dict[str, Any]:
    """Send the judgment down the feedback path, then mark the item done for the caller."""
    engine = _engine(request)
    assignment, item, queue = queues.held_assignment(engine, assignment_id, labeler_id(caller))
    order = list(assignment.display_order)
    events = _events(queue.task, item, assignment.event_id or "", order, body)
    flags = _canonical_flags(order, body.flags)
    sink: FeedbackSink = request.app.state.sink
    await sink.submit(events, caller, _key(request))
    verdict = body.preferred if queue.task == "comparison" else None
    seconds = queues.finish(engine, assignment_id, "done", verdict=verdict, flags=flags,
                            note=body.note)
    return {"assignment_id": assignment_id, "event_id": assignment.event_id,
            "seconds": seconds}


@router.post("/assignments/{assignment_id}/skip")
def skip(request: Request, assignment_id: int,
         caller: Caller = Depends(labeler)) -> dict[str, Any]:
    """Give the item back; the caller will not be shown it again."""
    engine = _engine(request)
    queues.held_assignment(engine, assignment_id, labeler_id(caller))
    queues.finish(engine, assignment_id, "skipped")
    return {"assignment_id": assignment_id, "status": "skipped"}


@router.get("/queues/{queue_id}/progress")
def progress(request: Request, queue_id: int,
             caller: Caller = Depends(admin)) -> dict[str, Any]:
    return queues.progress(_engine(request), queue_id)


@router.get("/queues/{queue_id}/agreement")
def agreement(request: Request, queue_id: int,
              caller: Caller = Depends(admin)) -> dict[str, Any]:
    """Agreement of the queue's stored judgments (the JSON export of the lead's page)."""
    settings: LabelingSettings = request.app.state.settings
    queue = queues.get_queue(_engine(request), queue_id)
    report = agreement_report(queues.item_rankings(_engine(request), queue_id),
                              flag_margin=settings.flag_margin,
                              flag_min_items=settings.flag_min_items)
    return {"queue_id": queue_id, "queue": queue.name, **report.as_dict()}


@router.get("/queues/{queue_id}/winrate")
def winrate(request: Request, queue_id: int,
            caller: Caller = Depends(admin)) -> dict[str, Any]:
    """A candidate queue's human win rate with its 95% Wilson interval."""
    queue = queues.get_queue(_engine(request), queue_id)
    if queue.source != "candidate" or queue.candidate is None:
        raise InvalidRequest(f"queue_id: queue {queue_id} is not a candidate queue",
                             param="queue_id")
    r = win_rate(queues.candidate_outcomes(_engine(request), queue.candidate, queue.live))
    return {"queue_id": queue_id, "candidate": queue.candidate, "live": queue.live,
            "wins": r.wins, "losses": r.losses, "ties": r.ties, "n": r.n, "rate": r.rate,
            "lower": r.lower, "upper": r.upper, "confidence": r.confidence}


def create_app(settings: LabelingSettings, engine: Engine, sink: FeedbackSink,
               registry: Any = None) -> FastAPI:
    """The workbench app on ``engine`` (the migrated feedback store), sending to ``sink``."""
    app = FastAPI(title="RLHF labeling workbench", version="1")
    app.state.settings, app.state.engine, app.state.sink = settings, engine, sink
    app.state.registry = registry
    app.state.keyring = KeyRing.from_settings(settings.auth)
    install_error_handlers(app)

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        from core.errors import error_body

        err = ServiceUnavailable(f"feedback store unavailable: {str(exc)[:200]}")
        return JSONResponse(error_body(err), status_code=err.status)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def label_page() -> FileResponse:
        return FileResponse(STATIC / "label.html")

    @app.get("/lead", include_in_schema=False)
    def lead_page() -> FileResponse:
        return FileResponse(STATIC / "lead.html")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
