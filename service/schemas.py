"""The HTTP API's bodies (DESIGN.md), as the routes answer them and the OpenAPI schema documents them."""

from __future__ import annotations

from typing import Any

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


# The KServe v2 / Open Inference Protocol's bodies (service/kserve.py reads and writes them; these document them).


class ProtocolErrorBody(BaseModel):
    """The protocol's error body."""

    error: str


class InferInputTensor(BaseModel):
    name: str = Field(description="'images', the model's one input")
    datatype: str = Field(description="BYTES")
    shape: list[int] = Field(description="[N] or [N, 1]: one encoded image per element")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when the images follow the JSON header as binary data")
    data: list[Any] | None = Field(None, description="the images as base64 strings, when not sent as binary data")


class InferRequestedOutput(BaseModel):
    name: str = Field(description="num_detections, boxes, scores or labels")
    parameters: dict[str, Any] | None = Field(None, description="binary_data: whether this output comes as binary data")


class InferRequestBody(BaseModel):
    """The JSON header of an infer request (with the binary tensor extension, binary data follows it)."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="score_threshold, iou_threshold, max_detections, classes, timeout, binary_data_output"
    )
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = Field(None, description="the values, row-major, when not sent as binary data")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when the values follow the JSON header")


class InferResponseBody(BaseModel):
    """The JSON header of an infer response (binary outputs follow it, as Inference-Header-Content-Length tells)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place.

    For OpenAPI entries that FastAPI does not collect into its components (a
    body a route reads by hand), where a ``$ref`` would point at nothing.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
