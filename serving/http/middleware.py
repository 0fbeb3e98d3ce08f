"""A pure-ASGI middleware: request ids, and request counts/latency by status.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass straight through
and the hot path stays cheap.
"""

from __future__ import annotations

import time
import uuid

from serving.metrics import ServingMetrics

REQUEST_ID_HEADER = b"x-request-id"


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class RequestIdMiddleware:
    """Honour an incoming ``X-Request-Id`` (or make one) and echo it on the response."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER)
        request_id = incoming.decode("latin-1") if incoming else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), 500
        path = scope["path"]

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0] != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if path.startswith("/v1/"):
                self.metrics.requests.labels(endpoint=path, status=str(status)).inc()
                self.metrics.e2e_latency.labels(endpoint=path).observe(
                    time.perf_counter() - started)
