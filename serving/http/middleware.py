"""Pure-ASGI middlewares: request ids, request metrics, and the request body-size limit.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass straight through
and the hot path stays cheap.

Ids: every request gets a server-generated id (``scope["state"]["request_id"]``); it is
the completion id that feedback refers to, so no caller can choose or collide with it.
An incoming ``X-Request-Id`` is the caller's correlation id: kept apart
(``scope["state"]["client_request_id"]``), echoed back in ``X-Request-Id`` and recorded on
the completion event, never used as a key.
"""

from __future__ import annotations

import time
import uuid

from starlette.responses import JSONResponse

from core.errors import PayloadTooLarge, error_body
from serving.metrics import ServingMetrics

REQUEST_ID_HEADER = b"x-request-id"
MAX_CLIENT_ID_CHARS = 128
UNMATCHED = "unmatched"  # the one metrics label of every /v1/ path no route serves


EVAL_HEADER = "x-rlhf-eval"
"""A request header (gRPC: metadata); ``1``/``true``/``yes`` marks evaluation traffic,
logged with ``purpose="eval"`` so that training never uses it."""


def is_eval(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def client_request_id(raw: bytes | str | None) -> str | None:
    """The caller's correlation id if it is usable (printable ASCII, at most 128 chars)."""
    if not raw:
        return None
    value = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if len(value) > MAX_CLIENT_ID_CHARS or not value.isascii() or not value.isprintable():
        return None
    return value


def _endpoint(scope) -> str | None:
    """The metrics label: the route's template, "unmatched" for unknown /v1/ paths, and
    None (not counted) for everything else — so no client can grow the label set."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template is not None and template.startswith("/v1/"):
        return template
    if template is None and scope["path"].startswith("/v1/"):
        return UNMATCHED
    return None


class RequestIdMiddleware:
    """Give every request a server id, keep the client's as a correlation id, echo it, and
    count requests and latency by route template and status."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = new_request_id()
        client_id = client_request_id(dict(scope["headers"]).get(REQUEST_ID_HEADER))
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = request_id, client_id
        echoed = (client_id or request_id).encode("latin-1")
        started, status = time.perf_counter(), 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0] != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, echoed))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            endpoint = _endpoint(scope)
            if endpoint is not None:
                self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
                self.metrics.e2e_latency.labels(endpoint=endpoint).observe(
                    time.perf_counter() - started)


class _BodyTooLarge(Exception):
    """Raised from ``receive`` to stop the app reading a body past the limit."""


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 (OpenAI error JSON, ``param: "body"``).

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    body without one (chunked) is counted as it streams and refused as soon as it passes
    the limit, so the app never buffers, parses or validates more than ``max_bytes``.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen, exceeded, started = 0, False, False

        async def limited_receive():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:
                return  # whatever the app answers to the aborted read, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        err = PayloadTooLarge(f"The request body exceeds {self.max_bytes} bytes "
                              f"(RLHF_HTTP__MAX_BODY_BYTES).", param="body")
        request_id = scope.get("state", {}).get("request_id")
        response = JSONResponse(error_body(err, request_id=request_id), status_code=err.status,
                                headers={"Connection": "close"})
        await response(scope, receive, send)
