"""POST /detect: one image in, its detections out."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, Field

from service.api.body import IMAGE_MEDIA_TYPES, read_image
from service.api.deps import DetectorDep
from service.api.disconnect import cancel_on_disconnect
from service.api.problems import problem_responses
from service.detector import ImageDetections
from service.errors import InvalidParameter
from service.manifest import ModelManifest
from service.options import MaxDetections, Threshold, detect_params
from service.render import MEDIA_TYPES as RENDERED
from service.schemas import Box, Detection, DetectResponse, ImageSize, ModelRef, Timing

router = APIRouter()


class DetectQuery(BaseModel):
    """The query parameters of /detect; no other name is accepted."""

    model: str | None = Field(None, description="the model to ask (default: the server's default model)")
    version: str | None = Field(None, description="the model's version to ask (default: its highest loaded one)")
    score_threshold: Threshold | None = None
    iou_threshold: Threshold | None = None
    max_detections: MaxDetections | None = None
    classes: str | None = Field(None, description="comma-separated class names to keep (at least one)")
    timeout_ms: int | None = Field(None, ge=1, description="a deadline shorter than the server's")
    render: bool | None = Field(
        None, description="true: answer the annotated image (PNG, or JPEG if Accept prefers it); false: JSON whatever Accept says"
    )


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


JSON = "application/json"
# Kept under the 8 KiB that common proxies (nginx's default buffer) and clients allow for a response's headers.
DETECTIONS_HEADER_BYTES = 6144
RENDERED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the detections as JSON; or, with `Accept: image/png` or `image/jpeg` (or `render=true`), the uploaded"
        " image upright at its own size with each box, class name and score drawn, and the detections in headers",
        "content": {media_type: _BINARY for media_type in RENDERED},
        "headers": {
            "X-Detections": {
                "description": f"annotated images only: the JSON answer, compact and ASCII; above {DETECTIONS_HEADER_BYTES} bytes its"
                " `detections` keep only the highest-scoring ones that fit (compare with X-Detections-Count)",
                "schema": {"type": "string"},
            },
            "X-Detections-Count": {"description": "annotated images only: the number of detections", "schema": {"type": "integer"}},
        },
    }
}


@router.post(
    "/detect",
    response_model=DetectResponse,
    responses={**RENDERED_RESPONSES, **problem_responses(400, 404, 408, 413, 415, 422, 500, 503, 504)},
    dependencies=[Depends(strict_query)],
    openapi_extra=REQUEST_BODY,
)
async def detect(
    request: Request,
    response: Response,
    detector: DetectorDep,
    query: Annotated[DetectQuery, Query()],
    x_request_timeout: Annotated[float | None, Header(gt=0, allow_inf_nan=False, description="the same deadline, in seconds")] = None,
) -> DetectResponse | Response:
    """Detects objects in one image, sent as the raw body (image/jpeg, image/png, ...) or as multipart field `image`.

    The answer is JSON unless `Accept` prefers `image/png` or `image/jpeg` to `application/json` (or `render=true`):
    then it is the image with the detections drawn, and the JSON in the `X-Detections` header. Errors are problem JSON
    whatever `Accept` says.
    """
    media_type = negotiate(request.headers.get("accept"), query.render)
    params = detect_params(
        detector.manifest,
        **query.model_dump(exclude={"model", "version", "timeout_ms", "render"}),
        timeout_s=query.timeout_ms / 1000 if query.timeout_ms is not None else x_request_timeout,
        arrived=request.state.arrived,
    )
    data = await read_image(request, detector.settings.max_body_bytes, detector.settings.body_timeout_s)
    detections = await cancel_on_disconnect(request, detector.detect(data, params))
    request.state.batch_size = detections.batch_size
    answer = detect_response(detector.manifest, detections)
    if media_type == JSON:
        response.headers["Vary"] = "Accept"
        return answer
    image = await cancel_on_disconnect(request, detector.render(data, answer.detections, media_type))
    return Response(image, media_type=media_type, headers={"Vary": "Accept", **detections_headers(answer)})


def negotiate(accept: str | None, render: bool | None) -> str:
    """The answer's media type: JSON, or an annotated image (one of RENDERED).

    Each candidate takes the q of the most specific range of ``accept`` that matches it (RFC 9110
    12.5.1); the highest wins, JSON on a tie, so ``*/*`` and no Accept at all keep JSON. An Accept that
    matches none is ignored rather than answered 406: such clients got JSON before images existed.
    ``render`` true picks among the images (PNG unless Accept prefers JPEG); false forces JSON.
    """
    if render is False:
        return JSON
    ranges = _accept_ranges(accept or "")
    candidates = list(RENDERED) if render else [JSON, *RENDERED]
    best = max(candidates, key=lambda media_type: (_quality(ranges, media_type), -candidates.index(media_type)))
    return best if _quality(ranges, best) > 0 or render else JSON


def _accept_ranges(accept: str) -> dict[str, float]:
    """Media range -> q (0..1); a range with an unreadable q is left out."""
    ranges: dict[str, float] = {}
    for item in accept.split(","):
        media_range, *parameters = (part.strip().lower() for part in item.split(";"))
        quality: float | None = 1.0
        for name, _, value in (parameter.partition("=") for parameter in parameters):
            if name.strip() == "q":
                quality = _q_value(value.strip())
        if media_range and quality is not None:
            ranges[media_range] = max(quality, ranges.get(media_range, 0.0))
    return ranges


def _q_value(text: str) -> float | None:
    try:
        quality = float(text)
    except ValueError:
        return None
    return min(max(quality, 0.0), 1.0) if math.isfinite(quality) else None


def _quality(ranges: dict[str, float], media_type: str) -> float:
    for media_range in (media_type, media_type.split("/")[0] + "/*", "*/*"):
        if media_range in ranges:
            return ranges[media_range]
    return 0.0


def detections_headers(answer: DetectResponse) -> dict[str, str]:
    """X-Detections (the JSON answer, compact, within DETECTIONS_HEADER_BYTES) and X-Detections-Count."""
    body = answer.model_dump(mode="json")
    rows = body["detections"]
    # The rows, in score order, while they fit; ASCII (json's default) keeps any class name a legal header value.
    room = DETECTIONS_HEADER_BYTES - len(_compact({**body, "detections": []}))
    kept = 0
    for row in rows:
        room -= len(_compact(row)) + (1 if kept else 0)  # the comma before it
        if room < 0:
            break
        kept += 1
    return {"X-Detections": _compact({**body, "detections": rows[:kept]}), "X-Detections-Count": str(len(rows))}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


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
