"""What the batcher needs of an engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


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


class Engine(Protocol):
    """Runs the graph. Called from one inference thread at a time."""

    max_batch: int

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        """images (ndarray[B, H, W, 3] uint8, RGB canvases)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs the graph (engine, providers, threads), for /v1/models and the metrics."""
        ...


@dataclass
class EngineInfo:
    name: str
    provider: str
    details: dict[str, Any] = field(default_factory=dict)
