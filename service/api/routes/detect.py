"""POST /detect: one image in, its detections out."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from service.api.body import IMAGE_MEDIA_TYPES, read_image
from service.api.deps import DetectorDep
from service.api.disconnect import cancel_on_disconnect
from service.api.problems import problem_responses
from service.detector import ImageDetections
from service.errors import InvalidParameter
from service.manifest import ModelManifest
from service.options import MaxDetections, Threshold, detect_params
from service.schemas import Box, Detection, DetectResponse, ImageSize, ModelRef, Timing

router = APIRouter()


class DetectQuery(BaseModel):
    """The query parameters of /detect; no other name is accepted."""

    score_threshold: Threshold | None = None
    iou_threshold: Threshold | None = None
    max_detections: MaxDetections | None = None
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
    params = detect_params(
        detector.manifest,
        **query.model_dump(exclude={"timeout_ms"}),
        timeout_s=query.timeout_ms / 1000 if query.timeout_ms is not None else x_request_timeout,
        arrived=request.state.arrived,
    )
    data = await read_image(request, detector.settings.max_body_bytes, detector.settings.body_timeout_s)
    detections = await cancel_on_disconnect(request, detector.detect(data, params))
    request.state.batch_size = detections.batch_size
    return detect_response(detector.manifest, detections)


def detect_response(manifest: ModelManifest, found: ImageDetections) -> DetectResponse:
    """/detect's encoding of one image's detections: a row per detection, with its class name."""
    rows = zip(found.boxes.tolist(), found.scores.tolist(), found.labels.tolist(), strict=True)
    return DetectResponse(
        model=ModelRef(name=manifest.name, version=manifest.version),
        image=ImageSize(width=found.width, height=found.height),
        detections=[
            Detection(box=Box(x1=x1, y1=y1, x2=x2, y2=y2), score=score, label=label, class_name=manifest.categories[label])
            for (x1, y1, x2, y2), score, label in rows
        ],
        timing_ms=Timing(
            queue=round(found.queue_s * 1000, 3), inference=round(found.inference_s * 1000, 3), total=round(found.total_s * 1000, 3)
        ),
    )
