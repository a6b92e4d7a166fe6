"""Dependencies handed to the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from service.detector import Detector
from service.metrics import Metrics
from service.repository import ModelRepository


async def get_detector(request: Request) -> AsyncIterator[Detector]:
    """The model version a request names (the path's name and version, or /detect's ?model=&version=; neither: the
    default model's highest loaded version), leased until the request is answered, so that an unload drains it first."""
    repository: ModelRepository = request.app.state.repository
    name = request.path_params.get("name") or request.query_params.get("model")
    version = request.path_params.get("version") or request.query_params.get("version")
    with repository.resolve(name, version).lease() as detector:
        yield detector


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


DetectorDep = Annotated[Detector, Depends(get_detector)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
