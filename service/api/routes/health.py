"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MetricsDep
from service.api.problems import problem_responses
from service.errors import NotReady

router = APIRouter()


@router.get("/health/live", responses=problem_responses(503))
async def live(request: Request) -> dict[str, str]:
    """200 while the process can answer, unless loading the model failed (a restart is needed)."""
    failure = getattr(request.app.state, "load_error", None)
    if failure is not None:
        raise NotReady(f"loading the model failed: {failure}")
    return {"status": "alive"}


@router.get("/health/ready", responses=problem_responses(503))
async def ready(request: Request) -> dict[str, str]:
    """200 once the model is loaded and warmed up; 503 before that, while draining, and while the engine keeps failing."""
    detector = getattr(request.app.state, "detector", None)
    if detector is None:
        raise NotReady("the model is loading")
    if not detector.ready:
        raise NotReady(detector.unready_reason())
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
