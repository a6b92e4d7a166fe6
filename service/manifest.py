"""The model package's manifest (``model.json``), as the service reads it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_FILE = "model.json"


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[int | str]


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    arch: str
    categories: list[str] = Field(min_length=2)
    canvas: tuple[int, int]
    max_batch: int = Field(ge=1)
    max_detections: int = Field(ge=1)
    score_threshold: float = Field(ge=0, le=1)
    iou_threshold: float = Field(ge=0, le=1)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnx_file: str = "model.onnx"
    onnx_sha256: str

    @model_validator(mode="after")
    def _shapes_agree(self) -> ModelManifest:
        """The graph's declared shapes must say what the canvas and K say: a hand-edited manifest is caught here."""
        images = self.tensor("images", self.inputs).shape
        if list(images[1:]) != [*self.canvas, 3]:
            raise ValueError(f"input 'images' has shape {images}, which does not match canvas {list(self.canvas)}")
        boxes = self.tensor("boxes", self.outputs).shape
        if list(boxes[1:]) != [self.max_detections, 4]:
            raise ValueError(f"output 'boxes' has shape {boxes}, which does not match max_detections {self.max_detections}")
        return self

    @staticmethod
    def tensor(name: str, specs: list[TensorSpec]) -> TensorSpec:
        for spec in specs:
            if spec.name == name:
                return spec
        raise ValueError(f"no tensor named {name!r} (the graph's tensors are {[s.name for s in specs]})")

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class PackageError(RuntimeError):
    """The model package is missing or unusable; the message names the file."""


def read_manifest(package: Path) -> ModelManifest:
    path = Path(package) / MANIFEST_FILE
    if not path.is_file():
        raise PackageError(f"{path}: no model manifest (is DETECTOR_MODEL_DIR a model package directory?)")
    try:
        return ModelManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as error:
        raise PackageError(f"{path}: not a valid model manifest: {error}") from error


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_graph_file(package: Path, manifest: ModelManifest) -> Path:
    """The package's ONNX file, if it is the very file the manifest was written for."""
    path = Path(package) / manifest.onnx_file
    if not path.is_file():
        raise PackageError(f"{path}: the manifest names this graph file, but it is missing")
    if sha256_of(path) != manifest.onnx_sha256:
        raise PackageError(f"{path}: its SHA-256 differs from the manifest's onnx_sha256 (a damaged copy, or a graph from another export)")
    return path
