"""The HTTP API's bodies (DESIGN.md), as the routes answer them and the OpenAPI schema documents them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.engines.base import EngineInfo
from service.engines.choice import EngineChoice
from service.manifest import ModelManifest


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


class Runtime(EngineInfo):
    """What runs the model (the engine's own description) and how its requests are batched."""

    max_batch_size: int
    max_batch_wait_ms: float
    max_queue: int
    request_timeout_s: float
    choice: EngineChoice = Field(description="how the engine and precision were chosen: by the settings, or tried on this machine (auto)")


class ModelDescription(BaseModel):
    """GET /v1/models/{name}: the package's manifest, the runtime serving it, and whether it takes traffic."""

    manifest: ModelManifest
    runtime: Runtime
    ready: bool


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


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
