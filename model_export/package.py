"""The model package: ``model.onnx`` + ``model.json`` (DESIGN.md), and running it in ONNX Runtime."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export.evaluate import Detections

ONNX_FILE = "model.onnx"
MANIFEST_FILE = "model.json"

INPUTS = [
    {"name": "images", "dtype": "uint8", "shape": ["batch", "H", "W", 3]},
    {"name": "score_threshold", "dtype": "float32", "shape": []},
    {"name": "iou_threshold", "dtype": "float32", "shape": []},
]
OUTPUTS = [
    {"name": "num_detections", "dtype": "int64", "shape": ["batch"]},
    {"name": "boxes", "dtype": "float32", "shape": ["batch", "K", 4]},
    {"name": "scores", "dtype": "float32", "shape": ["batch", "K"]},
    {"name": "labels", "dtype": "int64", "shape": ["batch", "K"]},
]


def io_spec(canvas: tuple[int, int], max_detections: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs with the canvas and K filled in."""
    sizes = {"H": canvas[0], "W": canvas[1], "K": max_detections}
    fill = lambda specs: [{**s, "shape": [sizes.get(d, d) if isinstance(d, str) else d for d in s["shape"]]} for s in specs]  # noqa: E731
    return fill(INPUTS), fill(OUTPUTS)


def read_manifest(package: Path) -> dict[str, Any]:
    path = Path(package) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; a model package holds {ONNX_FILE} and {MANIFEST_FILE}")
    return json.loads(path.read_text())


@dataclass
class OnnxPredictor:
    """Runs a package's graph in ONNX Runtime on canvases, at a fixed score and IoU threshold."""

    package: Path
    score_threshold: float = 0.05
    iou_threshold: float | None = None  # None: the manifest's
    threads: int = 0  # 0: ONNX Runtime's default

    def __post_init__(self) -> None:
        # The service's engine: one place builds the session and feeds the graph.
        from service.engines.onnxruntime import OnnxRuntimeEngine
        from service.manifest import ModelManifest

        self.manifest = read_manifest(self.package)
        self.engine = OnnxRuntimeEngine(self.package, ModelManifest.model_validate(self.manifest), ["cpu"], self.threads)
        if self.iou_threshold is None:
            self.iou_threshold = float(self.manifest["iou_threshold"])

    def run(self, canvases: np.ndarray, score_threshold: float, iou_threshold: float) -> list[Detections]:
        results: list[Detections] = []
        for start in range(0, len(canvases), self.engine.max_batch):
            out = self.engine.run(canvases[start : start + self.engine.max_batch], score_threshold, iou_threshold)
            results += [Detections(out.boxes[i, :n], out.scores[i, :n], out.labels[i, :n]) for i, n in enumerate(out.num_detections)]
        return results

    def __call__(self, canvases: np.ndarray) -> list[Detections]:
        iou = self.iou_threshold if self.iou_threshold is not None else float(self.manifest["iou_threshold"])
        return self.run(canvases, self.score_threshold, iou)
