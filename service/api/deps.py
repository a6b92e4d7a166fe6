"""Dependencies handed to the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.detector import Detector
from service.errors import NotReady
from service.metrics import Metrics


# async: a plain def would be run on the thread pool, a hop per request for nothing.
async def get_detector(request: Request) -> Detector:
    detector: Detector | None = getattr(request.app.state, "detector", None)
    if detector is None:
        raise NotReady("the model is still loading")
    return detector


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


DetectorDep = Annotated[Detector, Depends(get_detector)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
