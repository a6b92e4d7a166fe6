"""The HTTP API's response bodies (DESIGN.md)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Box(BaseModel):
    """Pixels of the uploaded image, after its EXIF orientation is applied."""

    x1: float
    y1: float
    x2: float
    y2: float


class Detection(BaseModel):
    box: Box
    score: float
    label: int = Field(description="label id, an index into the model's categories")
    class_name: str


class ModelRef(BaseModel):
    name: str
    version: str


class ImageSize(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    queue: float
    inference: float
    total: float


class DetectResponse(BaseModel):
    model: ModelRef
    image: ImageSize
    detections: list[Detection] = Field(description="sorted by descending score")
    timing_ms: Timing
    batch_size: int = Field(exclude=True, description="for the request log, not the response")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
