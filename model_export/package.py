"""Running a model package (``model.onnx`` + ``model.json``, DESIGN.md) in ONNX Runtime, as the evaluation and the parity check do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.detections import Detections
from service.manifest import read_manifest


@dataclass
class OnnxPredictor:
    """Runs a package's graph in ONNX Runtime on canvases, at a fixed score and IoU threshold."""

    package: Path
    score_threshold: float = 0.05
    iou_threshold: float | None = None  # None: the manifest's
    threads: int = 0  # 0: ONNX Runtime's default

    def __post_init__(self) -> None:
        # The service's engine: one place builds the session and feeds the graph (imported here: it loads onnxruntime).
        from service.engines.onnxruntime import OnnxRuntimeEngine

        self.manifest = read_manifest(self.package)
        self.engine = OnnxRuntimeEngine(self.package, self.manifest, ["cpu"], self.threads)

    def run(self, canvases: np.ndarray, score_threshold: float, iou_threshold: float) -> list[Detections]:
        results: list[Detections] = []
        for start in range(0, len(canvases), self.engine.max_batch):
            results += self.engine.run(canvases[start : start + self.engine.max_batch], score_threshold, iou_threshold).per_image()
        return results

    def __call__(self, canvases: np.ndarray) -> list[Detections]:
        iou = self.manifest.iou_threshold if self.iou_threshold is None else self.iou_threshold
        return self.run(canvases, self.score_threshold, iou)
