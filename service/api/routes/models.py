"""GET /v1/models/{name}: the manifest and the runtime serving it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import DetectorDep
from service.api.problems import problem_responses
from service.errors import ModelNotFound
from service.schemas import ModelDescription

router = APIRouter()


# 422 too: FastAPI would otherwise document its own validation error body, which the problem handler replaces.
@router.get("/v1/models/{name}", responses=problem_responses(404, 422, 503))
async def model(
    name: Annotated[str, Path(description="the model's name, or 'default'", examples=["default"])], detector: DetectorDep
) -> ModelDescription:
    if name not in ("default", detector.manifest.name):
        raise ModelNotFound(f"no model {name!r}; this server serves {detector.manifest.name!r} (also reachable as 'default')")
    return detector.describe()
