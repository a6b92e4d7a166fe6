"""POST /detect: one image in, its detections out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request

from service.api.body import read_image
from service.api.deps import DetectorDep
from service.detector import DetectParams
from service.errors import InvalidParameter
from service.schemas import DetectResponse, Problem

router = APIRouter()

Threshold = Annotated[float | None, Query(ge=0, le=1, allow_inf_nan=False)]
ERRORS: dict[int | str, dict] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}} for status in (400, 413, 415, 422, 500, 503, 504)
}


@router.post("/detect", response_model=DetectResponse, responses=ERRORS)
async def detect(
    request: Request,
    detector: DetectorDep,
    score_threshold: Threshold = None,
    iou_threshold: Threshold = None,
    max_detections: Annotated[int | None, Query(ge=1)] = None,
    classes: Annotated[str | None, Query(description="comma-separated class names to keep")] = None,
    timeout_ms: Annotated[int | None, Query(ge=1, description="a deadline shorter than the server's")] = None,
    x_request_timeout: Annotated[float | None, Header(gt=0, allow_inf_nan=False, description="the same deadline, in seconds")] = None,
) -> DetectResponse:
    """Detects objects in one image, sent as the raw body (image/jpeg, image/png, ...) or as multipart field `image`."""
    if max_detections is not None and max_detections > detector.manifest.max_detections:
        raise InvalidParameter(f"max_detections should be at most {detector.manifest.max_detections}, got {max_detections}")
    params = DetectParams(
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        classes=detector.resolve_classes([c.strip() for c in classes.split(",") if c.strip()]) if classes is not None else None,
        timeout_s=timeout_ms / 1000 if timeout_ms is not None else x_request_timeout,
    )
    data = await read_image(request, detector.settings.max_body_bytes, detector.settings.body_timeout_s)
    response = await detector.detect(data, params)
    request.state.batch_size = response.batch_size
    return response
