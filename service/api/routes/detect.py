"""POST /detect: one image in, its detections out."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from service.api.body import IMAGE_MEDIA_TYPES, read_image
from service.api.deps import DetectorDep
from service.api.disconnect import cancel_on_disconnect
from service.api.problems import problem_responses
from service.detector import Detector, DetectParams
from service.errors import InvalidParameter
from service.schemas import DetectResponse

router = APIRouter()


class DetectQuery(BaseModel):
    """The query parameters of /detect; no other name is accepted."""

    score_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="default: the model's")
    iou_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="default: the model's")
    max_detections: int | None = Field(None, ge=1, description="at most the model's max_detections (its default)")
    classes: str | None = Field(None, description="comma-separated class names to keep (at least one)")
    timeout_ms: int | None = Field(None, ge=1, description="a deadline shorter than the server's")


async def strict_query(request: Request) -> None:
    """Refuses names /detect does not take and names given twice.

    A typo (score_treshold) would otherwise be ignored, and the request served
    with the default it meant to change; of a name given twice, which value
    counts would be a guess.
    """
    names = Counter(name for name, _ in request.query_params.multi_items())
    unknown = sorted(names.keys() - DetectQuery.model_fields.keys())
    if unknown:
        raise InvalidParameter(
            f"unknown query parameter(s) {', '.join(map(repr, unknown))}; /detect takes {', '.join(DetectQuery.model_fields)}"
        )
    repeated = sorted(name for name, count in names.items() if count > 1)
    if repeated:
        raise InvalidParameter(f"query parameter(s) {', '.join(map(repr, repeated))} given more than once; give each at most once")


# The body is read by hand (raw or multipart, within the size limit), so FastAPI cannot document it: this does.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image, as the raw body or as multipart field `image`; its format is read from its bytes",
        "content": {
            **{media_type: _BINARY for media_type in sorted(IMAGE_MEDIA_TYPES)},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}, "required": ["image"]}
            },
        },
    }
}


@router.post(
    "/detect",
    response_model=DetectResponse,
    responses=problem_responses(400, 408, 413, 415, 422, 500, 503, 504),
    dependencies=[Depends(strict_query)],
    openapi_extra=REQUEST_BODY,
)
async def detect(
    request: Request,
    detector: DetectorDep,
    query: Annotated[DetectQuery, Query()],
    x_request_timeout: Annotated[float | None, Header(gt=0, allow_inf_nan=False, description="the same deadline, in seconds")] = None,
) -> DetectResponse:
    """Detects objects in one image, sent as the raw body (image/jpeg, image/png, ...) or as multipart field `image`."""
    params = replace(detect_params(query, x_request_timeout, detector), arrived=request.state.arrived)
    data = await read_image(request, detector.settings.max_body_bytes, detector.settings.body_timeout_s)
    response = await cancel_on_disconnect(request, detector.detect(data, params))
    request.state.batch_size = response.batch_size
    return response


def detect_params(query: DetectQuery, timeout_s: float | None, detector: Detector) -> DetectParams:
    """The query checked against the model: max_detections within its K, classes among its categories."""
    if query.max_detections is not None and query.max_detections > detector.manifest.max_detections:
        raise InvalidParameter(f"max_detections should be at most {detector.manifest.max_detections}, got {query.max_detections}")
    return DetectParams(
        score_threshold=query.score_threshold,
        iou_threshold=query.iou_threshold,
        max_detections=query.max_detections,
        classes=detector.resolve_classes(class_names(query.classes)) if query.classes is not None else None,
        timeout_s=query.timeout_ms / 1000 if query.timeout_ms is not None else timeout_s,
    )


def class_names(classes: str) -> list[str]:
    """The names of a comma-separated list; an empty list is refused, since keeping no class at all is never what was meant."""
    names = [name.strip() for name in classes.split(",") if name.strip()]
    if not names:
        raise InvalidParameter(f"classes={classes!r} names no class; give comma-separated class names, or leave it out to keep every class")
    return names
