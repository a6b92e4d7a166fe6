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


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.admitted = 0  # the event loop is one thread: a plain counter is exact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not is_inference(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.admitted >= self.limit:
            self.metrics.rejected.labels(reason="queue_full").inc()
            detail = f"{self.admitted} requests are already being served or waiting (the limit is {self.limit}); retry shortly"
            response = problem_response(
                QueueFull.status, QueueFull.title, detail, QueueFull.type, {**QueueFull.headers, "Connection": "close"}
            )
            await response(scope, receive, send)
            return
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admitted -= 1
