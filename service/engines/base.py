"""What the batcher needs of an engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.agreement import Detections
from service.manifest import GraphPrecision

# What an engine is asked to compute in (DETECTOR_PRECISION): f32 and bf16 run the package's float graph
# (bf16 as OpenVINO's inference precision), int8 runs its int8 (Q/DQ) graph.
Precision = Literal["f32", "bf16", "int8"]
GRAPH_OF: dict[Precision, GraphPrecision] = {"f32": "fp32", "bf16": "fp32", "int8": "int8"}


@dataclass(frozen=True)
class BatchOutput:
    """The graph's outputs for a batch of B canvases, padded to K rows per image.

    num_detections (ndarray[B] int64), boxes (ndarray[B, K, 4] float32, canvas pixels x1, y1, x2, y2),
    scores (ndarray[B, K] float32, descending), labels (ndarray[B, K] int64).
    """

    num_detections: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.num_detections.shape[0])

    def per_image(self) -> list[Detections]:
        """Each image's detections, without the padding rows."""
        return [Detections(self.boxes[i, :n], self.scores[i, :n], self.labels[i, :n]) for i, n in enumerate(self.num_detections.tolist())]


class Engine(Protocol):
    """Runs the graph. Called from one inference thread at a time."""

    max_batch: int

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        """images (ndarray[B, H, W, 3] uint8, RGB canvases)."""
        ...

    def describe(self) -> EngineInfo:
        """What runs the graph, for /v1/models, the metrics and the v2 model configuration."""
        ...


class EngineInfo(BaseModel):
    """What runs the graph: a typed description that code may branch on (the device, the precision)."""

    model_config = ConfigDict(frozen=True)

    engine: Literal["onnxruntime", "tensorrt", "openvino"]
    provider: str = Field(description="the ONNX Runtime execution provider that runs the graph, TensorRT, or OpenVINO's device (CPU)")
    device: Literal["cpu", "gpu"]
    precision: str = Field(description="fp32, fp16, bf16 or int8: the precision the graph runs in")
    version: str = Field(description="the runtime's version")
    details: dict[str, Any] = Field(default_factory=dict, description="the runtime's own settings: providers, threads, profile")
