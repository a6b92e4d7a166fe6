"""Admission: inference requests beyond what the server can hold are refused at once, before their body is read.

The batcher's queue bound alone refuses too late under a burst: a refused request
would first have its body read and its image decoded, and that work, for every
excess request, starves the requests being served. Here the count covers every
inference request from arrival to answer (receiving, decoding, queued, running).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import problem_response
from service.errors import QueueFull
from service.metrics import Metrics


def is_inference(path: str) -> bool:
    return path == "/detect" or (path.startswith("/v2/models/") and path.endswith("/infer"))


class Admission:
    """The inference requests admitted and how many may be: one count per app, which HTTP (the middleware below) and
    gRPC (service/grpc/) share, so that both protocols are held to one limit."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self.admitted = 0  # the event loop is one thread: a plain counter is exact

    def refusal(self) -> str | None:
        """Why one more request is refused (and it is counted as rejected); None when it may come in."""
        if self.admitted < self.limit:
            return None
        self.metrics.rejected.labels(reason="queue_full").inc()
        return f"{self.admitted} requests are already being served or waiting (the limit is {self.limit}); retry shortly"


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not is_inference(scope["path"]):
            await self.app(scope, receive, send)
            return
        detail = self.admission.refusal()
        if detail is not None:
            response = problem_response(
                QueueFull.status, QueueFull.title, detail, QueueFull.type, {**QueueFull.headers, "Connection": "close"}
            )
            await response(scope, receive, send)
            return
        self.admission.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.admitted -= 1
