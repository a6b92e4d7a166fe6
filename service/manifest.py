"""The model package's manifest (``model.json``), as the service reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
