"""GET /v1/models/{name}: the manifest and the runtime serving it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import DetectorDep
from service.api.problems import problem_responses
from service.schemas import ModelDescription

router = APIRouter()


# 422 too: FastAPI would otherwise document its own validation error body, which the problem handler replaces.
@router.get("/v1/models/{name}", responses=problem_responses(404, 422, 503))
async def model(
    name: Annotated[str, Path(description="the model's name, or 'default'", examples=["default"])], detector: DetectorDep
) -> ModelDescription:
    """The model's highest loaded version (DetectorDep reads the name from the path)."""
    return detector.describe()
