"""A TensorRT engine's manifest (``model.<gpu>.<precision>.json`` beside its engine): written by ``model_export build-engine``,
read by the service's TensorRT engine. One class for both sides."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.manifest import PackageError

Precision = Literal["fp32", "fp16", "int8"]
# Without a precision asked for, the most reduced one built is taken: it is why it was built.
PRECISION_PREFERENCE: tuple[Precision, ...] = ("int8", "fp16", "fp32")


def gpu_slug(gpu: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``: a GPU's name in file names."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")


class BatchProfile(BaseModel):
    """The optimization profile over the batch: the engine runs any batch from ``min`` to ``max``, tuned for ``opt``."""

    model_config = ConfigDict(frozen=True)

    min: int = Field(ge=1)
    opt: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> BatchProfile:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"the batch profile should satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")
        return self


class EngineManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    engine_file: str
    tensorrt: str  # the version that built it: an engine loads only in the same one
    gpu: str  # the GPU's name as CUDA reports it: an engine runs only on the GPU kind it was built for
    precision: Precision
    profile: BatchProfile
    onnx_sha256: str  # the package's model.onnx it comes from
    graph_file: str  # the graph TensorRT parsed: model.onnx, or a reduced-precision graph made from it
    graph_sha256: str
    workspace_mb: int = Field(ge=1)

    @staticmethod
    def file_stem(gpu: str, precision: str) -> str:
        """``model.<gpu slug>.<precision>``: the engine adds ``.engine``, its manifest ``.json``."""
        return f"model.{gpu_slug(gpu)}.{precision}"

    def write(self, package: Path) -> Path:
        path = Path(package) / Path(self.engine_file).with_suffix(".json").name
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> EngineManifest:
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValidationError) as error:
            raise PackageError(f"{path}: not a valid TensorRT engine manifest: {error}") from error


def find_engine(package: Path, gpu: str, onnx_sha256: str, precision: Precision | None = None) -> tuple[Path, EngineManifest]:
    """The package's engine built for this GPU from this model.onnx, and its manifest.

    ``precision`` None takes the most reduced precision built (int8, then fp16, then fp32).
    """
    package = Path(package)
    found = [EngineManifest.read(path) for path in sorted(package.glob("model.*.json")) if path.name.count(".") == 3]
    here = [info for info in found if info.gpu == gpu and (package / info.engine_file).is_file()]
    current = [info for info in here if info.onnx_sha256 == onnx_sha256]
    wanted = [precision] if precision else list(PRECISION_PREFERENCE)
    for kind in wanted:
        for info in current:
            if info.precision == kind:
                return package / info.engine_file, info
    built = ", ".join(f"{info.gpu} {info.precision}" for info in found) or "none"
    rebuild = f"python -m model_export build-engine --package {package}" + (f" --{precision}" if precision in ("fp16", "int8") else "")
    if here and not current:
        raise PackageError(f"{package}: the TensorRT engines for {gpu} were built from another model.onnx; rebuild: {rebuild}")
    asked = f"{precision} " if precision else ""
    raise PackageError(f"{package}: no {asked}TensorRT engine built for {gpu} (engines here: {built}); run: {rebuild}")
