"""Liveness, readiness (one answer for these routes and the v2 protocol's) and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import State

from service.api.deps import MetricsDep
from service.api.problems import problem_responses
from service.errors import NotReady
from service.repository import ModelRepository

router = APIRouter()


def liveness_problem(state: State) -> str | None:
    """Why the process is not alive, or None: loading the model failed, and only a restart helps. /health and v2 share it."""
    failure = getattr(state, "load_error", None)
    return f"loading the model failed: {failure}" if failure is not None else None


def readiness_problem(state: State) -> str | None:
    """Why the server should get no traffic now, or None: the models asked for at start loading or warming up, draining,
    or an engine that keeps failing."""
    repository: ModelRepository = state.repository
    if not repository.started:
        return liveness_problem(state) or "the model is loading"
    return None if repository.ready else repository.unready_reason()


@router.get("/health/live", responses=problem_responses(503))
async def live(request: Request) -> dict[str, str]:
    """200 while the process can answer, unless loading the model failed (a restart is needed)."""
    if problem := liveness_problem(request.app.state):
        raise NotReady(problem)
    return {"status": "alive"}


@router.get("/health/ready", responses=problem_responses(503))
async def ready(request: Request) -> dict[str, str]:
    """200 once the model is loaded and warmed up; 503 before that, while draining, and while the engine keeps failing."""
    if problem := readiness_problem(request.app.state):
        raise NotReady(problem)
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
